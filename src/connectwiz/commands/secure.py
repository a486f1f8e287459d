"""``connectwiz secure list|show|extend|revoke|unlock``: messages held for the Secure Messaging
portal."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectwiz.errors import UserError
from connectwiz.relay.held import (
    HeldStore,
    extend_held,
    held_status,
    revoke_held,
    unlock_recipients,
)
from connectwiz.relay.msglog import read_record
from connectwiz.relay.spool import Spool, default_spool


def _public(record: dict[str, Any], spool: Path, now: datetime) -> dict[str, Any]:
    """The record as shown to an admin: token hashes left out, notification states added."""
    recipients = []
    for r in record["recipients"]:
        notes = []
        for note_id in r["notifications"]:
            try:
                status = read_record(spool, note_id).status
            except UserError:
                status = "unknown"
            notes.append({"id": note_id, "status": status})
        recipients.append({"address": r["address"], "notifications": notes,
                           "first_viewed_at": r.get("first_viewed_at"),
                           "read_receipt_sent": r.get("read_receipt_sent", False),
                           "wrong_codes": r.get("wrong_codes", 0),
                           "locked_at": r.get("locked_at")})
    out = {k: v for k, v in record.items() if k != "recipients"}
    out["status"] = held_status(record, now)
    out["recipients"] = recipients
    return out


def _show(rec: dict[str, Any]) -> list[str]:
    d = rec["definition"]
    limits = "never expires (capped by retention)" if d["expiry_days"] is None \
        else f"expires after {d['expiry_days']} days"
    allowed = [name for key, name in (("allow_print", "print"), ("allow_reply", "reply"),
                                      ("allow_reply_all", "reply all")) if d[key]]
    receipt = "on" if d["read_receipt"] else "off"
    lines = [
        f"Held message {rec['id']}: {rec['status']}",
        f"  From        <{rec['sender']}>",
        f"  Held        {rec['held_at']}",
        f"  Expires     {rec['expires_at']} (extend up to {rec['limit_at']}; "
        f"extended {rec.get('extended_days', 0)} days)",
        f"  Definition  {d['name']} ({limits}; recipients may "
        f"{', '.join(allowed) or 'only read'}; read receipt {receipt})",
        f"  Why         {rec['reason']}",
    ]
    if rec.get("revoked_at"):
        lines.append(f"  Revoked     {rec['revoked_at']}")
    for r in rec["recipients"]:
        notes = ", ".join(f"{n['id']} {n['status']}" for n in r["notifications"]) or "none"
        viewed = r["first_viewed_at"] or "not yet"
        lines.append(f"  Recipient   {r['address']}: notification {notes}; viewed {viewed}")
        if r["locked_at"]:
            lines.append(f"              locked {r['locked_at']} after {r['wrong_codes']} wrong "
                         "codes; secure unlock (or extend) unlocks it")
    for addr in rec.get("delivered_with_banner", []):
        lines.append(f"  Internal    {addr}: delivered to the mailbox with the banner")
    return lines


def run(args: argparse.Namespace) -> int:
    spool = Path(args.spool) if args.spool else default_spool()
    store = HeldStore(Spool(spool))
    now = datetime.now(UTC)
    if args.action == "list":
        if args.message_id:
            raise UserError("secure list takes no ID (use secure show ID)")
        if not spool.is_dir():
            raise UserError(f"{spool}: not a relay spool")
        records = [_public(store.read(i), spool, now) for i in store.ids()]
        if args.json:
            print(json.dumps(records, indent=2))
        elif not records:
            print(f"no held messages in {spool}")
        for r in records if not args.json else ():
            rcpts = ", ".join(x["address"] for x in r["recipients"]) or "-"
            print(f"{r['id']}  {r['status']:8}  expires {r['expires_at']}  "
                  f"{r['definition']['name']}  <{r['sender']}> -> {rcpts}")
        return 0
    if not args.message_id:
        raise UserError(f"secure {args.action} needs the ID of a held message (see secure list)")
    held_id = args.message_id.strip().upper()
    if args.days is not None and args.action != "extend":
        raise UserError("--days is only for secure extend")
    if args.action == "extend":
        if args.days is None:
            raise UserError("secure extend needs --days N")
        record = extend_held(store, held_id, args.days, now)
    elif args.action == "revoke":
        record = revoke_held(store, held_id, now)
    elif args.action == "unlock":  # a link the portal locked after too many wrong codes
        record = store.update(held_id, unlock_recipients)
    else:
        record = store.read(held_id)
    shown = _public(record, spool, now)
    print(json.dumps(shown, indent=2) if args.json else "\n".join(_show(shown)))
    return 0
