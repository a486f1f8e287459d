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

# Weakest first, for the hosts the relay can reach (unreachable ones are skipped).
_RANK = {Status.UNSUPPORTED: 0, Status.RELAXED: 1, Status.STRICT: 2}


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
    # What the verdict does not show (a different certificate without SNI); each names the
    # host, and the target's ``warnings`` carry them.
    warnings: tuple[str, ...] = ()

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
    warnings: tuple[str, ...] = ()
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
            "warnings": list(self.warnings),
            "elapsed_ms": self.elapsed_ms,
            "hosts": [h.to_json() for h in self.hosts],
            "mta_sts": self.mta_sts.to_json() if self.mta_sts else None,
            "tls_rpt": self.tls_rpt.to_json() if self.tls_rpt else None,
            "dane": self.dane.to_json() if self.dane else None,
        }


def summarise(hosts: list[HostResult]) -> tuple[Status, str, tuple[str, ...]]:
    """A target's status, reason and warnings from its hosts (most preferred first), as the
    relay will deliver: it skips a host it cannot reach, and under Enforced TLS a host that
    fails the check, so the best reachable host speaks for the target. Every weaker host
    gets a warning saying what happens to mail while the better ones are down."""
    if not hosts:
        return Status.ERROR, "no mail host to try", ()
    reachable = [h for h in hosts if h.status != Status.ERROR]
    if not reachable:
        if len(hosts) == 1:
            return Status.ERROR, hosts[0].reason, ()
        return Status.ERROR, "no mail host reachable: " + "; ".join(
            f"{h.host}: {h.reason}" for h in hosts), ()
    best = max(reachable, key=lambda h: _RANK[h.status])
    reason = best.reason if len(hosts) == 1 else f"{best.host}: {best.reason}"
    better = [h.host for h in reachable if h.status == best.status]
    warnings = []
    for h in hosts:
        if h.status == Status.ERROR:
            warnings.append(f"{h.host} is not reachable now ({h.reason}); mail goes to "
                            f"{_names(better)}")
        elif h.status != best.status:
            verb = "is" if len(better) == 1 else "are"
            warnings.append(f"{h.host} is weaker ({h.status}: {h.reason}): while "
                            f"{_names(better)} {verb} down, mail under Enforced TLS is "
                            "deferred")
        warnings.extend(h.warnings)
    return best.status, reason, tuple(warnings)


def _names(hosts: list[str]) -> str:
    return hosts[0] if len(hosts) == 1 else ", ".join(hosts[:-1]) + " and " + hosts[-1]
