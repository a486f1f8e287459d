"""A throw-away certificate authority for the lab and the tests.

Certificates carry the extensions strict verifiers insist on (BasicConstraints, KeyUsage,
ExtendedKeyUsage serverAuth, SubjectAltName, Subject/Authority Key Identifier), so the
lab's "trusted" servers pass both ``ssl`` hostname checking and
``cryptography.x509.verification`` (browser rules; ``issue(san_critical=True)`` is made to fail
those while OpenSSL accepts it). Private keys are generated once per key type and
reused for every leaf: signing is cheap, key generation (RSA especially) is not.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connectwiz.atomic import write_atomic

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_DAY = dt.timedelta(days=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}: expected 'ec' or 'rsa'")


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
    san_critical: bool = False,
) -> x509.CertificateBuilder:
    return (
        builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                              critical=san_critical)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                content_commitment=False, data_encipherment=False, key_agreement=False,
                key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )


class LabCA:
    """A root CA kept in ``directory``; ``ca_file`` is its certificate (PEM) for trust stores."""

    def __init__(self, directory: Path | str, *, name: str = "connectwiz lab CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._keys: dict[str, PrivateKey] = {}
        self._key_files: dict[str, Path] = {}
        self._serial = 0
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
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    key_encipherment=False, content_commitment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
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
        san_critical: bool = False,
    ) -> tuple[Path, Path]:
        """A server certificate for ``names`` (SAN DNS names) signed by this CA.

        ``san_critical``: the subjectAltName marked critical next to a non-empty subject, as
        many private CAs issue it (RFC 5280 says SHOULD NOT; OpenSSL accepts it).

        Returns (certificate PEM path, private key PEM path); the certificate file holds
        the leaf only, as servers commonly send it (the root is what clients trust).
        """
        key, key_path = self.key_for(key_type, key_label)
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(names))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + 365 * _DAY)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        cert = _leaf_extensions(builder, names, key, san_critical).sign(self._key, hashes.SHA256())
        return self._write_cert(cert, names, key_path)

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
        self, cert: x509.Certificate, names: list[str], key_path: Path
    ) -> tuple[Path, Path]:
        self._serial += 1
        stem = names[0].replace("*", "wildcard")
        path = self.directory / f"{self._serial:04d}-{stem}.pem"
        write_atomic(path, cert.public_bytes(serialization.Encoding.PEM))
        return path, key_path


def spki_sha256(cert_path: Path) -> str:
    """Hex SHA-256 of a certificate's SubjectPublicKeyInfo (a TLSA 3 1 1 record's data)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()
