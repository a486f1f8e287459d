"""DANE for SMTP (RFC 7672): TLSA records at ``_25._tcp.<mx>`` and whether they match.

TLSA names always use port 25: that is the port of MX delivery, whatever port a test or lab
connects to. The query asks for DNSSEC (DO and AD flags); ``authenticated`` is the AD bit the
resolver set on its answer. connectwiz does not validate signatures itself, so that bit is only
as trustworthy as the resolver and the path to it (a local validating resolver is the safe case).

Only DANE-TA (2) and DANE-EE (3) records are usable for SMTP (RFC 7672 §3.1.3); PKIX-TA (0)
and PKIX-EE (1) are listed but never counted as a match.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.resolver
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from connectwiz.probe.dns import make_resolver
from connectwiz.probe.options import NetworkOptions

USABLE = (2, 3)  # DANE-TA, DANE-EE


@dataclass(frozen=True, slots=True)
class Tlsa:
    usage: int
    selector: int
    matching_type: int
    data: bytes
    matches: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"usage": self.usage, "selector": self.selector,
                "matching_type": self.matching_type, "data": self.data.hex(),
                "matches": self.matches}


@dataclass(frozen=True, slots=True)
class DaneHost:
    host: str
    name: str  # the TLSA owner name, _25._tcp.<host>
    records: tuple[Tlsa, ...] = field(default_factory=tuple)
    authenticated: bool = False
    error: str | None = None

    @property
    def usable(self) -> bool:
        return any(r.usage in USABLE for r in self.records)

    @property
    def matches(self) -> bool | None:
        """A usable record matches the presented chain; None when there is nothing to compare."""
        if not self.usable:
            return None
        return any(r.matches for r in self.records)

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "name": self.name, "authenticated": self.authenticated,
                "usable": self.usable, "matches": self.matches, "error": self.error,
                "records": [r.to_json() for r in self.records]}


@dataclass(frozen=True, slots=True)
class DaneResult:
    hosts: tuple[DaneHost, ...] = field(default_factory=tuple)

    @property
    def published(self) -> bool:
        return any(h.records for h in self.hosts)

    @property
    def authenticated(self) -> bool:
        """Every host with TLSA records got them with the AD bit set."""
        return self.published and all(h.authenticated for h in self.hosts if h.records)

    def to_json(self) -> dict[str, Any]:
        return {"published": self.published, "authenticated": self.authenticated,
                "hosts": [h.to_json() for h in self.hosts]}


def dnssec_resolver(options: NetworkOptions) -> dns.asyncresolver.Resolver:
    """A resolver that asks for DNSSEC: DO in EDNS and AD in the header (RFC 6840 §5.7)."""
    resolver = make_resolver(options)
    resolver.use_edns(0, dns.flags.DO, 1232)
    resolver.flags = dns.flags.RD | dns.flags.AD
    return resolver


async def lookup_tlsa(host: str, resolver: dns.asyncresolver.Resolver) -> DaneHost:
    name = f"_25._tcp.{host}"
    try:
        answer = await resolver.resolve(name, "TLSA")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return DaneHost(host, name)
    except dns.exception.Timeout:
        return DaneHost(host, name, error=f"DNS lookup of TLSA for {name} timed out")
    except dns.exception.DNSException as exc:
        return DaneHost(host, name, error=f"DNS lookup of TLSA for {name} failed: {exc}")
    records = tuple(Tlsa(r.usage, r.selector, r.mtype, r.cert) for r in answer)
    authenticated = bool(answer.response.flags & dns.flags.AD)
    return DaneHost(host, name, records, authenticated)


def match_chain(host: DaneHost, chain: tuple[bytes, ...]) -> DaneHost:
    """Mark which records match the DER chain the host presented (leaf first)."""
    if not host.records or not chain:
        return host
    records = tuple(
        Tlsa(r.usage, r.selector, r.matching_type, r.data, _record_matches(r, chain))
        for r in host.records
    )
    return DaneHost(host.host, host.name, records, host.authenticated, host.error)


def _record_matches(record: Tlsa, chain: tuple[bytes, ...]) -> bool:
    if record.usage == 3:
        candidates = chain[:1]
    elif record.usage == 2:
        candidates = chain[1:]  # a trust anchor the server sent along with its leaf
    else:
        return False
    return any(association_data(der, record.selector, record.matching_type) == record.data
               for der in candidates)


def association_data(der: bytes, selector: int, matching_type: int) -> bytes | None:
    """What a TLSA record with ``selector``/``matching_type`` holds for this certificate."""
    if selector == 0:
        content = der
    elif selector == 1:
        content = x509.load_der_x509_certificate(der).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        return None
    if matching_type == 0:
        return content
    if matching_type == 1:
        return hashlib.sha256(content).digest()
    if matching_type == 2:
        return hashlib.sha512(content).digest()
    return None
