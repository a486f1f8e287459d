"""The durable queue. Every method does blocking file I/O: call it from a worker thread.

Layout of a spool directory::

    messages/<id>.eml     the message as received (written once, never changed)
    incoming/<id>.json    queue entry: envelope and per-recipient state, waiting for a worker
    active/<id>.json      being delivered right now
    deferred/<id>.json    waiting for its next attempt (``next_attempt``)
    log/<id>.jsonl        receipt/delivery view (see msglog.py)
    tmp/                  files being written; never read

Every file is written to ``tmp/``, fsync'd, renamed into place and the directory fsync'd,
so after a crash each file is either complete or absent. The body is stored before the
queue entry, so an entry always has its body; a body without an entry was never
acknowledged and is removed by ``recover``. State changes are renames; a change that has
to rewrite the entry (active → deferred) writes the new file before unlinking the old
one, and ``recover`` keeps the later state when it finds both.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from connectwiz.errors import UserError

STATES = ("incoming", "active", "deferred")
_STATE_RANK = {"incoming": 0, "active": 1, "deferred": 2}


@dataclass(slots=True)
class Recipient:
    address: str
    # pending | delivered | failed (permanently; bounce not yet queued) | bounced
    status: str = "pending"
    detail: str = ""  # last reply or error, for the DSN and the log


@dataclass(slots=True)
class QueueEntry:
    id: str
    mail_from: str  # "" for a bounce (null sender)
    recipients: list[Recipient]
    received_at: float  # epoch seconds
    client_ip: str = ""
    header_from: str | None = None
    is_bounce: bool = False
    attempts: int = 0
    next_attempt: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.status == "pending"]

    def failed(self) -> list[Recipient]:
        return [r for r in self.recipients if r.status == "failed"]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> QueueEntry:
        raw = json.loads(data)
        raw["recipients"] = [Recipient(**r) for r in raw["recipients"]]
        return cls(**raw)


def default_spool() -> Path:
    """``$XDG_STATE_HOME/connectwiz/spool`` (``~/.local/state`` when unset)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "connectwiz" / "spool"


def new_message_id() -> str:
    """Sortable by arrival (time in hex) and unique (random suffix)."""
    return f"{time.time_ns() // 1000:x}{secrets.token_hex(5)}".upper()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None

    def create(self) -> None:
        for name in ("tmp", "messages", "log", *STATES):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # mail content and keys live here

    def lock(self) -> None:
        """Claim the spool for this process; two relays on one spool would deliver twice.
        The lock is released when the process exits, however it exits."""
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"spool {self.root} is in use by another relay") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        fd = self._lock_fd
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    # -- primitive ---------------------------------------------------------------------------

    def write_atomic(self, dest: Path, data: bytes) -> None:
        tmp = self.root / "tmp" / f"{dest.name}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)  # e.g. disk full: leave nothing half-written
            raise
        _fsync_dir(dest.parent)

    def _entry_path(self, state: str, msg_id: str) -> Path:
        return self.root / state / f"{msg_id}.json"

    def body_path(self, msg_id: str) -> Path:
        return self.root / "messages" / f"{msg_id}.eml"

    # -- queue operations --------------------------------------------------------------------

    def accept(self, entry: QueueEntry, body: bytes) -> None:
        """Store a new message durably. Only after this returns may the relay answer 250."""
        self.write_atomic(self.body_path(entry.id), body)
        try:
            self.write_atomic(self._entry_path("incoming", entry.id), entry.to_json())
        except BaseException:
            self.body_path(entry.id).unlink(missing_ok=True)
            raise

    def read_body(self, msg_id: str) -> bytes:
        return self.body_path(msg_id).read_bytes()

    def read_entry(self, state: str, msg_id: str) -> QueueEntry:
        return QueueEntry.from_json(self._entry_path(state, msg_id).read_bytes())

    def move(self, msg_id: str, src: str, dst: str, durable: bool = True) -> None:
        """Rename between states. ``durable=False`` skips the directory fsyncs where losing
        the rename in a crash is harmless (recovery treats both states alike)."""
        os.replace(self._entry_path(src, msg_id), self._entry_path(dst, msg_id))
        if durable:
            _fsync_dir(self.root / dst)
            _fsync_dir(self.root / src)

    def update_active(self, entry: QueueEntry) -> None:
        """Record progress (e.g. recipients delivered) so a crash does not repeat it."""
        self.write_atomic(self._entry_path("active", entry.id), entry.to_json())

    def defer(self, entry: QueueEntry) -> None:
        self.write_atomic(self._entry_path("deferred", entry.id), entry.to_json())
        self._entry_path("active", entry.id).unlink()
        _fsync_dir(self.root / "active")

    def finish(self, msg_id: str) -> None:
        """Every recipient is delivered or bounced: forget the message (its log stays)."""
        self._entry_path("active", msg_id).unlink()
        _fsync_dir(self.root / "active")  # else a crash could deliver the message again
        # Not fsync'd: a body that reappears after a crash has no entry; recover removes it.
        self.body_path(msg_id).unlink(missing_ok=True)

    def recover(self) -> tuple[list[QueueEntry], list[QueueEntry]]:
        """After a start or crash: (entries to deliver now, deferred entries).

        Anything that was in ``active`` goes back to ``incoming``: its delivery was
        interrupted and is tried again (at-least-once). Bodies without an entry are removed.
        """
        found: dict[str, str] = {}
        for state in STATES:
            for path in (self.root / state).glob("*.json"):
                msg_id = path.stem
                prev = found.get(msg_id)
                if prev is None or _STATE_RANK[state] > _STATE_RANK[prev]:
                    if prev is not None:
                        self._entry_path(prev, msg_id).unlink(missing_ok=True)
                    found[msg_id] = state
                else:
                    path.unlink(missing_ok=True)
        for path in (self.root / "tmp").iterdir():
            path.unlink(missing_ok=True)
        for path in (self.root / "messages").glob("*.eml"):
            # hold/ (queue control, relay/queuectl.py) is never delivered, but its bodies stay.
            if path.stem not in found and not (self.root / "hold" / f"{path.stem}.json").exists():
                path.unlink(missing_ok=True)
        ready: list[QueueEntry] = []
        deferred: list[QueueEntry] = []
        for msg_id, state in sorted(found.items()):
            if state == "active":
                self.move(msg_id, "active", "incoming")
                state = "incoming"
            try:
                entry = self.read_entry(state, msg_id)
            except (ValueError, TypeError, KeyError):
                # Written atomically, so this is outside damage: keep the file for a human.
                with contextlib.suppress(OSError):
                    self._entry_path(state, msg_id).rename(
                        self.root / state / f"{msg_id}.json.corrupt")
                continue
            (deferred if state == "deferred" else ready).append(entry)
        return ready, deferred

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for _ in (self.root / s).glob("*.json")) for s in STATES}
