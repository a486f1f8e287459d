"""``connectwiz tlsrpt``: the TLS reports (RFC 8460) of one day, as sent or still to send."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from connectwiz.errors import UserError
from connectwiz.relay.spool import default_spool
from connectwiz.relay.tlsrpt import TlsRptStore, build_report


def run(args: argparse.Namespace) -> int:
    spool = Path(args.spool) if args.spool else default_spool()
    if not (spool / "log").is_dir():
        raise UserError(f"{spool}: not a relay spool (no log/ directory)")
    day = _day(args.day)
    store = TlsRptStore(spool)
    counts, sent = store.counts(day), store.sent(day)
    domains = sorted(counts.get("domains", {}))
    if args.domain:
        wanted = args.domain.strip().lower().rstrip(".")
        if wanted not in domains:
            raise UserError(f"no TLS sessions to {wanted} counted on {day}")
        domains = [wanted]
    if not domains:
        print(f"no TLS sessions counted on {day}")
        return 0
    for domain in domains:
        print(f"# {domain}: {_status(sent.get(domain, {}), day)}")
        print(json.dumps(build_report(counts, domain), indent=2))
    return 0


def _day(text: str | None) -> str:
    if text is None:
        return (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    try:
        return date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise UserError(f"--day {text!r}: expected a date as YYYY-MM-DD") from None


def _status(done: dict[str, dict[str, object]], day: str) -> str:
    if not done:
        if day >= datetime.now(UTC).date().isoformat():
            return "day not over; sent after midnight UTC if the domain publishes a rua"
        return "not sent (no rua published, or the relay has not run since the day ended)"
    return "; ".join(f"sent to {uri} at {v.get('at')}" if v.get("ok")
                     else f"failed to {uri} at {v.get('at')}: {v.get('error')}"
                     for uri, v in done.items())
