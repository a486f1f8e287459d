"""``connectwiz log``: the Receipt/Delivery view of what the relay did with each message."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from connectwiz.relay.msglog import MessageRecord, list_records, read_record
from connectwiz.relay.spool import default_spool


def run(args: argparse.Namespace) -> int:
    spool = Path(args.spool) if args.spool else default_spool()
    if args.message_id:
        record = read_record(spool, args.message_id)
        if args.json:
            print(json.dumps(record.to_json(), indent=2))
        else:
            print("\n".join(describe(record)))
        return 0
    records = list_records(spool)
    if args.json:
        print(json.dumps([summary(r) for r in records], indent=2))
        return 0
    if not records:
        print(f"no messages in {spool}")
    for r in records:
        s = summary(r)
        rcpts = ", ".join(s["recipients"]) or "-"
        print(f"{s['id']}  {s['received_at'] or '-':24}  {s['status']:9}  "
              f"in:{s['tls_in'] or 'plain':8} out:{s['tls_out'] or '-':8}  "
              f"{s['mail_from'] or '<>'} -> {rcpts}")
    return 0


def summary(record: MessageRecord) -> dict[str, Any]:
    received = record.received or {}
    attempts = record.attempts
    last = attempts[-1] if attempts else {}
    return {
        "id": record.id, "status": record.status, "received_at": received.get("at"),
        "mail_from": received.get("mail_from"), "recipients": received.get("recipients", []),
        "client_ip": received.get("client_ip"), "tls_in": received.get("tls_version"),
        "attempts": len(attempts), "tls_out": last.get("tls_version"),
        "last_reply": last.get("error") or last.get("reply"),
    }


def describe(record: MessageRecord) -> list[str]:
    out = [f"Message {record.id}: {record.status}"]
    r = record.received
    if r:
        tls = f"{r.get('tls_version')} {r.get('tls_cipher')}" if r.get("tls_version") else "none"
        out += [
            f"Received  {r.get('at')} from {r.get('client_ip')} (HELO {r.get('helo') or '-'})",
            f"  TLS       {tls}",
            f"  Policy    {r.get('policy') or '-'} ({r.get('receipt_option') or '-'})",
            f"  From      <{r.get('mail_from') or ''}>",
            f"  To        {', '.join(f'<{x}>' for x in r.get('recipients', []))}",
            f"  Result    {r.get('result')}",
        ]
    for e in record.events:
        if e.get("event") == "secure":
            applied = f"applies, {e.get('definition')!r}" if e.get("applied") else "not applied"
            out += [f"Secure Messaging  {applied}", f"  Why         {e.get('reason')}"]
    for e in record.events:
        if e.get("event") == "quarantined":
            out += [f"Quarantined {e.get('at')}  {e.get('reason')}",
                    f"  Kept in     {e.get('folder')} (nothing is retried or deleted)"]
    for n, a in enumerate(record.attempts, 1):
        if a.get("tls_version"):
            verified = "certificate verified" if a.get("certificate_verified") else \
                "certificate not verified"
            tls = f"{a['tls_version']} {a.get('tls_cipher')}, {verified}"
        else:
            tls = "none"
        out += [
            f"Attempt {n}  {a.get('at')}  {a.get('host')} [{a.get('address')}]:{a.get('port')}",
            f"  Definition  {a.get('definition')} ({a.get('option')}, "
            f"{a.get('encryption_mode')}, TLS {a.get('min_tls')}+); policy {a.get('policy')}",
            f"  TLS         {tls}",
            f"  Outcome     {a.get('outcome')}: {a.get('error') or a.get('reply')}",
        ]
    for e in record.events:
        if e.get("event") in ("delivered", "deferred", "bounced", "expired", "held"):
            extra = e.get("reason") or ""
            if e.get("dsn"):
                extra += f" (bounce {e['dsn']})"
            if e.get("notifications"):
                extra += f"for the portal; notifications {', '.join(e['notifications'])}"
            out.append(f"{e['event'].title():9} {e.get('at')}  "
                       f"{', '.join(e.get('recipients', []))}  {extra}".rstrip())
    return out
