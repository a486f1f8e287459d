"""Certificates made in the test, with cryptography: a root, an intermediate, leaves."""

from __future__ import annotations

import datetime as dt
import ipaddress
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
_KEY = ec.generate_private_key(ec.SECP256R1())  # one key for all: generation is the slow part


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "Test Root", issuer: tuple[x509.Certificate, object] | None = None,
            key: ec.EllipticCurvePrivateKey | None = None,
            not_before: dt.datetime = NOW - 3650 * DAY) -> tuple[x509.Certificate, object]:
    """A CA certificate (a root, or an intermediate when ``issuer`` is given) and its key."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(NOW + 3650 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, key_encipherment=False,
            content_commitment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256()), key


def make_leaf(
    names: list[str],
    issuer: tuple[x509.Certificate, object] | None,
    *,
    not_before: dt.datetime = NOW - 30 * DAY,
    not_after: dt.datetime = NOW + 300 * DAY,
    key: object | None = None,
    ips: list[str] | None = None,
    san: bool = True,
    san_critical: bool = False,
    digest: hashes.HashAlgorithm | None = None,
    eku: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.SERVER_AUTH,),
    cn: str | None = None,
) -> x509.Certificate:
    """A server certificate for ``names``; self-signed when ``issuer`` is None.

    ``san=False``: no subjectAltName (the CN alone names the host); ``digest``: what the
    issuer signs with (default SHA-256); ``eku``: the extended key usages; ``cn``: the
    subject CN (default: the first name).
    """
    key = key or _KEY
    subject = _name(cn or (names[0] if names else "no-names"))
    issuer_name = issuer[0].subject if issuer else subject
    signing_key = issuer[1] if issuer else key
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips or []]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signing_key.public_key()), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=san_critical)
    cert = builder.sign(signing_key, hashes.SHA256())
    if digest is None:
        return cert
    return _resign(cert, signing_key, digest.name)


def _resign(cert: x509.Certificate, key: object, digest: str) -> x509.Certificate:
    """``cert`` signed again with ``digest``: cryptography refuses to sign with SHA-1, which
    is exactly what a test of the weak-digest check needs, so OpenSSL signs (via pyOpenSSL)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy = crypto.X509.from_cryptography(cert)
        legacy.sign(crypto.PKey.from_cryptography_key(key), digest)
    return legacy.to_cryptography()


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)
