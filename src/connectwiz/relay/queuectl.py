"""Queue control (``connectwiz queue``): list, show, flush, hold, release, delete.

While the relay runs, changes are made *by the relay*: the command sends one JSON request
over the control socket (``SPOOL/control.sock``). The relay first takes each message it
names (``take``: refused — "busy" — while a worker has it or it waits for one; a taken
message gets no timer and no rescan), makes the change with the functions below, then
hands the message back to its scheduler (``settle``: retry now, at its next attempt, or
never when held or deleted). So the command and the delivery workers never work on one
message at the same time. When no relay runs, the command takes the spool lock itself and
makes the same changes; the next start picks them up. Listing and showing only read.

This module is the one place besides ``spool.py`` that knows the spool's files. On hold
means: the queue file is moved to ``hold/<id>.msg`` (with its progress, if any, in
``hold/<id>.json``), where neither recovery nor the rescan looks — as Postfix moves a
held message into its hold queue. Every change has one atomic rename as its commit point;
files written before it are ignored or removed by recovery if a crash comes first.
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
from connectwiz.relay.spool import _fsync_dir as sync_dir

HOLD = "hold"
QUEUE_STATES = ("incoming", "active", "deferred", HOLD)
SOCKET_NAME = "control.sock"
DELETED_DETAIL = "deleted from the queue by the mail administrator"
_MAX_REQUEST = 1 << 20
DONE = ("flushed", "held", "released", "deleted", "already", "will be")
# A hold or delete of a message a worker has is made when the worker lets go, as Postfix
# applies postsuper to a message in its active queue once the delivery agent is done.
_WAIT_FOR_WORKER = ("hold", "delete")

Take = Callable[[str], bool]
Settle = Callable[[str, "float | None"], None]


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


def _restore(spool: Spool, msg_id: str) -> float | None:
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


def _flush(spool: Spool, msg_id: str, state: str, changes: Changes, **_: Any) -> None:
    if state == "deferred":
        os.replace(_state_file(spool, "deferred", msg_id), _state_file(spool, "incoming", msg_id))
        changes.dirty.update({spool.root / "deferred", spool.root / "incoming"})
        changes.add(msg_id, "flushed")
        changes.settle[msg_id] = 0.0
    elif state == HOLD:
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
            silent: bool, hostname: str) -> None:
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


def apply(spool: Spool, request: dict[str, Any], ids: list[str], hostname: str) -> Changes:
    """Make ``request``'s change to ``ids``, which the caller has taken (or holds the spool
    lock). Blocking file I/O. Every id gets a result and a settle entry."""
    op = _OPS[request["op"]]
    changes = Changes()
    for msg_id in ids:
        state = state_of(spool, msg_id)
        try:
            if state is None:
                changes.add(msg_id, "not in the queue")
            elif state == "active":
                changes.add(msg_id, "busy: being delivered right now, try again in a moment")
            else:
                op(spool, msg_id, state, changes, domain=request.get("domain") or None,
                   silent=bool(request.get("silent")), hostname=hostname)
        except (OSError, ValueError) as exc:  # one message's trouble must not stop the rest
            changes.add(msg_id, f"failed: {exc}")
        if msg_id not in changes.settle:
            changes.settle[msg_id] = _restore(spool, msg_id)
    # One fsync per folder for the whole batch: a crash before this returns may undo part
    # of it (a message is then where it was), never lose a message.
    for folder in changes.dirty:
        sync_dir(folder)
    return changes


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
    """The running relay's end of the socket: one request at a time; each message is taken
    from the relay's scheduler before it is changed and settled back afterwards."""

    def __init__(self, spool: Spool, hostname: str, take: Take, settle: Settle,
                 log: Callable[..., None]) -> None:
        self.spool = spool
        self.hostname = hostname
        self.take = take
        self.settle = settle
        self.log = log
        self._lock = asyncio.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._waiting: dict[str, dict[str, Any]] = {}  # id -> request, until a worker is done
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        path = self.spool.root / SOCKET_NAME
        path.unlink(missing_ok=True)  # left by a relay that was killed; we hold the lock now
        try:
            with _socket_path(self.spool.root) as where:
                self._server = await asyncio.start_unix_server(self._handle, where)
            path.chmod(0o600)
        except OSError as exc:
            raise UserError(f"cannot open the queue control socket {path}: "
                            f"{exc.strerror or exc}") from None

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
            pass  # the command went away (what it asked for is done and logged) or sent junk
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
                ids = list(dict.fromkeys(await asyncio.to_thread(targets, self.spool, request)))
            except UserError as exc:
                return {"ok": False, "error": str(exc)}
            except OSError as exc:
                return {"ok": False, "error": f"spool: {exc}"}
            taken = [msg_id for msg_id in ids if self.take(msg_id)]
            changes = None
            try:
                changes = await asyncio.to_thread(apply, self.spool, request, taken,
                                                  self.hostname)
            finally:
                settle = changes.settle if changes else {
                    msg_id: await asyncio.to_thread(_restore, self.spool, msg_id)
                    for msg_id in taken}
                for msg_id, delay in settle.items():
                    self.settle(msg_id, delay)
        done = {r["id"]: r["result"] for r in changes.results}
        results = []
        for msg_id in ids:
            result = done.get(msg_id)
            if result is None and request["op"] in _WAIT_FOR_WORKER:
                self._waiting[msg_id] = {**request, "ids": [msg_id]}
                verb = "held" if request["op"] == "hold" else "deleted"
                result = f"will be {verb} when its current delivery attempt ends"
            results.append({"id": msg_id, "result": result or
                            "busy: being delivered or about to be, try again in a moment"})
        for result in results:
            self.log("queue-control", op=request.get("op"), id=result["id"],
                     result=result["result"])
        return {"ok": True, "results": results, "relay": "running"}

    def released(self, msg_id: str) -> None:
        """A worker is done with ``msg_id`` (delivered, deferred or bounced): make the
        change that waited for it."""
        request = self._waiting.pop(msg_id, None)
        if request is None:
            return
        task = asyncio.create_task(self._answer(json.dumps(request).encode()))
        self._tasks.add(task)  # the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)


def request(spool_root: Path, req: dict[str, Any], hostname: str) -> dict[str, Any]:
    """Send ``req`` to the relay running on this spool, or, when none runs, apply it here
    under the spool lock. The reply says which (``relay``: running | stopped)."""
    spool = Spool(spool_root)
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
        changes = apply(spool, req, list(dict.fromkeys(targets(spool, req))), hostname)
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
