"""Certificate analysis: trust, dates, RFC 6125 name matching, and the details worth showing.

Verification uses cryptography's path validation (``x509.verification``) rather than the TLS
library, so one handshake with CERT_NONE gives both the details and the verdict. The trust store
is the system bundle plus ``--ca-file``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import ssl
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from connectwiz.errors import UserError

_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s.+?\s-----END CERTIFICATE-----", re.DOTALL
)


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What a host's certificate says and how it fares against the strict checks."""

    subject: str
    issuer: str
    names: tuple[str, ...]  # DNS names (and IP addresses) the certificate is valid for
    not_before: datetime
    not_after: datetime
    trusted: bool  # chains to the system store or --ca-file (ignoring name and dates)
    self_signed: bool
    hostname_match: bool
    expired: bool
    not_yet_valid: bool
    key_type: str  # "RSA", "EC", "Ed25519", ...
    key_size: int | None  # bits; None where it does not apply
    signature_algorithm: str
    # Why the strict path validation failed although every check above passed (rare: EKU, CA flags).
    rejection: str | None = field(default=None)

    @property
    def problems(self) -> list[str]:
        """Human-readable strict-check failures, most fundamental first; empty when strict."""
        out: list[str] = []
        if self.self_signed and not self.trusted:
            out.append(f"certificate is self-signed ({self.subject})")
        elif not self.trusted:
            out.append(f"certificate issued by an unknown CA ({self.issuer})")
        if self.expired:
            out.append(f"certificate expired on {_day(self.not_after)}")
        if self.not_yet_valid:
            out.append(f"certificate is not valid before {_day(self.not_before)}")
        if not self.hostname_match:
            shown = ", ".join(self.names) if self.names else "no names"
            out.append(f"name mismatch: certificate is for {shown}")
        if not out and self.rejection:
            out.append(f"certificate rejected: {self.rejection}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "names": list(self.names),
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "trusted": self.trusted,
            "self_signed": self.self_signed,
            "hostname_match": self.hostname_match,
            "expired": self.expired,
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


# --- RFC 6125 name matching ---------------------------------------------------------------


def match_hostname(names: list[str] | tuple[str, ...], host: str) -> bool:
    """True when ``host`` matches one of ``names`` (DNS names or IP address strings).

    RFC 6125 §6.4.3, the strict reading: a wildcard is only the whole left-most label
    (``*.example.com``; partial wildcards like ``f*.example.com`` are not supported), it
    stands for exactly one label, and it needs at least two labels after it (no ``*.com``).
    IP addresses match IP entries only, never DNS names or wildcards.
    """
    host_ip = _ip(host)
    if host_ip is not None:
        return any(_ip(name) == host_ip for name in names)
    wanted = host.rstrip(".").lower()
    return any(_match_one(name.rstrip(".").lower(), wanted) for name in names)


def _match_one(pattern: str, host: str) -> bool:
    if _ip(pattern) is not None or not pattern:
        return False
    if "*" not in pattern:
        return pattern == host
    first, sep, rest = pattern.partition(".")
    if first != "*" or not sep or "*" in rest or rest.count(".") < 1:
        return False
    head, dot, tail = host.partition(".")
    return bool(head) and bool(dot) and tail == rest


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


# --- trust store --------------------------------------------------------------------------


def system_ca_file() -> Path | None:
    """The system CA bundle as OpenSSL would find it (certifi is not a dependency)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Every parsable certificate in a PEM bundle; one odd entry does not spoil the rest."""
    certs = []
    with warnings.catch_warnings():  # some system roots have odd serials; they still verify
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for block in _PEM_BLOCK.findall(data):
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                continue
    return certs


@dataclass(frozen=True)
class TrustStore:
    """Trusted CA certificates: a cryptography Store for verification, plus the certificates
    themselves so a failed verification can be explained (which issuer is missing)."""

    certificates: tuple[x509.Certificate, ...]

    @functools.cached_property
    def store(self) -> Store | None:
        return Store(list(self.certificates)) if self.certificates else None

    @functools.cached_property
    def by_subject(self) -> dict[x509.Name, list[x509.Certificate]]:
        index: dict[x509.Name, list[x509.Certificate]] = {}
        for cert in self.certificates:
            index.setdefault(cert.subject, []).append(cert)
        return index


@functools.lru_cache(maxsize=8)
def trust_store(ca_file: Path | None) -> TrustStore:
    """System roots plus the certificates of ``ca_file``, loaded once per process and file."""
    certs: list[x509.Certificate] = []
    system = system_ca_file()
    if system is not None:
        certs.extend(load_pem_certificates(system.read_bytes()))
    if ca_file is not None:
        try:
            extra = load_pem_certificates(ca_file.read_bytes())
        except OSError as exc:
            raise UserError(f"--ca-file {ca_file}: {exc.strerror or exc}") from None
        if not extra:
            raise UserError(f"--ca-file {ca_file}: no PEM certificate in it")
        certs.extend(extra)
    return TrustStore(tuple(certs))


# --- analysis -----------------------------------------------------------------------------


def analyse_certificate(
    leaf: x509.Certificate,
    host: str,
    trust: TrustStore,
    intermediates: list[x509.Certificate] | None = None,
    now: datetime | None = None,
) -> CertificateInfo:
    """Check ``leaf`` (with any ``intermediates`` the server sent) for ``host`` at ``now``."""
    now = now or datetime.now(UTC)
    intermediates = intermediates or []
    names = certificate_names(leaf)
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    hostname_match = match_hostname(names, host)
    strict_error = _verify(trust.store, leaf, intermediates, host, now)
    trusted = strict_error is None or _chains_to_anchor(leaf, intermediates, trust)
    key_type, key_size = _key(leaf)
    return CertificateInfo(
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        names=tuple(names),
        not_before=not_before,
        not_after=not_after,
        trusted=trusted,
        self_signed=_self_signed(leaf),
        hostname_match=hostname_match,
        expired=now > not_after,
        not_yet_valid=now < not_before,
        key_type=key_type,
        key_size=key_size,
        signature_algorithm=_signature_name(leaf),
        rejection=strict_error,
    )


def _verify(
    store: Store | None,
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    host: str,
    when: datetime,
) -> str | None:
    """None when the chain verifies for ``host`` at ``when``, else the verifier's message."""
    if store is None:
        return "no trusted CA certificates available"
    ip = _ip(host)
    subject: x509.verification.Subject = (
        x509.IPAddress(ip) if ip is not None else x509.DNSName(host)
    )
    try:
        verifier = PolicyBuilder().store(store).time(when).build_server_verifier(subject)
        verifier.verify(leaf, intermediates)
    except (VerificationError, ValueError) as exc:
        return str(exc)
    return None


def _chains_to_anchor(
    leaf: x509.Certificate, intermediates: list[x509.Certificate], trust: TrustStore
) -> bool:
    """Signatures alone lead from ``leaf`` to a trusted certificate (dates and names ignored).

    Only explains a failed strict verification ("unknown CA" or not); the verdict itself
    always comes from the full path validation in ``_verify``.
    """
    current = leaf
    for _ in range(len(intermediates) + 1):
        for anchor in trust.by_subject.get(current.issuer, []):
            if _issued_by(current, anchor):
                return True
        parent = next((c for c in intermediates
                       if c.subject == current.issuer and _issued_by(current, c)), None)
        if parent is None or parent == current:
            return False
        current = parent
    return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def certificate_names(cert: x509.Certificate) -> list[str]:
    """subjectAltName DNS names and IPs; the CN only when there is no SAN (RFC 6125 §6.4.4)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return [str(cn.value) for cn in cns]
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and _issued_by(cert, cert)


def _key(cert: x509.Certificate) -> tuple[str, int | None]:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return type(key).__name__, None


def _signature_name(cert: x509.Certificate) -> str:
    oid = cert.signature_algorithm_oid
    return getattr(oid, "_name", None) or oid.dotted_string
