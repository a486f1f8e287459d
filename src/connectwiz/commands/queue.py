"""``connectwiz queue``: the relay's queue, the way ``postqueue``/``postsuper`` show and change it.

Reading (list, show) works on the spool directly. Changes (flush, hold, release, delete)
go to the running relay over its control socket, or are made under the spool lock when no
relay runs (relay/control.py; the spool side is relay/queuectl.py).
"""

from __future__ import annotations

import argparse
import json
import socket
from datetime import UTC, datetime
from pathlib import Path

from connectwiz.errors import UserError
from connectwiz.relay import control, queuectl
from connectwiz.relay.msglog import read_record
from connectwiz.relay.spool import Spool, default_spool

_MARK = {"active": "*", queuectl.HOLD: "!", "incoming": " ", "deferred": " "}


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _list(spool: Spool, args: argparse.Namespace) -> int:
    states = ("deferred",) if args.deferred else queuectl.QUEUE_STATES
    items = queuectl.list_queue(spool, states, args.domain)
    if args.json:
        print(json.dumps([q.to_json() for q in items], indent=2))
        return 0
    if not items:
        print("Mail queue is empty")
        return 0
    print(f"{'-Queue ID-':<27} {'--Size--':>8} {'--Arrival (UTC)--':<19}  -Sender/Recipient-")
    for q in items:
        e = q.entry
        print(f"{e.id + _MARK[q.state]:<27} {q.size:>8} {_when(e.received_at):<19}  "
              f"{e.mail_from or 'MAILER-DAEMON'}")
        if q.state == queuectl.HOLD:
            print(f"{'':<58}(on hold)")
        for rcpt in e.pending():
            if rcpt.detail:
                print(f"{'':<58}({rcpt.detail})")
            print(f"{'':<58}{rcpt.address}")
    total = sum(q.size for q in items)
    print(f"-- {(total + 1023) // 1024} Kbytes in {len(items)} "
          f"Request{'s' if len(items) != 1 else ''}. (* active, ! on hold)")
    return 0


def _show(spool: Spool, args: argparse.Namespace) -> int:
    if len(args.ids) != 1:
        raise UserError("queue show needs exactly one queue id")
    msg_id = args.ids[0].strip().upper()
    item = queuectl.find(spool, msg_id)
    if item is None:
        raise UserError(f"{msg_id} is not in the queue (delivered or deleted? "
                        f"see connectwiz log {msg_id})")
    try:
        attempts = read_record(spool.root, msg_id).attempts
    except UserError:
        attempts = []
    headers = queuectl.read_headers(spool, msg_id) if args.headers else None
    if args.json:
        print(json.dumps({**item.to_json(), "attempt_log": attempts,
                          **({"headers": headers} if headers is not None else {})}, indent=2))
        return 0
    e = item.entry
    print(f"Queue ID:     {e.id} ({item.state})")
    print(f"Arrival:      {_when(e.received_at)} UTC from {e.client_ip or 'local'}")
    print(f"Sender:       <{e.mail_from}>{' (bounce)' if e.is_bounce else ''}")
    print(f"Size:         {item.size} bytes")
    print(f"Attempts:     {e.attempts}, next {_when(e.next_attempt)}")
    print("Recipients:")
    for r in e.recipients:
        print(f"  {r.address}: {r.status}" + (f" ({r.detail})" if r.detail else ""))
    print("Delivery attempts:")
    if not attempts:
        print("  none yet")
    for a in attempts:
        tls = f"{a.get('tls_version')} {a.get('tls_cipher')}" if a.get("tls_version") \
            else "no TLS"
        verified = "certificate verified" if a.get("certificate_verified") else "not verified"
        print(f"  {a.get('at', '')} {a.get('host')}[{a.get('address')}]:{a.get('port')} "
              f"{a.get('definition')}: {tls}, {verified}: {a.get('outcome')}"
              f" ({a.get('error') or a.get('reply')})")
    if headers is not None:
        print("Headers:")
        for line in headers.split("\r\n"):
            print(f"  {line}")
    return 0


def _change(spool: Spool, args: argparse.Namespace) -> int:
    if args.action in ("hold", "release") and not args.ids and not args.domain:
        raise UserError(f"queue {args.action} needs queue ids (or --domain D)")
    if args.action == "delete" and not args.ids and not args.domain:
        raise UserError("queue delete needs queue ids or --domain D")
    request = {"op": args.action, "ids": args.ids, "domain": args.domain,
               "silent": args.silent}
    hostname = args.hostname or socket.gethostname()
    reply = control.request(spool.root, request, hostname)
    results = reply["results"]
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        for r in results:
            print(f"{r['id']}: {r['result']}")
        if not results:
            print(f"nothing to {args.action}")
        if reply["relay"] == "stopped" and args.action in ("flush", "release"):
            print("(the relay is not running: these are tried when it starts)")
    failed = [r for r in results if not r["result"].startswith(queuectl.DONE)]
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    spool = Spool(Path(args.spool).expanduser() if args.spool else default_spool())
    if not (spool.root / "queue").is_dir():
        raise UserError(f"{spool.root}: not a relay spool (no queue/ directory)")
    if args.domain is not None and "@" in args.domain:
        raise UserError(f"--domain {args.domain!r}: give a domain, not an address")
    if args.action == "list":
        return _list(spool, args)
    if args.action == "show":
        return _show(spool, args)
    return _change(spool, args)
