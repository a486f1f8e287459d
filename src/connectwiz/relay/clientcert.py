"""Pinned client certificates on receipt: a receipt policy may require the sending server to
present a certificate it pins (the partner's own, often self-signed) or one issued directly by
a CA it pins.

Python's ``ssl`` has no verify callback, so the server context cannot ask for any certificate
and judge it later: it trusts the pinned certificates (partial chains allowed, so a pinned
leaf is a trust anchor by itself) and the system's CAs, and asks for a certificate only while
some policy pins one. The handshake then accepts a pinned certificate, one from a public CA
(many MTAs present their server certificate), or none; any other certificate fails the
handshake. Which policy a certificate satisfies is checked per recipient, once the policy is
known: a publicly trusted certificate satisfies no pin by being trusted.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterable

from aiosmtpd.smtp import Session
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from connectwiz.policy.model import ClientCertificatePin, PolicyModel, ReceiptPolicy

REPLY_CERT_REQUIRED = ("530 5.7.0 A client certificate is required: issue STARTTLS and "
                       "present the certificate pinned for your server")


def pinned_certificates(model: PolicyModel) -> tuple[bytes, ...]:
    """Every certificate a receipt policy pins (DER), in bundle order, without repeats."""
    return tuple(dict.fromkeys(
        der for p in model.receipt_policies if p.client_certificate is not None
        for der in p.client_certificate.certificates))


def request_certificates(ctx: ssl.SSLContext, pins: Iterable[bytes]) -> None:
    """Make ``ctx`` (a server context) ask for a client certificate and accept the pinned
    ones; with no pins it asks for none, as before."""
    pins = tuple(pins)
    if not pins:
        return
    # The system's CAs too: a sender presenting a publicly issued certificate to every server
    # must not lose TLS with us because some other partner is pinned.
    ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    ctx.load_verify_locations(cadata=b"".join(pins))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.verify_mode = ssl.CERT_OPTIONAL


def peer_certificate(session: Session) -> bytes | None:
    """The client's certificate (DER) in this session, None without TLS or certificate."""
    obj = (session.ssl or {}).get("ssl_object")
    return obj.getpeercert(binary_form=True) if obj is not None else None


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def matches(pin: ClientCertificatePin, der: bytes) -> bool:
    """``der`` is a pinned certificate, or was issued directly by a pinned CA."""
    if any(der == pinned for pinned in pin.certificates):
        return True
    leaf = x509.load_der_x509_certificate(der)
    for pinned in pin.certificates:
        ca = x509.load_der_x509_certificate(pinned)
        try:
            is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca or leaf.issuer != ca.subject:
            continue
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def certificate_refusal(policies: Iterable[ReceiptPolicy | None], session: Session) -> str | None:
    """The reply refusing the message when a policy in effect pins a certificate the client
    did not present (a plaintext session presents none), or None."""
    pins = [p.client_certificate for p in policies
            if p is not None and p.client_certificate is not None]
    if not pins:
        return None
    der = peer_certificate(session)
    if der is None:
        return REPLY_CERT_REQUIRED
    for pin in pins:
        if not matches(pin, der):
            return (f"530 5.7.1 Client certificate not accepted (SHA-256 {fingerprint(der)[:16]}"
                    f"...): it is not the one pinned for your server")
    return None
