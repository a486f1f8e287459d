"""TLS-RPT (RFC 8460): the ``_smtp._tls`` TXT record and where the domain wants TLS reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver

from connectwiz.probe.dns import DnsError
from connectwiz.probe.mtasts import tag_fields, txt_records


@dataclass(frozen=True, slots=True)
class TlsRptResult:
    published: bool  # a v=TLSRPTv1 TXT record exists (even a malformed one)
    record: str | None = None
    rua: tuple[str, ...] = field(default_factory=tuple)  # mailto: and https: report URIs
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"published": self.published, "record": self.record, "rua": list(self.rua),
                "error": self.error}


def parse_tlsrpt(texts: list[str]) -> TlsRptResult:
    """RFC 8460 §3: exactly one v=TLSRPTv1 record with a rua of mailto:/https: URIs."""
    records = [t for t in texts if t.startswith("v=TLSRPTv1")]
    if not records:
        return TlsRptResult(False)
    if len(records) > 1:
        return TlsRptResult(True, records[0],
                            error=f"{len(records)} v=TLSRPTv1 records; exactly one is allowed")
    record = records[0]
    fields = tag_fields(record)
    if fields.get("v") != "TLSRPTv1":
        return TlsRptResult(True, record, error="record does not start with v=TLSRPTv1")
    uris = tuple(u.strip() for u in fields.get("rua", "").split(",") if u.strip())
    if not uris:
        return TlsRptResult(True, record, error="record has no rua (reporting address)")
    bad = [u for u in uris if not u.lower().startswith(("mailto:", "https://"))]
    if bad:
        return TlsRptResult(True, record, uris,
                            error=f"rua must be mailto: or https: URIs; found {', '.join(bad)}")
    return TlsRptResult(True, record, uris)


async def lookup_tls_rpt(domain: str, resolver: dns.asyncresolver.Resolver) -> TlsRptResult:
    try:
        texts = await txt_records(f"_smtp._tls.{domain}", resolver)
    except DnsError as exc:
        return TlsRptResult(False, error=exc.reason)
    return parse_tlsrpt(texts)
