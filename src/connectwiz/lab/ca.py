"""A throw-away certificate authority for the lab and the tests.

Certificates carry the extensions strict verifiers insist on (BasicConstraints, KeyUsage,
ExtendedKeyUsage serverAuth, SubjectAltName, Subject/Authority Key Identifier), so the
lab's "trusted" servers pass both ``ssl`` hostname checking and
``cryptography.x509.verification``. ``LeafShape`` makes the odd leaves of the differential
corpus on purpose (``san_critical`` fails those browser rules while OpenSSL accepts it).
Private keys are generated once per key type and reused for every leaf: signing is cheap,
key generation (RSA especially) is not.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto

from connectwiz.atomic import write_atomic

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_DAY = dt.timedelta(days=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


_RSA_SIZES = {"rsa": 2048, "rsa1024": 1024}  # rsa1024: a weak key, for the corpus only


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type in _RSA_SIZES:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_SIZES[key_type])
    raise ValueError(f"unknown key type {key_type!r}: expected 'ec', 'rsa' or 'rsa1024'")


def _resign_sha1(cert: x509.Certificate, key: PrivateKey) -> x509.Certificate:
    """``cert`` signed again with SHA-1: cryptography refuses to, OpenSSL's X509_sign does not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy = crypto.X509.from_cryptography(cert)
        legacy.sign(crypto.PKey.from_cryptography_key(key), "sha1")
        return legacy.to_cryptography()


@dataclass(frozen=True, slots=True)
class LeafShape:
    """How a leaf departs from the well-formed default (the differential corpus's shapes).

    ``intermediate``: None signs with the root; "sent" signs with the lab intermediate and
    puts it after the leaf in the certificate file (what a server sends); "missing" signs
    with the intermediate but leaves it out, so no client can build the chain.
    """

    san_critical: bool = False
    cn_only: bool = False  # no subjectAltName at all: the name is only in the subject CN
    ips: tuple[str, ...] = ()  # IP address entries in the subjectAltName
    sha1: bool = False  # signed with SHA-1
    client_auth_only: bool = False  # ExtendedKeyUsage clientAuth, no serverAuth
    intermediate: str | None = None  # None | "sent" | "missing"


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _subject(names: list[str]) -> x509.Name:
    # A CN holds at most 64 characters; the SAN carries the real names anyway.
    cn = next((n for n in names if len(n) <= 64), "connectwiz lab server")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _leaf_extensions(
    builder: x509.CertificateBuilder, names: list[str], key: PrivateKey,
    shape: LeafShape = LeafShape(),
) -> x509.CertificateBuilder:
    if not shape.cn_only:
        san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        san += [x509.IPAddress(ipaddress.ip_address(a)) for a in shape.ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(san),
                                        critical=shape.san_critical)
    usage = (ExtendedKeyUsageOID.CLIENT_AUTH if shape.client_auth_only
             else ExtendedKeyUsageOID.SERVER_AUTH)
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                content_commitment=False, data_encipherment=False, key_agreement=False,
                key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )


_CA_USAGE = x509.KeyUsage(
    digital_signature=True, key_cert_sign=True, crl_sign=True, key_encipherment=False,
    content_commitment=False, data_encipherment=False, key_agreement=False,
    encipher_only=False, decipher_only=False,
)


class LabCA:
    """A root CA kept in ``directory``; ``ca_file`` is its certificate (PEM) for trust stores."""

    def __init__(self, directory: Path | str, *, name: str = "connectwiz lab CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._keys: dict[str, PrivateKey] = {}
        self._key_files: dict[str, Path] = {}
        self._serial = 0
        self._inter: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
        now = _now()
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "connectwiz lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ])
        ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 3650 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = self.directory / "lab-ca.pem"
        write_atomic(self.ca_file, self.certificate.public_bytes(serialization.Encoding.PEM))

    def key_for(self, key_type: str = "ec", label: str = "leaf") -> tuple[PrivateKey, Path]:
        """The shared key of this type and label and its PEM file (created on first use).

        Every leaf uses the "leaf" key unless told otherwise; a certificate that must not
        share its key (a DANE host, whose TLSA record pins the key) takes another label.
        """
        slot = f"{label}-{key_type}"
        if slot not in self._keys:
            key = _new_key(key_type)
            path = self.directory / f"{slot}.key"
            write_atomic(path, _key_pem(key))
            self._keys[slot], self._key_files[slot] = key, path
        return self._keys[slot], self._key_files[slot]

    def issue(
        self,
        names: list[str],
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key_type: str = "ec",
        key_label: str = "leaf",
        shape: LeafShape = LeafShape(),
    ) -> tuple[Path, Path]:
        """A server certificate for ``names`` (SAN DNS names) signed by this CA.

        Returns (certificate PEM path, private key PEM path); the certificate file holds
        the leaf only, as servers commonly send it (the root is what clients trust), plus
        the intermediate when ``shape.intermediate == "sent"``.
        """
        key, key_path = self.key_for(key_type, key_label)
        issuer_cert, issuer_key = (self.certificate, self._key) if shape.intermediate is None \
            else self._intermediate()
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(names))
            .issuer_name(issuer_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + 365 * _DAY)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
        )
        cert = _leaf_extensions(builder, names, key, shape).sign(issuer_key, hashes.SHA256())
        if shape.sha1:
            cert = _resign_sha1(cert, issuer_key)
        chain = (issuer_cert,) if shape.intermediate == "sent" else ()
        return self._write_cert(cert, names or list(shape.ips), key_path, chain)

    def _intermediate(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The lab's one intermediate CA (signed by the root), created on first use."""
        if self._inter is None:
            key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "connectwiz lab"),
                x509.NameAttribute(NameOID.COMMON_NAME, "connectwiz lab intermediate CA"),
            ])
            now = _now()
            cert = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(self.certificate.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - _DAY)
                .not_valid_after(now + 1825 * _DAY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(_CA_USAGE, critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                    critical=False)
                .sign(self._key, hashes.SHA256())
            )
            self._inter = (cert, key)
        return self._inter

    def self_signed(self, names: list[str], *, key_type: str = "ec") -> tuple[Path, Path]:
        """A certificate for ``names`` signed by its own key (no CA): (cert path, key path)."""
        key, key_path = self.key_for(key_type)
        now = _now()
        subject = _subject(names)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 365 * _DAY)
        )
        cert = _leaf_extensions(builder, names, key).sign(key, hashes.SHA256())
        return self._write_cert(cert, names, key_path)

    def _write_cert(
        self, cert: x509.Certificate, names: list[str], key_path: Path,
        chain: tuple[x509.Certificate, ...] = (),
    ) -> tuple[Path, Path]:
        self._serial += 1
        stem = names[0].replace("*", "wildcard")
        path = self.directory / f"{self._serial:04d}-{stem}.pem"
        write_atomic(path, b"".join(c.public_bytes(serialization.Encoding.PEM)
                                    for c in (cert, *chain)))
        return path, key_path


def spki_sha256(cert_path: Path) -> str:
    """Hex SHA-256 of a certificate's SubjectPublicKeyInfo (a TLSA 3 1 1 record's data)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()
