"""Queue control (``connectwiz queue``): list, show, flush, hold, release, delete.

Every change to the spool made here is an atomic rename, and only of entries no worker
holds: an entry in ``active/`` is being delivered and is answered "busy", never touched.
While the relay runs, changes are made *by the relay*: the command sends one JSON request
over the control socket (``SPOOL/control.sock``), the relay applies it with the same
functions and then updates its timers, so a held message is not retried and a flushed one
is tried at once. When no relay runs, the command takes the spool lock itself and applies
the change directly; the next start picks it up. Listing and showing only read.

This module is the one place that knows the queue's file layout besides ``spool.py``.
``hold/<id>.json`` is a state the relay never claims from: held entries wait for a release.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectwiz.errors import UserError
from connectwiz.relay.dsn import build_dsn
from connectwiz.relay.msglog import MessageLog
from connectwiz.relay.spool import QueueEntry, Recipient, Spool, new_message_id

HOLD = "hold"
QUEUE_STATES = ("incoming", "active", "deferred", HOLD)
SOCKET_NAME = "control.sock"
DELETED_DETAIL = "deleted from the queue by the mail administrator"
_MAX_REQUEST = 1 << 20

# What a change means for the running relay's scheduler: retry after N seconds (0: now),
# or None: forget any timer (held or deleted).
Effect = tuple[str, float | None]


@dataclass(slots=True)
class Queued:
    state: str
    entry: QueueEntry
    size: int  # bytes of the stored message

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


def _path(spool: Spool, state: str, msg_id: str) -> Path:
    return spool.root / state / f"{msg_id}.json"


def state_ids(spool: Spool, state: str) -> list[str]:
    """Ids in one state, sorted by arrival (ids sort by time)."""
    try:
        names = os.listdir(spool.root / state)
    except FileNotFoundError:
        return []
    return sorted(n[:-5] for n in names if n.endswith(".json"))


def find(spool: Spool, msg_id: str) -> Queued | None:
    for state in QUEUE_STATES:
        try:
            entry = QueueEntry.from_json(_path(spool, state, msg_id).read_bytes())
        except FileNotFoundError:
            continue  # not here, or moved on between two looks
        except (ValueError, TypeError, KeyError):
            continue  # damaged: recovery quarantines it, it is not ours to show
        try:
            size = spool.body_path(msg_id).stat().st_size
        except FileNotFoundError:
            size = 0
        return Queued(state, entry, size)
    return None


def list_queue(spool: Spool, states: tuple[str, ...] = QUEUE_STATES,
               domain: str | None = None) -> list[Queued]:
    out = []
    for state in states:
        for msg_id in state_ids(spool, state):
            item = find(spool, msg_id)
            if item is not None and item.state == state and (domain is None
                                                             or _at(item.entry, domain)):
                out.append(item)
    out.sort(key=lambda q: q.entry.id)
    return out


def _valid_id(msg_id: str) -> str:
    text = msg_id.strip().upper()
    if not text or not all(c in "0123456789ABCDEF" for c in text):
        raise UserError(f"{msg_id!r} is not a queue id (see connectwiz queue list)")
    return text


# -- changes: each returns (per-id results, effects for a running relay) ---------------------


@dataclass(slots=True)
class Changes:
    results: list[dict[str, str]] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)

    def add(self, msg_id: str, result: str) -> None:
        self.results.append({"id": msg_id, "result": result})

    def effect(self, msg_id: str, delay: float | None) -> None:
        self.effects.append((msg_id, delay))


def _rename(spool: Spool, msg_id: str, src: str, dst: str) -> bool:
    """Atomic move between states; False when the entry is no longer in ``src`` (a worker
    claimed it first)."""
    (spool.root / dst).mkdir(exist_ok=True)
    try:
        spool.move(msg_id, src, dst)
    except FileNotFoundError:
        return False
    return True


def _targets(spool: Spool, ids: list[str], domain: str | None, states: tuple[str, ...]
             ) -> list[str]:
    if ids:
        return [_valid_id(i) for i in ids]
    return [q.entry.id for q in list_queue(spool, states, domain)]


def _busy_or_missing(changes: Changes, msg_id: str, state: str | None) -> None:
    if state is None:
        changes.add(msg_id, "not in the queue")
    elif state == "active":
        changes.add(msg_id, "busy: being delivered right now, try again in a moment")
    else:
        changes.add(msg_id, f"skipped: {state}")


def _state(spool: Spool, msg_id: str) -> str | None:
    return next((s for s in QUEUE_STATES if _path(spool, s, msg_id).exists()), None)


def flush(spool: Spool, ids: list[str], domain: str | None) -> Changes:
    """Deferred messages (all, these ids, or those with recipients at ``domain``): try now."""
    changes = Changes()
    for msg_id in _targets(spool, ids, domain, ("deferred",)):
        state = _state(spool, msg_id)
        if state == "deferred" and _rename(spool, msg_id, "deferred", "incoming"):
            changes.add(msg_id, "flushed")
            changes.effect(msg_id, 0.0)
        elif state == HOLD:
            changes.add(msg_id, "skipped: on hold (release it first)")
        elif state == "incoming":
            changes.add(msg_id, "already waiting for delivery")
        else:
            _busy_or_missing(changes, msg_id, _state(spool, msg_id))
    return changes


def hold(spool: Spool, ids: list[str], domain: str | None) -> Changes:
    changes = Changes()
    for msg_id in _targets(spool, ids, domain, ("incoming", "deferred")):
        state = _state(spool, msg_id)
        if state in ("incoming", "deferred") and _rename(spool, msg_id, state, HOLD):
            changes.add(msg_id, "held")
            changes.effect(msg_id, None)
        elif state == HOLD:
            changes.add(msg_id, "already on hold")
        else:
            _busy_or_missing(changes, msg_id, _state(spool, msg_id))
    return changes


def release(spool: Spool, ids: list[str], domain: str | None) -> Changes:
    """Held messages go back to the queue and are tried at once."""
    changes = Changes()
    for msg_id in _targets(spool, ids, domain, (HOLD,)):
        if _rename(spool, msg_id, HOLD, "incoming"):
            changes.add(msg_id, "released")
            changes.effect(msg_id, 0.0)
        else:
            state = _state(spool, msg_id)
            changes.add(msg_id, f"not on hold ({state})" if state else "not in the queue")
    return changes


def delete(spool: Spool, ids: list[str], domain: str | None, silent: bool,
           hostname: str) -> Changes:
    """Remove messages (or, with ``domain``, only their recipients at that domain); their
    senders get a bounce unless ``silent`` (a bounce never gets one: no bounce for a bounce).

    The entry is first claimed by renaming it into ``tmp/`` — a worker that claims it at the
    same moment wins or loses atomically — and a crash before the end leaves it deleted
    (start-up recovery clears ``tmp/`` and removes the orphaned body)."""
    changes = Changes()
    msglog = MessageLog(spool.root)
    for msg_id in _targets(spool, ids, domain, ("incoming", "deferred", HOLD)):
        state = _state(spool, msg_id)
        claimed = spool.root / "tmp" / f"{msg_id}.json.deleting"
        if state not in ("incoming", "deferred", HOLD):
            _busy_or_missing(changes, msg_id, state)
            continue
        try:
            os.replace(_path(spool, state, msg_id), claimed)
        except FileNotFoundError:
            _busy_or_missing(changes, msg_id, _state(spool, msg_id))
            continue
        entry = QueueEntry.from_json(claimed.read_bytes())
        gone = _at(entry, domain)
        if not gone:
            os.replace(claimed, _path(spool, state, msg_id))
            changes.add(msg_id, f"skipped: no pending recipient at {domain}")
            continue
        for rcpt in gone:
            rcpt.status, rcpt.detail = "failed", DELETED_DETAIL
        bounce = None
        if not silent and entry.mail_from and not entry.is_bounce:
            bounce = _queue_bounce(spool, msglog, entry, gone, hostname)
            changes.effect(bounce, 0.0)
        for rcpt in gone:
            rcpt.status = "bounced"
        msglog.append(msg_id, "deleted", recipients=[r.address for r in gone],
                      dsn=bounce or "none", reason=DELETED_DETAIL)
        if entry.pending():  # recipients at other domains stay queued as they were
            spool.write_atomic(_path(spool, state, msg_id), entry.to_json())
            claimed.unlink()
            delay = None if state == HOLD else 0.0 if state == "incoming" \
                else max(entry.next_attempt - time.time(), 0.0)
            changes.add(msg_id, f"deleted {len(gone)} recipient(s)"
                        + (f", bounce {bounce}" if bounce else ""))
            changes.effect(msg_id, delay)
            continue
        claimed.unlink()
        spool.body_path(msg_id).unlink(missing_ok=True)
        changes.add(msg_id, "deleted" + (f", bounce {bounce}" if bounce else ""))
        changes.effect(msg_id, None)
    return changes


def _queue_bounce(spool: Spool, msglog: MessageLog, entry: QueueEntry, gone: list[Recipient],
                  hostname: str) -> str:
    try:
        original = spool.read_body(entry.id)
    except FileNotFoundError:
        original = b"\r\n"
    dsn = build_dsn(entry, gone, original, hostname, expired=False)
    bounce = QueueEntry(id=new_message_id(), mail_from="", recipients=[Recipient(entry.mail_from)],
                        received_at=time.time(), is_bounce=True)
    spool.accept(bounce, dsn)
    msglog.append(bounce.id, "received", client_ip="local", helo=None, mail_from="",
                  recipients=[entry.mail_from], tls_version=None, tls_cipher=None,
                  size=len(dsn), result="accepted", receipt_option=None,
                  policy=f"delivery status notification for {entry.id} (deleted)")
    return bounce.id


def apply(spool: Spool, request: dict[str, Any], hostname: str) -> Changes:
    """One control request, as the CLI sends it; blocking file I/O."""
    op = request.get("op")
    ids = [str(i) for i in request.get("ids") or []]
    domain = request.get("domain") or None
    if op == "flush":
        return flush(spool, ids, domain)
    if op == "hold":
        return hold(spool, ids, domain)
    if op == "release":
        return release(spool, ids, domain)
    if op == "delete":
        return delete(spool, ids, domain, bool(request.get("silent")), hostname)
    raise UserError(f"unknown queue operation {op!r}")


# -- the control socket ----------------------------------------------------------------------


@contextlib.contextmanager
def _socket_path(root: Path) -> Iterator[str]:
    """A path for ``root/control.sock`` that fits AF_UNIX's ~107 bytes: deep spools are
    reached through a descriptor of the folder (/proc/self/fd/N/...)."""
    path = str(root / SOCKET_NAME)
    if len(path.encode()) < 100:
        yield path
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_NAME}"
    finally:
        os.close(fd)


class ControlServer:
    """The running relay's end: applies requests one at a time, then tells the relay's
    scheduler (``effect``) what changed."""

    def __init__(self, spool: Spool, hostname: str, effect: Callable[[str, float | None], None],
                 log: Callable[..., None]) -> None:
        self.spool = spool
        self.hostname = hostname
        self.effect = effect
        self.log = log
        self._lock = asyncio.Lock()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = self.spool.root / SOCKET_NAME
        path.unlink(missing_ok=True)  # left by a relay that was killed; we hold the lock now
        with _socket_path(self.spool.root) as where:
            self._server = await asyncio.start_unix_server(self._handle, where)
        path.chmod(0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            (self.spool.root / SOCKET_NAME).unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            reply = await self._answer(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError, ValueError):
            pass  # the CLI went away; nothing was changed for it, or it is already logged
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line[:_MAX_REQUEST])
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            return {"ok": False, "error": "malformed control request"}
        async with self._lock:
            try:
                changes = await asyncio.to_thread(apply, self.spool, request, self.hostname)
            except UserError as exc:
                return {"ok": False, "error": str(exc)}
            except OSError as exc:
                return {"ok": False, "error": f"spool: {exc}"}
        for msg_id, delay in changes.effects:
            self.effect(msg_id, delay)
        for result in changes.results:
            self.log("queue-control", op=request.get("op"), id=result["id"],
                     result=result["result"])
        return {"ok": True, "results": changes.results, "relay": "running"}


def request(spool_root: Path, req: dict[str, Any], hostname: str) -> dict[str, Any]:
    """Send ``req`` to the relay running on this spool, or, when none runs, apply it here
    under the spool lock. The reply says which (``relay``: running | stopped)."""
    spool = Spool(spool_root)
    if not (spool_root / "messages").is_dir():
        raise UserError(f"{spool_root}: not a relay spool (no messages/ directory)")
    reply = _ask_relay(spool_root, req)
    if reply is not None:
        return reply
    owner = spool_root.stat().st_uid
    if owner != os.geteuid():
        # Files we wrote would belong to us, and the relay's user could not move them later.
        raise UserError(f"the relay is not running and {spool_root} belongs to uid {owner}: "
                        "run this as the relay's user (e.g. sudo -u connectwiz)")
    try:
        spool.lock()
    except UserError:
        raise UserError(f"the relay on {spool_root} holds the spool but does not answer on "
                        f"{SOCKET_NAME} (starting or stopping?): try again") from None
    try:
        changes = apply(spool, req, hostname)
    finally:
        spool.unlock()
    return {"ok": True, "results": changes.results, "relay": "stopped"}


def _ask_relay(spool_root: Path, req: dict[str, Any]) -> dict[str, Any] | None:
    if not (spool_root / SOCKET_NAME).exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)  # a large queue takes a while; the relay answers when done
    try:
        with _socket_path(spool_root) as where:
            try:
                sock.connect(where)
            except (ConnectionRefusedError, FileNotFoundError):
                return None  # a socket left by a relay that is gone
            except PermissionError:
                raise UserError(f"{spool_root / SOCKET_NAME}: permission denied (run as the "
                                "relay's user, e.g. sudo -u connectwiz)") from None
        sock.sendall(json.dumps(req).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise UserError("the relay did not answer within 60 s") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise UserError("the relay closed the control connection without an answer") from None
    if not reply.get("ok"):
        raise UserError(str(reply.get("error") or "the relay refused the request"))
    return dict(reply)
