"""Queue control (``connectwiz queue``) on the spool: list, show, flush, hold, release,
delete. Who runs the changes — the running relay, or the command under the spool lock —
is relay/control.py.

This module is the one place besides ``spool.py`` that knows the spool's files. On hold
means: the queue file is moved to ``hold/<id>.msg`` (with its progress, if any, in
``hold/<id>.json``), where neither recovery nor the rescan looks — as Postfix moves a
held message into its hold queue. Every change has one atomic rename as its commit point;
files written before it are ignored or removed by recovery if a crash comes first.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectwiz.errors import UserError
from connectwiz.relay.dsn import build_dsn
from connectwiz.relay.msglog import MessageLog
from connectwiz.relay.queuefile import QueueEntry, Recipient
from connectwiz.relay.queuefile import fsync_dir as sync_dir
from connectwiz.relay.spool import Spool, new_message_id

HOLD = "hold"
QUEUE_STATES = ("incoming", "active", "deferred", HOLD)
DELETED_DETAIL = "deleted from the queue by the mail administrator"
DONE = ("flushed", "held", "released", "deleted", "already", "will be")


@dataclass(slots=True)
class Queued:
    state: str
    entry: QueueEntry
    size: int  # bytes of the queue file

    def to_json(self) -> dict[str, Any]:
        e = self.entry
        return {"id": e.id, "state": self.state, "size": self.size,
                "arrival": e.received_at, "sender": e.mail_from, "client_ip": e.client_ip,
                "attempts": e.attempts, "next_attempt": e.next_attempt or None,
                "recipients": [{"address": r.address, "status": r.status, "detail": r.detail}
                               for r in e.recipients]}


def arrival_of(msg_id: str) -> float | None:
    """Receipt time from a queue id (``new_message_id``: microseconds in hex, then 10 random
    hex digits), so the oldest message's age needs no file reads."""
    try:
        return int(msg_id[:-10], 16) / 1e6
    except ValueError:
        return None


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _at(entry: QueueEntry, domain: str | None) -> list[Recipient]:
    """Pending recipients, those at ``domain`` only when one is given."""
    want = domain.lower().rstrip(".") if domain else None
    return [r for r in entry.pending() if want is None or _domain(r.address) == want]


def _held(spool: Spool, msg_id: str, suffix: str = ".msg") -> Path:
    return spool.root / HOLD / f"{msg_id}{suffix}"


def _state_file(spool: Spool, state: str, msg_id: str) -> Path:
    return _held(spool, msg_id, ".json") if state == HOLD \
        else spool.root / state / f"{msg_id}.json"


def _queue_file(spool: Spool, state: str, msg_id: str) -> Path:
    return _held(spool, msg_id) if state == HOLD else spool.queue_path(msg_id)


def state_ids(spool: Spool, state: str) -> list[str]:
    """Ids in one state, sorted by arrival (ids sort by time)."""
    try:
        if state == HOLD:
            return sorted(n[:-4] for n in os.listdir(spool.root / HOLD) if n.endswith(".msg"))
        return sorted(spool.ids(state))
    except FileNotFoundError:
        return []


def state_of(spool: Spool, msg_id: str) -> str | None:
    if _held(spool, msg_id).exists():
        return HOLD
    if not spool.queue_path(msg_id).exists():
        return None
    return next((s for s in ("active", "deferred")
                 if (spool.root / s / f"{msg_id}.json").exists()), "incoming")


def _read(spool: Spool, state: str, msg_id: str, want_body: bool = False
          ) -> tuple[QueueEntry, bytes]:
    """Envelope as delivery last saved it (state file), else as received; raises OSError
    or ValueError (damaged) for a message that vanished or cannot be read."""
    if state != HOLD:
        entry = spool.read_entry(state, msg_id)
        return entry, spool.read_body(msg_id) if want_body else b""
    entry, body = spool.read_queue_file(_held(spool, msg_id), msg_id)
    with contextlib.suppress(FileNotFoundError):
        entry = QueueEntry.from_json(_held(spool, msg_id, ".json").read_bytes())
    return entry, body


def find(spool: Spool, msg_id: str, state: str | None = None) -> Queued | None:
    state = state or state_of(spool, msg_id)
    if state is None:
        return None
    try:
        entry, _ = _read(spool, state, msg_id)
        size = _queue_file(spool, state, msg_id).stat().st_size
    except (OSError, ValueError):
        return None  # moved on between two looks, or damaged: recovery sets those aside
    return Queued(state, entry, size)


def read_headers(spool: Spool, msg_id: str) -> str:
    state = state_of(spool, msg_id)
    try:
        body = _read(spool, state, msg_id, want_body=True)[1] if state else b""
    except (OSError, ValueError):
        body = b""
    end = body.find(b"\r\n\r\n")
    return (body if end < 0 else body[:end]).decode("utf-8", "replace")


