"""What a domain publishes (MTA-STS, TLS-RPT, DANE) as a few lines of text: shared by
`validate --verbose` and the wizard's More detail."""

from __future__ import annotations

from connectwiz.probe.results import TargetResult


def publication_lines(result: TargetResult) -> list[str]:
    """MTA-STS, TLS-RPT and DANE in a few lines; empty for routes."""
    lines: list[str] = []
    sts = result.mta_sts
    if sts is not None:
        if not sts.published:
            lines.append("MTA-STS:   not published" + (f" ({sts.error})" if sts.error else ""))
        elif sts.policy is None:
            lines.append(f"MTA-STS:   unusable — {sts.error}")
        else:
            patterns = ", ".join(sts.policy.mx) or "(none)"
            lines.append(f"MTA-STS:   mode {sts.policy.mode}, max_age {sts.policy.max_age} s, "
                         f"mx {patterns} (id {sts.id})")
            lines += [f"           {m.host}: " + (f"matches {m.pattern}" if m.matches
                                                   else "matches no pattern") for m in sts.mx]
    rpt = result.tls_rpt
    if rpt is not None:
        if not rpt.published:
            lines.append("TLS-RPT:   not published" + (f" ({rpt.error})" if rpt.error else ""))
        else:
            shown = ", ".join(rpt.rua) or "(no address)"
            lines.append(f"TLS-RPT:   reports to {shown}" + (f" — {rpt.error}" if rpt.error
                                                             else ""))
    dane = result.dane
    if dane is not None:
        if not dane.published:
            errors = [h.error for h in dane.hosts if h.error]
            lines.append("DANE:      no TLSA records" + (f" ({errors[0]})" if errors else ""))
        for host in (h for h in dane.hosts if h.records):
            auth = "DNSSEC-authenticated" if host.authenticated else "not authenticated (no AD)"
            if host.matches is None:
                verdict = "no usable record (usage 2 or 3)"
            else:
                verdict = "matches the certificate" if host.matches else "does NOT match"
            records = ", ".join(f"{r.usage} {r.selector} {r.matching_type}"
                                for r in host.records)
            lines.append(f"DANE:      {host.name} TLSA {records}: {verdict}; {auth}")
    return lines
