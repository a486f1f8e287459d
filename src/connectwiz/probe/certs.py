"""The one certificate judgement: what ``validate`` reports and what the relay's delivery enforces.

The chain a server presented (captured from a handshake with CERT_NONE) is judged the way the
engines that enforce judge it, the relay's and Postfix's OpenSSL: OpenSSL's own chain
verification (pyOpenSSL ``X509StoreContext``, purpose "TLS server", like a TLS client), its
security-level checks on keys and signature digests (the level of Python's default client
context, which the relay's handshakes use), and the RFC 6125 name match OpenSSL does for a
client (subject CN only when the certificate has no DNS subjectAltName). The handshake itself
proves the server holds the leaf's key, so judging after it is as safe as inside it.
The trust store is the system bundle plus ``--ca-file``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import ssl
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from OpenSSL import crypto
from OpenSSL._util import lib as _openssl

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
    # OpenSSL's reasons for refusing the chain that the facts above do not already say
    # (purpose, CA flags, a weak key or digest, an intermediate's dates ...).
    rejections: tuple[str, ...] = field(default=())
    # Why no trusted chain was found, in words (which CA is unknown, whether it was sent).
    untrusted: str | None = None

    @property
    def problems(self) -> list[str]:
        """Human-readable strict-check failures, most fundamental first; empty when strict."""
        out: list[str] = []
        if self.self_signed and not self.trusted:
            out.append(f"certificate is self-signed ({self.subject})")
        elif not self.trusted:
            out.append(self.untrusted or f"certificate issued by an unknown CA ({self.issuer})")
        if self.expired:
            out.append(f"certificate expired on {_day(self.not_after)}")
        if self.not_yet_valid:
            out.append(f"certificate is not valid before {_day(self.not_before)}")
        if not self.hostname_match:
            shown = ", ".join(self.names) if self.names else "no names"
            out.append(f"name mismatch: certificate is for {shown}")
        out.extend(self.rejections)
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
    """Trusted CA certificates, as the OpenSSL store every judgement uses."""

    certificates: tuple[x509.Certificate, ...]

    @functools.cached_property
    def store(self) -> crypto.X509Store:
        return self._build(None)

    def at(self, when: datetime | None) -> crypto.X509Store:
        """The store, judging dates at ``when`` (None: the current time)."""
        return self.store if when is None else self._build(when)

    def _build(self, when: datetime | None) -> crypto.X509Store:
        store = crypto.X509Store()
        for cert in self.certificates:
            store.add_cert(crypto.X509.from_cryptography(cert))
        if when is not None:
            store.set_time(when)
        # What an OpenSSL TLS client checks (the "sslserver" purpose): EKU, key usage, CA flags.
        _openssl.X509_STORE_set_purpose(store._store, _openssl.X509_PURPOSE_SSL_SERVER)
        return store


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


# --- the judgement ------------------------------------------------------------------------

# OpenSSL verify errors that mean "no path to a trusted certificate".
_UNTRUSTED = {
    2,  # unable to get issuer certificate
    7,  # certificate signature failure
    18,  # self-signed certificate
    19,  # self-signed certificate in certificate chain
    20,  # unable to get local issuer certificate
    21,  # unable to verify the first certificate
}
_EXPIRED, _NOT_YET_VALID = 10, 9
_MIN_BITS = (80, 112, 128, 192, 256)  # OpenSSL's security bits per level 1..5


@functools.cache
def client_security_level() -> int:
    """The security level of the contexts the probe and the relay handshake with."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).security_level


def judge_chain(
    chain: Sequence[x509.Certificate], host: str, trust: TrustStore
) -> tuple[CertificateInfo | None, list[str]]:
    """The presented chain (leaf first) for ``host``: its facts and every reason it is not
    acceptable for Strict (empty: the relay delivers under Enforced Strict)."""
    if not chain:
        return None, ["the server sent no certificate"]
    info = analyse_certificate(chain[0], host, trust, chain[1:])
    return info, info.problems


def analyse_certificate(
    leaf: x509.Certificate,
    host: str,
    trust: TrustStore,
    intermediates: Sequence[x509.Certificate] | None = None,
    now: datetime | None = None,
) -> CertificateInfo:
    """Judge ``leaf`` (with the ``intermediates`` the server sent) for ``host`` at ``now``."""
    when = now or datetime.now(UTC)
    intermediates = list(intermediates or [])
    names = certificate_names(leaf)
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    error, chain = _openssl_verify(trust.at(now), leaf, intermediates)
    rejections = []
    untrusted = None
    if error is not None:
        code, depth, message, subject, issuer = error
        if code in _UNTRUSTED:
            untrusted = _untrusted_text(code, depth, message, subject, issuer)
        elif not (depth == 0 and code in (_EXPIRED, _NOT_YET_VALID)):  # else: a fact says it
            where = f" ({subject})" if depth else ""
            rejections.append(f"certificate rejected: {message}{where}")
    rejections += _security_level_problems(chain or [leaf, *intermediates], chain is not None)
    key_type, key_size = _key(leaf)
    return CertificateInfo(
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        names=tuple(names),
        not_before=not_before,
        not_after=not_after,
        trusted=error is None or error[0] not in _UNTRUSTED,
        self_signed=_self_signed(leaf),
        hostname_match=match_hostname(names, host),
        expired=when > not_after,
        not_yet_valid=when < not_before,
        key_type=key_type,
        key_size=key_size,
        signature_algorithm=_signature_name(leaf),
        rejections=tuple(dict.fromkeys(rejections)),
        untrusted=untrusted,
    )


