"""The queue file: its format, how one is written and committed (``QueueWriter``), and the
pool of files made ahead of time so that committing a small message costs one system call
(``CommitPool``). ``spool.py`` decides where queue files live and what happens to them.

Format (``CWZQ2``): one header line, the body, the envelope as JSON::

    CWZQ2 <body length, 12 digits> <envelope length, 12 digits> <CRC-32 of both, 8 hex>\\n

The header seals the file: a file is whole only when its size matches the two lengths and
its contents the checksum, so recovery can tell a committed pool file from an unused one
(empty) or one whose write a crash cut short (never acknowledged). Files written before
this format (``CWZQ1 <body length>\\n``, completed before they were renamed into place) are
still read.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import secrets
import threading
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"CWZQ2 "
HEAD_LEN = len(MAGIC) + 12 + 1 + 12 + 1 + 8 + 1
_MAGIC_V1 = b"CWZQ1 "
_HEAD_LEN_V1 = len(_MAGIC_V1) + 12 + 1


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

    def settled(self) -> bool:
        """Every recipient delivered or bounced: nothing left to do with the message."""
        return not self.pending() and not self.failed()

    def failed(self) -> list[Recipient]:
        return [r for r in self.recipients if r.status == "failed"]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> QueueEntry:
        raw = json.loads(data)
        raw["recipients"] = [Recipient(**r) for r in raw["recipients"]]
        return cls(**raw)


class DamagedQueueFile(ValueError):
    """A queue or state file that cannot be read back: outside damage (they are written
    atomically), set aside in ``corrupt/`` rather than retried or deleted."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _header(body_len: int, envelope_len: int, crc: int) -> bytes:
    return MAGIC + b"%012d %012d %08x\n" % (body_len, envelope_len, crc)


def read_queue_file(path: Path, msg_id: str | None, want_body: bool
                    ) -> tuple[QueueEntry, bytes]:
    """Envelope and (with ``want_body``) body; the checksum is verified when the body is
    read. ``msg_id`` None: any message (a pool file, whose name says nothing)."""
    name = msg_id or path.name
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(HEAD_LEN)
        if head.startswith(MAGIC):
            fields = head[len(MAGIC):-1].split(b" ")
            if (len(fields) != 3 or not all(x.isdigit() for x in fields[:2])
                    or HEAD_LEN + int(fields[0]) + int(fields[1]) != size):
                raise DamagedQueueFile(f"{name}: queue file damaged (bad header)")
            body_len, crc = int(fields[0]), int(fields[2], 16)
            if want_body:
                body, envelope = f.read(body_len), f.read()
                if zlib.crc32(envelope, zlib.crc32(body)) != crc:
                    raise DamagedQueueFile(f"{name}: queue file damaged (checksum)")
            else:
                f.seek(HEAD_LEN + body_len)
                body, envelope = b"", f.read()
        elif head.startswith(_MAGIC_V1):
            length = head[len(_MAGIC_V1):_HEAD_LEN_V1 - 1]
            if not length.isdigit() or _HEAD_LEN_V1 + int(length) >= size:
                raise DamagedQueueFile(f"{name}: queue file damaged (bad length line)")
            f.seek(_HEAD_LEN_V1)
            body = f.read(int(length)) if want_body else b""
            f.seek(_HEAD_LEN_V1 + int(length))
            envelope = f.read()
        else:
            raise DamagedQueueFile(f"{name}: queue file damaged (bad header)")
    try:
        entry = QueueEntry.from_json(envelope)
    except (ValueError, TypeError, KeyError) as exc:
        raise DamagedQueueFile(f"{name}: queue file damaged ({exc})") from None
    if msg_id is not None and entry.id != msg_id:
        raise DamagedQueueFile(f"{msg_id}: queue file holds message {entry.id}")
    return entry, body


class GroupSync:
    """fsync of one folder shared by every thread whose rename came before it started:
    concurrent receipts wait for one folder fsync instead of one each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._issued = 0  # tickets handed out (one per rename to make durable)
        self._done = 0  # every ticket up to this one is durable
        self._running = False

    def sync(self) -> None:
        with self._cond:
            self._issued += 1
            ticket = self._issued
            while self._done < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                covers = self._issued  # renames up to here happened before this fsync
                self._cond.release()
                try:
                    fsync_dir(self.path)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                self._done = max(self._done, covers)


Slot = tuple[int, Path]  # an open pool file (O_DSYNC) and its name


class CommitPool:
    """Empty queue files made ahead of time in a folder of their own, open with
    ``O_DSYNC``, their names already made durable by a folder fsync. Committing a small
    message into one is a single write that returns once the data is on disk: one
    synchronous system call before the 250, as Postfix's one fsync, where the ordinary
    commit needs four (write, fsync, rename, the folder's fsync). A thread of its own keeps
    the pool filled; an empty pool only means the ordinary commit. Start it in the process
    that commits (file descriptors do not cross a fork)."""

    def __init__(self, folder: Path, size: int = 64) -> None:
        self.folder = folder
        self.size = size
        self._free: collections.deque[Slot] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        # Filled once before the first commit, so a started relay opens no spool file for
        # writing until its pool runs low (a spool that cannot be written: the thread tries).
        with contextlib.suppress(OSError):
            self._free.extend(self._make(size))
        self._thread = threading.Thread(target=self._fill, name="spool-pool", daemon=True)
        self._thread.start()

    def take(self) -> Slot | None:
        with self._cond:
            slot = self._free.popleft() if self._free else None
            if len(self._free) < self.size // 2:
                self._cond.notify()
        return slot

    def _fill(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and len(self._free) >= self.size // 2:
                    self._cond.wait()
                if self._stopped:
                    return
                want = self.size - len(self._free)
            try:
                made = self._make(want)
            except OSError:  # e.g. a read-only spool: commits take the ordinary path
                made = []
                with self._cond:
                    self._cond.wait(timeout=1.0)
            with self._cond:
                if self._stopped:
                    _discard(made)
                    return
                self._free.extend(made)

    def _make(self, count: int) -> list[Slot]:
        made: list[Slot] = []
        try:
            for _ in range(count):
                path = self.folder / secrets.token_hex(8)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DSYNC | os.O_CLOEXEC
                made.append((os.open(path, flags, 0o600), path))
            fsync_dir(self.folder)  # the names are durable before any is used
        except BaseException:
            _discard(made)
            raise
        return made

    def close(self) -> None:
        """Stop filling and remove the unused files."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()
        _discard(list(self._free))
        self._free.clear()


def _discard(slots: list[Slot]) -> None:
    for fd, path in slots:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()


def _write_all(fd: int, data: bytes, at: int = 0) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, at)
        view, at = view[done:], at + done


