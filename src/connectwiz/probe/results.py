"""What validation is asked to check (Target) and what it found (TargetResult, HostResult).

``to_json()`` produces exactly the `validate --json` contract of DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connectwiz.errors import UserError
from connectwiz.policy.domains import InvalidDomain, normalize_domain, normalize_host
from connectwiz.policy.model import ValidationStatus

if TYPE_CHECKING:  # annotations only: keeps dnspython and cryptography out of the wizard's start
    from connectwiz.probe.certs import CertificateInfo
    from connectwiz.probe.dane import DaneResult
    from connectwiz.probe.mtasts import MtaStsResult
    from connectwiz.probe.tlsrpt import TlsRptResult

Status = ValidationStatus

# Weakest first. A definite "no TLS" outranks "could not tell": both make the domain fail.
_RANK = {Status.UNSUPPORTED: 0, Status.ERROR: 1, Status.RELAXED: 2, Status.STRICT: 3}


def weakest(statuses: list[Status]) -> Status:
    """The weakest status of a domain's hosts (``error`` when there are none)."""
    return min(statuses, key=_RANK.__getitem__) if statuses else Status.ERROR


@dataclass(frozen=True, slots=True)
class Target:
    """A partner domain (its MX hosts are probed) or an inbound route (one host, one port)."""

    kind: str  # "domain" | "route"
    name: str  # normalised domain, host name, or IP address
    port: int | None = None  # routes only; None means --smtp-port

    @classmethod
    def domain(cls, text: str) -> Target:
        try:
            return cls("domain", normalize_domain(text))
        except InvalidDomain as exc:
            raise UserError(f"invalid domain {exc.text!r}: {exc.reason}") from None

    @classmethod
    def route(cls, host: str, port: int | None = None) -> Target:
        try:
            name = normalize_host(host)
        except InvalidDomain as exc:
            raise UserError(f"invalid route host {exc.text!r}: {exc.reason}") from None
        if port is not None and not 0 < port < 65536:
            raise UserError(f"invalid route port {port}: expected 1 to 65535")
        return cls("route", name, port)

    def label(self, default_port: int) -> str:
        """The ``target`` field: the domain, or HOST:PORT for a route ([v6]:PORT for IPv6)."""
        if self.kind == "domain":
            return self.name
        port = self.port or default_port
        host = f"[{self.name}]" if ":" in self.name else self.name
        return f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class RcptReply:
    code: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class HostResult:
    """One server (an MX host or the route's host) as probed on one address."""

    host: str
    address: str | None
    port: int
    preference: int | None
    status: Status
    reason: str
    starttls: bool = False
    tls_version: str | None = None
    cipher: str | None = None
    certificate: CertificateInfo | None = None
    rcpt: RcptReply | None = None
    elapsed_ms: int = 0
    # DER certificates as presented, leaf first (for DANE matching; not part of the JSON).
    chain: tuple[bytes, ...] = field(default=(), compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "address": self.address,
            "port": self.port,
            "preference": self.preference,
            "status": str(self.status),
            "reason": self.reason,
            "starttls": self.starttls,
            "tls_version": self.tls_version,
            "cipher": self.cipher,
            "certificate": self.certificate.to_json() if self.certificate else None,
            "rcpt": self.rcpt.to_json() if self.rcpt else None,
            "elapsed_ms": self.elapsed_ms,
        }


@dataclass(frozen=True, slots=True)
class TargetResult:
    target: str
    kind: str
    status: Status
    reason: str
    elapsed_ms: int = 0
    hosts: tuple[HostResult, ...] = field(default_factory=tuple)
    # What a domain publishes (None for routes, and for domains without a mail host).
    mta_sts: MtaStsResult | None = None
    tls_rpt: TlsRptResult | None = None
    dane: DaneResult | None = None

    @property
    def supports_tls(self) -> bool:
        return self.status in (Status.STRICT, Status.RELAXED)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "kind": self.kind,
            "status": str(self.status),
            "reason": self.reason,
            "elapsed_ms": self.elapsed_ms,
            "hosts": [h.to_json() for h in self.hosts],
            "mta_sts": self.mta_sts.to_json() if self.mta_sts else None,
            "tls_rpt": self.tls_rpt.to_json() if self.tls_rpt else None,
            "dane": self.dane.to_json() if self.dane else None,
        }


def summarise(hosts: list[HostResult]) -> tuple[Status, str]:
    """A target's status and reason from its hosts: the weakest host speaks for it."""
    if not hosts:
        return Status.ERROR, "no mail host to try"
    status = weakest([h.status for h in hosts])
    if len(hosts) == 1:
        return status, hosts[0].reason
    worst = next(h for h in hosts if h.status == status)
    return status, f"{worst.host}: {worst.reason}"