def list_queue(spool: Spool, states: tuple[str, ...] = QUEUE_STATES,
               domain: str | None = None) -> list[Queued]:
    out = []
    for state in states:
        for msg_id in state_ids(spool, state):
            item = find(spool, msg_id, state)
            if item is not None and (domain is None or _at(item.entry, domain)):
                out.append(item)
    out.sort(key=lambda q: q.entry.id)
    return out


def _valid_id(msg_id: str) -> str:
    text = msg_id.strip().upper()
    if not text or not all(c in "0123456789ABCDEF" for c in text):
        raise UserError(f"{msg_id!r} is not a queue id (see connectwiz queue list)")
    return text


# -- changes -----------------------------------------------------------------------------------

# Which states each operation looks in when no id is given.
_SCOPE = {"flush": ("deferred",), "hold": ("incoming", "deferred"), "release": (HOLD,),
          "delete": ("incoming", "deferred", HOLD)}


@dataclass(slots=True)
class Changes:
    results: list[dict[str, str]] = field(default_factory=list)
    # id -> retry after N seconds (0: now) or None (held or deleted), for the relay's settle
    settle: dict[str, float | None] = field(default_factory=dict)
    dirty: set[Path] = field(default_factory=set)  # folders to fsync before reporting
    back: dict[str, str] = field(default_factory=dict)  # owned id -> state to return it to

    def add(self, msg_id: str, result: str) -> None:
        self.results.append({"id": msg_id, "result": result})


def targets(spool: Spool, request: dict[str, Any]) -> list[str]:
    """The ids a request names, or those its --domain (or nothing: all) selects."""
    op = request.get("op")
    if op not in _SCOPE:
        raise UserError(f"unknown queue operation {op!r}")
    ids = [_valid_id(str(i)) for i in request.get("ids") or []]
    if ids:
        return ids
    return [q.entry.id for q in list_queue(spool, _SCOPE[op], request.get("domain") or None)]


def restore(spool: Spool, msg_id: str) -> float | None:
    """When an unchanged message is due again."""
    state = state_of(spool, msg_id)
    if state == "incoming":
        return 0.0
    if state == "deferred":
        try:
            return max(spool.read_entry("deferred", msg_id).next_attempt - time.time(), 0.0)
        except (OSError, ValueError):
            return 0.0  # let a worker find out (and quarantine it if damaged)
    return None


def _move_queue_file(spool: Spool, msg_id: str, src: str, dst: str, changes: Changes) -> None:
    """Move a message between the queue and hold. Its state file is hard-linked into place
    first (state files are never changed in place, only replaced, so the link is a copy
    without a write), then the queue file's rename commits, then the old name goes.
    Orphans are harmless: recovery removes state files without a queue file, and hold/
    ignores them. The folders are fsync'd once per batch (``apply``)."""
    old_state = _state_file(spool, src, msg_id)
    new_state = _state_file(spool, dst, msg_id)
    new_state.unlink(missing_ok=True)  # an orphan from an earlier crash
    with contextlib.suppress(FileNotFoundError):
        os.link(old_state, new_state)
    os.replace(_queue_file(spool, src, msg_id), _queue_file(spool, dst, msg_id))
    old_state.unlink(missing_ok=True)
    changes.dirty.update({new_state.parent, old_state.parent,
                          _queue_file(spool, src, msg_id).parent,
                          _queue_file(spool, dst, msg_id).parent})


def _own(spool: Spool, msg_id: str, state: str) -> bool:
    """Take a waiting message the way a delivery worker claims it, so that no worker — of
    this relay or, with several relay processes on the spool, of another — claims it while
    it changes: its state file is renamed into ``active/`` (of two renames of one file only
    one succeeds), or, without a state file, ``active/<id>.json`` is created exclusively."""
    active = _state_file(spool, "active", msg_id)
    try:
        os.replace(_state_file(spool, state, msg_id), active)
        return True
    except FileNotFoundError:
        if state != "incoming":
            return False
    try:
        entry = spool.read_entry("incoming", msg_id)
    except (OSError, ValueError):
        return False
    return spool.create_exclusive(active, entry.to_json())


def _give_back(spool: Spool, msg_id: str, state: str, changes: Changes) -> None:
    """Return an owned message to ``state`` unless the change consumed it."""
    try:
        os.replace(_state_file(spool, "active", msg_id), _state_file(spool, state, msg_id))
    except FileNotFoundError:
        return
    changes.dirty.update({spool.root / "active", spool.root / state})


def _flush(spool: Spool, msg_id: str, state: str, changes: Changes, *, origin: str,
           **_: Any) -> None:
    if origin == "deferred":
        changes.back[msg_id] = "incoming"
        changes.add(msg_id, "flushed")
        changes.settle[msg_id] = 0.0
    elif origin == HOLD:
        changes.add(msg_id, "skipped: on hold (release it first)")
    else:
        changes.add(msg_id, "already waiting for delivery")