def _untrusted_text(code: int, depth: int, message: str, subject: str, issuer: str) -> str:
    """OpenSSL's "no trusted chain" error, saying which CA is missing and who sent what."""
    if code in (2, 20):  # unable to get (local) issuer certificate
        if depth == 0:
            return (f"certificate issued by an unknown CA ({issuer}): neither in the trust "
                    "store nor sent by the server (a missing intermediate certificate?)")
        return (f"certificate issued by an unknown CA ({issuer}, which issued the "
                f"intermediate {subject} the server sent)")
    if code == 19:  # self-signed certificate in certificate chain
        return f"certificate chain ends in a root that is not trusted ({subject})"
    if code == 21:  # unable to verify the first certificate
        return f"certificate issued by an unknown CA ({issuer})"
    return f"certificate rejected: {message} ({subject})"


def _openssl_verify(
    store: crypto.X509Store, leaf: x509.Certificate, intermediates: list[x509.Certificate]
) -> tuple[tuple[int, int, str, str, str] | None, list[x509.Certificate] | None]:
    """(first error as code, depth, message, and that certificate's subject and issuer; or
    None) and the verified chain."""
    context = crypto.X509StoreContext(
        store, crypto.X509.from_cryptography(leaf),
        [crypto.X509.from_cryptography(c) for c in intermediates])
    try:
        verified = context.get_verified_chain()
    except crypto.X509StoreContextError as exc:
        code, depth, message = exc.errors
        where = exc.certificate.to_cryptography()
        return (code, depth, message, where.subject.rfc4514_string(),
                where.issuer.rfc4514_string()), None
    return None, [c.to_cryptography() for c in verified]


def _security_level_problems(chain: list[x509.Certificate], complete: bool) -> list[str]:
    """OpenSSL's key-size and digest checks at the client's security level (its auth level).

    Every key counts (the anchor's too); every signature but the anchor's own. Without a
    verified chain the presented one is checked (a self-signed top is taken as the anchor).
    """
    level = client_security_level()
    if level <= 0:
        return []
    floor = _MIN_BITS[min(level, len(_MIN_BITS)) - 1]
    anchored = complete or _self_signed(chain[-1])
    out = []
    for depth, cert in enumerate(chain):
        is_anchor = anchored and depth == len(chain) - 1
        if _key_bits(cert) < floor:
            which = "EE" if depth == 0 else "CA"
            out.append(f"certificate rejected: {which} certificate key too weak "
                       f"({_key_text(cert)}, security level {level})")
        if not is_anchor and _signature_bits(cert) < floor:
            out.append(f"certificate rejected: CA signature digest algorithm too weak "
                       f"({_signature_name(cert)} on {cert.subject.rfc4514_string()}, "
                       f"security level {level})")
    return out


def _key_bits(cert: x509.Certificate) -> int:
    """Security bits of the public key, as OpenSSL counts them."""
    key_type, size = _key(cert)
    if key_type in ("RSA", "DSA"):
        size = size or 0
        for bits, strength in ((15360, 256), (7680, 192), (3072, 128), (2048, 112), (1024, 80)):
            if size >= bits:
                return strength
        return 0
    if key_type == "Ed25519":
        return 128
    if key_type == "Ed448":
        return 224
    return (size or 0) // 2  # elliptic curves


_DIGEST_BITS = {"md5": 39, "sha1": 63, "sha224": 112, "sha256": 128, "sha384": 192,
                "sha512": 256, "sha3_224": 112, "sha3_256": 128, "sha3_384": 192,
                "sha3_512": 256}


def _signature_bits(cert: x509.Certificate) -> int:
    oid = cert.signature_algorithm_oid
    if oid == SignatureAlgorithmOID.ED25519:
        return 128
    if oid == SignatureAlgorithmOID.ED448:
        return 224
    digest = cert.signature_hash_algorithm
    return _DIGEST_BITS.get(digest.name, 0) if digest is not None else 0


def _key_text(cert: x509.Certificate) -> str:
    key_type, size = _key(cert)
    return f"{key_type} {size} bits" if size and key_type in ("RSA", "DSA") else key_type


def certificate_names(cert: x509.Certificate) -> list[str]:
    """subjectAltName DNS names and IPs; the subject CN only when there is no DNS name in a
    subjectAltName, as OpenSSL's host check (and so the relay and Postfix) does."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        dns_names: list[str] = []
        ips: list[str] = []
    else:
        dns_names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    if not dns_names:
        dns_names = [str(cn.value)
                     for cn in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return dns_names + ips


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


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
