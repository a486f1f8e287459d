"""Receipt/Delivery view: a durable per-message record of the TLS actually used.

One JSON-lines file per message (``<spool>/log/<id>.jsonl``), appended with fsync. Events:

- ``received``: client IP, HELO, TLS version/cipher (or none), receipt policy applied, result
- ``attempt``: one delivery attempt to one host: host, IP, port, TLS version/cipher,
  certificate verified, definition applied, SMTP reply, outcome
- ``delivered`` / ``deferred`` / ``bounced`` / ``expired``: what became of recipients
- ``deleted``: recipients an administrator removed from the queue (``connectwiz queue``)
- ``secure``: Secure Messaging applied (or, when the client asked, why not): definition, why
- ``held``: recipients held for the Secure Messaging portal, with their notifications' ids
- ``quarantined``: the queue file was damaged and set aside in ``<spool>/corrupt/``

A crash can leave a torn last line; readers skip lines that do not parse.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectwiz.errors import UserError


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MessageLog:
    def __init__(self, spool_root: Path) -> None:
        self.dir = Path(spool_root) / "log"

    def append(self, msg_id: str, event: str, durable: bool = True, **fields: Any) -> None:
        """Blocking (fsync): call from a worker thread."""
        self.append_many(msg_id, [{"event": event, **fields}], durable)

    def append_many(self, msg_id: str, records: list[dict[str, Any]],
                    durable: bool = True) -> None:
        """Several events with one fsync (none with ``durable=False``: the line survives
        the process being killed, not the machine losing power). Each record needs an
        ``event`` key."""
        at = _now()
        data = b"".join((json.dumps({"at": at, **r}, default=str) + "\n").encode()
                        for r in records)
        fd = os.open(self.dir / f"{msg_id}.jsonl", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a crash tore the last line: do not glue onto it
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def sync(self, msg_id: str) -> None:
        """fsync what ``durable=False`` appends left in the page cache."""
        fd = os.open(self.dir / f"{msg_id}.jsonl", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def has_event(self, msg_id: str, event: str) -> bool:
        path = self.dir / f"{msg_id}.jsonl"
        return path.is_file() and any(e.get("event") == event for e in _read(path).events)


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: str
    events: list[dict[str, Any]]

    @property
    def received(self) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("event") == "received"), None)

    @property
    def attempts(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "attempt"]

    @property
    def status(self) -> str:
        """delivered | bounced | deferred | queued | refused | deleted | held | quarantined,
        from the recipients' fates."""
        if any(e.get("event") == "quarantined" for e in self.events):
            return "quarantined"  # set aside for a person: nothing more happens by itself
        fates: dict[str, str] = {}
        for e in self.events:
            kind = e.get("event")
            if kind in ("delivered", "bounced", "deferred", "expired", "held", "deleted"):
                for rcpt in e.get("recipients", []):
                    fates[rcpt] = "bounced" if kind == "expired" else kind
        received = self.received or {}
        if received.get("result", "accepted") != "accepted":
            return "refused"
        pending = [r for r in received.get("recipients", []) if r not in fates]
        if pending:
            return "queued"
        if "deferred" in fates.values():
            return "deferred"
        if "bounced" in fates.values():
            return "bounced" if "delivered" not in fates.values() else "partly bounced"
        if "deleted" in fates.values():
            return "deleted"  # by the administrator, with or without a bounce
        if "held" in fates.values():
            return "held"  # some or all recipients read it in the Secure Messaging portal
        return "delivered"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "received": self.received,
                "attempts": self.attempts, "events": self.events}


def _read(path: Path) -> MessageRecord:
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a torn last line after a crash
    return MessageRecord(path.stem, events)


def list_records(spool_root: Path) -> list[MessageRecord]:
    log_dir = Path(spool_root) / "log"
    if not log_dir.is_dir():
        raise UserError(f"{spool_root}: not a relay spool (no log/ directory)")
    return [_read(p) for p in sorted(log_dir.glob("*.jsonl"))]


def read_record(spool_root: Path, msg_id: str) -> MessageRecord:
    path = Path(spool_root) / "log" / f"{msg_id.strip().upper()}.jsonl"
    if not (Path(spool_root) / "log").is_dir():
        raise UserError(f"{spool_root}: not a relay spool (no log/ directory)")
    if "/" in msg_id or not path.is_file():
        raise UserError(f"no message {msg_id!r} in {spool_root}")
    return _read(path)