class QueueWriter:
    """A queue file being received. ``add`` collects bytes in memory (no I/O, call it
    anywhere); ``flush`` writes them out; ``commit`` makes the file durable, ``abort`` throws
    it away; ``publish`` gives a message committed into a pool file its name in the queue.
    All but ``add`` do file I/O: call them in a thread. A small message is never flushed:
    it is committed in one call, into a pool file when one is free."""

    def __init__(self, folder: Path, tmp_folder: Path, sync: GroupSync,
                 pool: CommitPool | None, msg_id: str) -> None:
        self.msg_id = msg_id
        self.dest = folder / f"{msg_id}.msg"
        self.tmp = tmp_folder / f"{msg_id}.msg"
        self._sync = sync
        self._pool = pool
        self._file: BinaryIO | None = None
        self._pending: list[bytes] = []
        self._crc = 0
        self._slot: Slot | None = None  # committed into this pool file, not yet published
        self.size = 0

    def add(self, data: bytes) -> None:
        self._pending.append(data)
        self.size += len(data)

    def flush(self) -> None:
        if self._file is None:
            self._file = open(self.tmp, "xb")  # noqa: SIM115 - closed by commit or abort
            os.chmod(self.tmp, 0o600)
            self._file.write(b"\0" * HEAD_LEN)  # the seal is written by commit
        for chunk in self._pending:
            self._crc = zlib.crc32(chunk, self._crc)
        self._file.writelines(self._pending)
        self._pending.clear()

    def commit(self, entry: QueueEntry) -> None:
        """Make the message durable. On error nothing is left behind and the error
        propagates. Before the 250, ``publish`` must follow."""
        envelope = entry.to_json()
        if self._file is not None:
            self._commit_flushed(envelope)
            return
        crc = 0
        for chunk in (*self._pending, envelope):
            crc = zlib.crc32(chunk, crc)
        data = b"".join((_header(self.size, len(envelope), crc), *self._pending, envelope))
        self._pending.clear()
        slot = self._pool.take() if self._pool is not None else None
        if slot is None:
            self._commit_renamed(data)
            return
        try:
            _write_all(slot[0], data)  # O_DSYNC: on disk when this returns
        except BaseException:
            _discard([slot])  # a write cut short is not sealed (length and checksum)
            raise
        self._slot = slot

    def _commit_renamed(self, data: bytes) -> None:
        """Temp file, fsync, rename into the queue, folder fsync."""
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.tmp, self.dest)
        except BaseException:
            self.tmp.unlink(missing_ok=True)  # e.g. disk full: leave nothing half-written
            raise
        self._sync.sync()

    def _commit_flushed(self, envelope: bytes) -> None:
        try:
            assert self._file is not None
            self.flush()
            self._file.write(envelope)
            self._file.seek(0)
            self._file.write(_header(self.size, len(envelope), zlib.crc32(envelope, self._crc)))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp, self.dest)
        except BaseException:
            self.abort()
            raise
        self._sync.sync()

    def publish(self) -> None:
        """Move a message committed into a pool file to ``queue/<id>.msg``: a rename, no
        fsync. Should a crash lose the rename, recovery finds the sealed pool file and moves
        it then. On error the commit is revoked (the caller
        answers 451, so the message must not be delivered as well)."""
        slot, self._slot = self._slot, None
        if slot is None:
            return
        fd, path = slot
        try:
            os.rename(path, self.dest)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # through the descriptor: works where unlink may not
            _discard([slot])
            raise
        os.close(fd)

    def abort(self) -> None:
        self._pending.clear()
        if self._slot is not None:  # committed but never published: revoke
            slot, self._slot = self._slot, None
            with contextlib.suppress(OSError):
                os.ftruncate(slot[0], 0)
            _discard([slot])
        if self._file is not None:
            try:
                # On a full disk close() fails too (it flushes what is buffered): the
                # half-written file must go all the same.
                with contextlib.suppress(OSError):
                    self._file.close()
            finally:
                self.tmp.unlink(missing_ok=True)
