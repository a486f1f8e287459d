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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from connectwiz.errors import UserError
from connectwiz.relay.queuectl import BUSY, apply, restore, targets
from connectwiz.relay.spool import Spool

SOCKET_NAME = "control.sock"
_MAX_REQUEST = 1 << 20
_WAIT_FOR_WORKER = ("hold", "delete")
_RETRY_WAITING_S = 2.0

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
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        path = self.spool.root / SOCKET_NAME
        path.unlink(missing_ok=True)  # left by a relay that was killed; we hold the lock now
        try:
            with _socket_path(self.spool.root) as where:
                self._server = await asyncio.start_unix_server(self._handle, where)
            path.chmod(0o600)
            retry = asyncio.create_task(self._retry_waiting())
            self._tasks.add(retry)
        except OSError as exc:
            raise UserError(f"cannot open the queue control socket {path}: "
                            f"{exc.strerror or exc}") from None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            (self.spool.root / SOCKET_NAME).unlink(missing_ok=True)

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
                self._waiting[msg_id] = {**request, "ids": [msg_id]}
                verb = "held" if request["op"] == "hold" else "deleted"
                result = f"will be {verb} when its current delivery attempt ends"
            results.append({"id": msg_id, "result": result})
        for result in results:
            if not (retry and result["result"].startswith("will be")):  # said once is enough
                self.log("queue-control", op=request.get("op"), id=result["id"],
                         result=result["result"])
        return {"ok": True, "results": results, "relay": "running"}

    def released(self, msg_id: str) -> None:
        """A worker of this relay is done with ``msg_id`` (delivered, deferred or bounced):
        make the change that waited for it."""
        request = self._waiting.pop(msg_id, None)
        if request is None:
            return
        task = asyncio.create_task(self._answer(json.dumps(request).encode(), retry=True))
        self._tasks.add(task)  # the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _retry_waiting(self) -> None:
        """Also try waiting changes now and then: the worker delivering the message may be
        another relay process on the same spool, which does not tell this one."""
        while True:
            await asyncio.sleep(_RETRY_WAITING_S)
            for msg_id in list(self._waiting):
                self.released(msg_id)


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