def _hold(spool: Spool, msg_id: str, state: str, changes: Changes, **_: Any) -> None:
    if state == HOLD:
        changes.add(msg_id, "already on hold")
        return
    (spool.root / HOLD).mkdir(exist_ok=True)
    _move_queue_file(spool, msg_id, state, HOLD, changes)
    changes.add(msg_id, "held")
    changes.settle[msg_id] = None


def _release(spool: Spool, msg_id: str, state: str, changes: Changes, **_: Any) -> None:
    if state != HOLD:
        changes.add(msg_id, f"not on hold ({state})")
        return
    _move_queue_file(spool, msg_id, HOLD, "incoming", changes)
    changes.add(msg_id, "released")
    changes.settle[msg_id] = 0.0


def _delete(spool: Spool, msg_id: str, state: str, changes: Changes, *, domain: str | None,
            silent: bool, hostname: str, **_: Any) -> None:
    """Remove the message (or, with ``domain``, its recipients there); the sender gets a
    bounce unless ``silent`` (a bounce never gets one). The change commits first — the
    queue file's rename into ``tmp/`` (which recovery empties), or the new state file —
    and only then is the bounce queued: a crash in between loses the bounce, never makes
    one for a message that is still delivered."""
    entry, body = _read(spool, state, msg_id, want_body=True)
    gone = _at(entry, domain)
    if not gone:
        changes.add(msg_id, f"skipped: no pending recipient at {domain}")
        return
    for rcpt in gone:
        rcpt.status, rcpt.detail = "bounced", DELETED_DETAIL
    rest = entry.pending()
    claimed = spool.root / "tmp" / f"{msg_id}.deleted"
    if rest:  # recipients at other domains stay queued as they were
        spool.write_atomic(_state_file(spool, state, msg_id), entry.to_json())
    else:
        os.replace(_queue_file(spool, state, msg_id), claimed)
        sync_dir(_queue_file(spool, state, msg_id).parent)
    bounce = None
    if not silent and entry.mail_from and not entry.is_bounce:
        bounce = _queue_bounce(spool, entry, gone, body, hostname)
        changes.settle[bounce] = 0.0
    MessageLog(spool.root).append(msg_id, "deleted", recipients=[r.address for r in gone],
                                  dsn=bounce or "none", reason=DELETED_DETAIL)
    suffix = f", bounce {bounce}" if bounce else ""
    if rest:
        changes.add(msg_id, f"deleted {len(gone)} recipient(s){suffix}")
        return
    claimed.unlink()
    _state_file(spool, state, msg_id).unlink(missing_ok=True)
    changes.add(msg_id, f"deleted{suffix}")
    changes.settle[msg_id] = None


def _queue_bounce(spool: Spool, entry: QueueEntry, gone: list[Recipient], original: bytes,
                  hostname: str) -> str:
    dsn = build_dsn(entry, gone, original, hostname, expired=False)
    bounce = QueueEntry(id=new_message_id(), mail_from="", recipients=[Recipient(entry.mail_from)],
                        received_at=time.time(), is_bounce=True)
    spool.accept(bounce, dsn)
    MessageLog(spool.root).append(
        bounce.id, "received", client_ip="local", helo=None, mail_from="",
        recipients=[entry.mail_from], tls_version=None, tls_cipher=None, size=len(dsn),
        result="accepted", receipt_option=None,
        policy=f"delivery status notification for {entry.id} (deleted)")
    return bounce.id


_OPS = {"flush": _flush, "hold": _hold, "release": _release, "delete": _delete}


BUSY = "busy: being delivered or about to be, try again in a moment"


def apply(spool: Spool, request: dict[str, Any], ids: list[str], hostname: str) -> Changes:
    """Make ``request``'s change to ``ids`` (taken from the running relay's scheduler, or
    under the spool lock). A waiting message is owned (``_own``) while it changes, so a
    delivery worker cannot claim it meanwhile. Blocking file I/O. Every id gets a result
    and a settle entry."""
    op = _OPS[request["op"]]
    changes = Changes()
    for msg_id in ids:
        state = state_of(spool, msg_id)
        owned = False
        try:
            if state is None:
                changes.add(msg_id, "not in the queue")
            elif state == "active" or (state != HOLD and op is not _release
                                       and not (owned := _own(spool, msg_id, state))):
                changes.add(msg_id, BUSY)
            else:
                op(spool, msg_id, "active" if owned else state, changes, origin=state,
                   domain=request.get("domain") or None, silent=bool(request.get("silent")),
                   hostname=hostname)
        except (OSError, ValueError) as exc:  # one message's trouble must not stop the rest
            changes.add(msg_id, f"failed: {exc}")
        finally:
            if owned:
                _give_back(spool, msg_id, changes.back.get(msg_id, state or "incoming"),
                           changes)
        if msg_id not in changes.settle:
            changes.settle[msg_id] = restore(spool, msg_id)
    # One fsync per folder for the whole batch: a crash before this returns may undo part
    # of it (a message is then where it was), never lose a message.
    for folder in changes.dirty:
        sync_dir(folder)
    return changes
