"""Who makes ``connectwiz queue``'s changes (relay/queuectl.py): the running relay, or the
command itself when no relay runs.

While the relay runs, the command sends one JSON request over the control socket
(``SPOOL/control.sock``, 0600). The relay first takes each message it names from its
scheduler (``take``: refused while a worker has it or it waits for one; a taken message
gets no timer and no rescan), makes the change with queuectl's functions, then hands the
message back (``settle``: retry now, at its next attempt, or never when held or deleted).
A hold or delete of a message a worker has is made when the worker lets go, as Postfix
applies postsuper to a message in its active queue once the delivery agent is done. When
no relay runs, the command takes the spool lock itself and makes the same changes; the
next start picks them up.

With several relay processes (``--workers``), worker 0 answers for all: a change claims
its message in the spool (queuectl's ``_own``: a rename into ``active/``), so another
worker's timer or queue finds it taken or moved and lets go. A change that waits for a
delivery is written to ``SPOOL/control/``, where the worker delivering the message, in
whichever process, finds it when it lets go (``ControlServer.released``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from connectwiz.errors import UserError
from connectwiz.relay.queuectl import BUSY, apply, restore, targets
from connectwiz.relay.spool import Spool

SOCKET_NAME = "control.sock"
WAITING = "control"  # changes waiting for a delivery to end, one file per message
_MAX_REQUEST = 1 << 20
_WAIT_FOR_WORKER = ("hold", "delete")
_RETRY_WAITING_S = 2.0
_WATCH_S = 0.25

Take = Callable[[str], bool]
Settle = Callable[[str, "float | None"], None]


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
    from the relay's scheduler before it is changed and settled back afterwards.

    A hold or delete that waits for a delivery is kept in ``SPOOL/control/ID.json``, so
    that the worker that lets go of the message — whichever relay process it is in — makes
    the change at once. Not fsync'd: a crash may lose it, as it loses a request in flight;
    one that survives a restart is made then."""

    def __init__(self, spool: Spool, hostname: str, take: Take, settle: Settle,
                 log: Callable[..., None]) -> None:
        self.spool = spool
        self.hostname = hostname
        self.take = take
        self.settle = settle
        self.log = log
        self.waiting_dir = spool.root / WAITING
        self._lock = asyncio.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._waiting: set[str] = set()  # ids in waiting_dir, as last looked (or promised)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, listen: bool = True) -> None:
        """Watch for waiting changes; ``listen``: also answer on the socket (one relay
        process does)."""
        self._spawn(self._watch_waiting(leads=listen))
        if not listen:
            return
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
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            (self.spool.root / SOCKET_NAME).unlink(missing_ok=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)  # the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            try:
                reply = await self._answer(line)
            except Exception as exc:  # a bug must not end the relay; the admin gets a line
                self.log("error", reason=f"queue control: {type(exc).__name__}: {exc}")
                reply = {"ok": False, "error": f"the relay failed: {type(exc).__name__}: {exc}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError, ValueError):
            pass  # the command went away (what it asked for is done and logged) or sent junk
        finally:
            writer.close()

    async def _answer(self, line: bytes, retry: bool = False) -> dict[str, Any]:
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
                    msg_id: await asyncio.to_thread(restore, self.spool, msg_id)
                    for msg_id in taken}
                for msg_id, delay in settle.items():
                    self.settle(msg_id, delay)
        done = {r["id"]: r["result"] for r in changes.results}
        results = []
        for msg_id in ids:
            result = done.get(msg_id, BUSY)
            if result == BUSY and request["op"] in _WAIT_FOR_WORKER:
                await asyncio.to_thread(self._promise, msg_id, {**request, "ids": [msg_id]})
                self._waiting.add(msg_id)
                verb = "held" if request["op"] == "hold" else "deleted"
                result = f"will be {verb} when its current delivery attempt ends"
            results.append({"id": msg_id, "result": result})
        for result in results:
            if not (retry and result["result"].startswith("will be")):  # said once is enough
                self.log("queue-control", op=request.get("op"), id=result["id"],
                         result=result["result"])
        return {"ok": True, "results": results, "relay": "running"}

    def _promise(self, msg_id: str, request: dict[str, Any]) -> None:
        self.waiting_dir.mkdir(exist_ok=True)
        self.spool.write_atomic(self.waiting_dir / f"{msg_id}.json",
                                json.dumps(request).encode(), durable=False)

    def _claim(self, msg_id: str) -> dict[str, Any] | None:
        """The waiting change for ``msg_id``, taken by this process (a rename: of several
        processes trying at once, one gets it); None when there is none."""
        claimed = self.spool.root / "tmp" / f"{msg_id}.control.{os.getpid()}"
        try:
            os.replace(self.waiting_dir / f"{msg_id}.json", claimed)
        except FileNotFoundError:
            return None
        try:
            request = json.loads(claimed.read_bytes())
        except (OSError, ValueError):
            return None
        finally:
            claimed.unlink(missing_ok=True)
        return request if isinstance(request, dict) else None

    async def _apply_waiting(self, msg_id: str) -> None:
        self._waiting.discard(msg_id)
        request = await asyncio.to_thread(self._claim, msg_id)
        if request is not None:
            await self._answer(json.dumps(request).encode(), retry=True)

    def released(self, msg_id: str) -> None:
        """A delivery worker of this process is done with ``msg_id`` (delivered, deferred
        or bounced): make the change that waited for it."""
        if msg_id in self._waiting:
            self._spawn(self._apply_waiting(msg_id))

    async def _watch_waiting(self, leads: bool) -> None:
        """Learn which changes wait (another process may have promised them, and
        ``released`` must not read the disk on the loop); the leading process also tries
        them now and then, should the worker that had the message be gone."""
        last_try = time.monotonic()
        while True:
            await asyncio.sleep(_WATCH_S)
            try:
                names = await asyncio.to_thread(os.listdir, self.waiting_dir)
            except OSError:
                names = []
            self._waiting = {n[:-5] for n in names if n.endswith(".json")}
            if leads and time.monotonic() - last_try >= _RETRY_WAITING_S:
                last_try = time.monotonic()
                for msg_id in list(self._waiting):
                    await self._apply_waiting(msg_id)


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
                        f"{SOCKET_NAME}: it is starting or stopping (try again)") from None
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
