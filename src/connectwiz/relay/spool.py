"""The durable queue. Every method does blocking file I/O: call it in a thread (the spool
executor; ``Spool.mark_delivered`` has a thread of its own: no fsync, a few syscalls).

Layout of a spool directory::

    queue/<id>.msg        the queue file: the message as received and its envelope, written
                          once at receipt (one file, one fsync) and never changed
    incoming/<id>.json    (optional) progress of a message waiting for a worker
    active/<id>.json      being delivered right now: envelope and per-recipient state
    deferred/<id>.json    waiting for its next attempt (``next_attempt``)
    corrupt/              damaged queue files set aside, with everything that belonged to them
    log/<id>.jsonl        receipt/delivery view (see msglog.py)
    pool/<random>         empty queue files made ahead, for one-call commits (queuefile.py)
    tmp/                  files being written; never read

A queue file without a state file is a new message waiting for a worker. A state file
holds the envelope as delivery changed it (recipients delivered, attempts, next attempt);
it wins over the copy in the queue file.

Only once the queue file is durable, and a name for it, may the relay answer 250. A small
message is committed into a pool file (``pool/``, queuefile.py): one write with O_DSYNC
into a file whose name a folder fsync already made durable; then it is renamed
``queue/<id>.msg`` without an fsync, since recovery moves a sealed pool file whose rename
a crash lost (and removes unused or unsealed ones). The rename is one journal transaction:
the fsync of ``queue/`` when the message is finished makes its leaving ``pool/`` durable
too (on a file system without a journal a power loss could bring the copy back: one more
delivery, never a lost one). A large message, or one that finds the pool empty, is written
in ``tmp/``, fsync'd, renamed into ``queue/`` and the folder fsync'd (one folder fsync
serves every rename made before it started: group commit).

State changes are renames, or a new state file written before the old one is unlinked;
``recover`` keeps the later state when it finds two.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from connectwiz.errors import UserError
from connectwiz.relay.queuefile import (
    CommitPool,
    DamagedQueueFile,
    GroupSync,
    QueueEntry,
    QueueWriter,
    fsync_dir,
    read_queue_file,
)

STATES = ("incoming", "active", "deferred")
_STATE_RANK = {"incoming": 0, "active": 1, "deferred": 2}


def default_spool() -> Path:
    """``$XDG_STATE_HOME/connectwiz/spool`` (``~/.local/state`` when unset)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "connectwiz" / "spool"


def new_message_id() -> str:
    """Sortable by arrival (time in hex) and unique (random suffix)."""
    return f"{time.time_ns() // 1000:x}{secrets.token_hex(5)}".upper()


def _lock_owner(fd: int) -> int | None:
    """The pid the lock file names (the relay process that took it), if any."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(os.pread(fd, 32, 0).split()[0])
    return None


def _running(pid: int) -> bool:
    """``pid`` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel whether the pid exists at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None
        self.queue_sync = GroupSync(self.root / "queue")
        self.pool: CommitPool | None = None

    def create(self) -> None:
        """Make the folders; a spool that cannot be created is a one-line UserError."""
        try:
            for name in ("tmp", "pool", "queue", "log", "corrupt", *STATES):
                (self.root / name).mkdir(parents=True, exist_ok=True)
            self.root.chmod(0o700)  # mail content and keys live here
        except OSError as exc:
            where = exc.filename or self.root
            raise UserError(f"cannot create the spool {self.root}: {where}: "
                            f"{exc.strerror or exc}") from None

    def lock(self, wait: float = 0.0, waiting: Callable[[int], None] | None = None) -> None:
        """Claim the spool for this process; two relays on one spool would deliver twice.
        The lock is released when every process sharing it has exited, however it exits:
        a relay's workers share their parent's (fork), so after the parent is killed they
        hold it while they finish the deliveries in flight (relay/workers.py). Then, the
        relay named in the lock file being gone, this waits up to ``wait`` seconds for
        them, calling ``waiting(pid)`` once; a relay that still runs is refused at once."""
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                owner = _lock_owner(fd)
                if owner is None or _running(owner) or time.monotonic() >= deadline:
                    os.close(fd)
                    if told:
                        raise UserError(
                            f"spool {self.root} is still held by the workers of relay pid "
                            f"{owner}, which is gone (waited {wait:.0f} s)") from None
                    raise UserError(f"spool {self.root} is in use by another relay") from None
                if not told and waiting is not None:
                    waiting(owner)
                told = True
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        fd = self._lock_fd
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    # -- primitives --------------------------------------------------------------------------

    def write_atomic(self, dest: Path, data: bytes, durable: bool = True) -> None:
        """Temp file, fsync, rename, folder fsync. ``durable=False`` skips both fsyncs where
        losing the file in a crash is harmless."""
        tmp = self.root / "tmp" / f"{dest.name}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)  # e.g. disk full: leave nothing half-written
            raise
        if durable:
            fsync_dir(dest.parent)

    def _entry_path(self, state: str, msg_id: str) -> Path:
        return self.root / state / f"{msg_id}.json"

    def queue_path(self, msg_id: str) -> Path:
        return self.root / "queue" / f"{msg_id}.msg"

    def _read_queue_file(self, msg_id: str, want_body: bool) -> tuple[QueueEntry, bytes]:
        return read_queue_file(self.queue_path(msg_id), msg_id, want_body)

    def read_queue_file(self, path: Path, msg_id: str) -> tuple[QueueEntry, bytes]:
        """A queue file outside ``queue/`` (on hold: relay/queuectl.py): envelope and body."""
        return read_queue_file(path, msg_id, want_body=True)

    # -- queue operations --------------------------------------------------------------------

    def start_pool(self) -> None:
        """Make commits into pool files from now on, in this process (after recovery: it
        removes pool files it finds unsealed). Blocking: the pool is filled once here."""
        if self.pool is None:
            self.pool = CommitPool(self.root / "pool")

    def stop_pool(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()

    def open_message(self, msg_id: str, pooled: bool = True) -> QueueWriter:
        """A message being received; ``pooled``: committed into a pool file if one is free
        (for receipt, where a sender waits for the 250)."""
        return QueueWriter(self.root / "queue", self.root / "tmp", self.queue_sync,
                           self.pool if pooled else None, msg_id)

    def accept(self, entry: QueueEntry, body: bytes) -> None:
        """Store a message the relay makes itself (a bounce, a notification, a report)
        durably, the ordinary way: no sender waits for it."""
        writer = self.open_message(entry.id, pooled=False)
        writer.add(body)
        writer.commit(entry)

    def read_body(self, msg_id: str) -> bytes:
        return self._read_queue_file(msg_id, want_body=True)[1]

    def read_entry(self, state: str, msg_id: str) -> QueueEntry:
        """The envelope as delivery last saved it (the state file), else as received."""
        try:
            data = self._entry_path(state, msg_id).read_bytes()
        except FileNotFoundError:
            return self._read_queue_file(msg_id, want_body=False)[0]
        try:
            return QueueEntry.from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            raise DamagedQueueFile(f"{msg_id}: {state} entry damaged ({exc})") from None

    def claim(self, msg_id: str) -> tuple[QueueEntry, bytes] | None:
        """Take a waiting message for delivery (its state becomes active); None when it is
        gone or already taken."""
        if not self.queue_path(msg_id).exists():
            for state in ("incoming", "deferred"):
                self._entry_path(state, msg_id).unlink(missing_ok=True)
            return None
        for state in ("incoming", "deferred"):
            try:
                # Not fsync'd: after a crash, incoming and active are recovered alike.
                os.replace(self._entry_path(state, msg_id), self._entry_path("active", msg_id))
            except FileNotFoundError:
                continue
            body = self._read_queue_file(msg_id, want_body=True)[1]
            return self.read_entry("active", msg_id), body
        if self._entry_path("active", msg_id).exists():
            return None
        try:
            entry, body = self._read_queue_file(msg_id, want_body=True)
        except FileNotFoundError:
            return None  # delivered meanwhile by another relay worker
        # Exclusive: another worker (its rescan) may be claiming this message right now.
        if not self.create_exclusive(self._entry_path("active", msg_id), entry.to_json()):
            return None
        return entry, body

    def create_exclusive(self, dest: Path, data: bytes) -> bool:
        """Write ``dest`` whole (not fsync'd) unless it exists: False when it did. The file
        is written aside and linked into place, which fails for all but the first."""
        tmp = self.root / "tmp" / f"{dest.name}.{secrets.token_hex(4)}"
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(data)
            os.link(tmp, dest)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def move(self, msg_id: str, src: str, dst: str) -> None:
        """Rename a state file, durably."""
        os.replace(self._entry_path(src, msg_id), self._entry_path(dst, msg_id))
        fsync_dir(self.root / dst)
        fsync_dir(self.root / src)

    def update_active(self, entry: QueueEntry) -> None:
        """Record progress (e.g. recipients delivered) so a crash does not repeat it."""
        self.write_atomic(self._entry_path("active", entry.id), entry.to_json())

    def mark_delivered(self, entry: QueueEntry) -> bool:
        """Record at once that recipients were delivered: the queue file goes when that
        settles the message (True), else the state file is replaced. No fsync, so it is
        quick enough to follow the remote's 250 at once, and what it does survives the
        process being killed (the kernel has it). ``sync_delivered``
        makes it survive a power loss; until then one could bring the message back, to
        be delivered again (never lost)."""
        if entry.settled():
            self.queue_path(entry.id).unlink()
            return True
        self.write_atomic(self._entry_path("active", entry.id), entry.to_json(),
                          durable=False)
        return False

    def sync_delivered(self, msg_id: str, settled: bool) -> None:
        """fsync what ``mark_delivered`` did (``settled``: what it returned)."""
        if settled:
            self._sync_finished(msg_id)
            return
        path = self._entry_path("active", msg_id)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)

    def defer(self, entry: QueueEntry) -> None:
        self.write_atomic(self._entry_path("deferred", entry.id), entry.to_json())
        self._entry_path("active", entry.id).unlink()
        fsync_dir(self.root / "active")

    def finish(self, msg_id: str) -> None:
        """Every recipient is delivered or bounced: forget the message (its log stays)."""
        self.queue_path(msg_id).unlink()
        self._sync_finished(msg_id)

    def _sync_finished(self, msg_id: str) -> None:
        """After the queue file's unlink: make it durable, then drop the state file."""
        self.queue_sync.sync()  # else a power loss could bring the message back
        # Not fsync'd: a state file that reappears after a crash has no queue file; recover
        # removes it.
        self._entry_path("active", msg_id).unlink(missing_ok=True)

    def unqueue(self, msg_id: str) -> None:
        """Take back a message that was committed but must not be acknowledged."""
        self.queue_path(msg_id).unlink(missing_ok=True)
        self.queue_sync.sync()

    def quarantine(self, msg_id: str) -> list[str]:
        """Set a damaged message aside in ``corrupt/``: its queue file and state files, so
        a person can look at it; nothing is deleted. Returns the files moved."""
        moved = []
        for path in [self.queue_path(msg_id), *(self._entry_path(s, msg_id) for s in STATES),
                     self.root / "messages" / f"{msg_id}.eml"]:
            if path.exists():
                dest = self.root / "corrupt" / f"{msg_id}.{path.parent.name}{path.suffix}"
                os.replace(path, dest)
                moved.append(dest.name)
        fsync_dir(self.root / "corrupt")
        return moved

    def recover(self) -> Recovery:
        """After a start or crash: what to deliver now, what is deferred, what was set aside.

        A message that was active goes back to incoming: its delivery was interrupted and
        is tried again (at-least-once). State files without a queue file belong to finished
        messages and are removed; so are temp files. Call it before ``start_pool``.
        """
        for path in (self.root / "tmp").iterdir():
            path.unlink(missing_ok=True)
        self._recover_pool()
        result = Recovery()
        self._import_legacy(result)
        queued = {p.stem for p in (self.root / "queue").glob("*.msg")}
        found: dict[str, str] = {}
        for state in STATES:
            for path in (self.root / state).glob("*.json"):
                msg_id = path.stem
                prev = found.get(msg_id)
                if msg_id not in queued:
                    path.unlink(missing_ok=True)
                elif prev is None or _STATE_RANK[state] > _STATE_RANK[prev]:
                    if prev is not None:
                        self._entry_path(prev, msg_id).unlink(missing_ok=True)
                    found[msg_id] = state
                else:
                    path.unlink(missing_ok=True)
        for msg_id in sorted(queued):
            state = found.get(msg_id, "incoming")
            try:
                if state == "active":
                    self._recover_active(msg_id)
                    state = "incoming"
                self._read_queue_file(msg_id, want_body=False)  # the body must be there too
                entry = self.read_entry(state, msg_id)
            except DamagedQueueFile as exc:
                result.quarantined.append((msg_id, str(exc)))
                self.quarantine(msg_id)
                continue
            (result.deferred if state == "deferred" else result.ready).append(entry)
        return result

    def _recover_pool(self) -> None:
        """A sealed pool file holds a message whose rename a crash lost after its commit (it
        may have been acknowledged): it gets its name now. Any other was never acknowledged
        (unused, or a write the crash cut short) and is removed."""
        pool = self.root / "pool"
        found = False
        for path in pool.iterdir() if pool.is_dir() else ():
            found = True
            try:
                entry = read_queue_file(path, None, want_body=True)[0]
            except DamagedQueueFile:
                path.unlink()
                continue
            if self.queue_path(entry.id).exists():
                path.unlink()  # moved already (see the module's docstring)
            else:
                os.rename(path, self.queue_path(entry.id))
        if found:
            self.queue_sync.sync()
            fsync_dir(pool)

    def _recover_active(self, msg_id: str) -> None:
        path = self._entry_path("active", msg_id)
        try:
            QueueEntry.from_json(path.read_bytes())
        except (ValueError, TypeError, KeyError):
            # The claim writes active without fsync: torn by the crash, so the queue
            # file's copy is the truth (anything saved later was written atomically).
            path.unlink()
            return
        self.move(msg_id, "active", "incoming")

    def _import_legacy(self, result: Recovery) -> None:
        """Spools written before queue files (``messages/ID.eml`` + ``STATE/ID.json``): turn
        each message into a queue file so nothing acknowledged is stranded by an upgrade.
        An entry whose body is missing is set aside, never retried."""
        legacy = self.root / "messages"
        if not legacy.is_dir():
            return
        for state in STATES:
            for path in sorted((self.root / state).glob("*.json")):
                msg_id = path.stem
                body = legacy / f"{msg_id}.eml"
                if self.queue_path(msg_id).exists():
                    continue
                try:
                    entry = QueueEntry.from_json(path.read_bytes())
                    data = body.read_bytes()
                except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
                    why = ("message body missing" if isinstance(exc, FileNotFoundError)
                           else f"{state} entry damaged ({exc})")
                    result.quarantined.append((msg_id, why))
                    self.quarantine(msg_id)
                    continue
                self.accept(entry, data)
                body.unlink()
        for body in legacy.glob("*.eml"):
            body.unlink()  # a body without an entry was never acknowledged
        with contextlib.suppress(OSError):
            legacy.rmdir()

    def ids(self, state: str) -> list[str]:
        """Messages in a state; incoming counts queue files without a later state."""
        if state != "incoming":
            return [p.stem for p in (self.root / state).glob("*.json")]
        later = {p.stem for s in ("active", "deferred") for p in (self.root / s).glob("*.json")}
        return [p.stem for p in (self.root / "queue").glob("*.msg") if p.stem not in later]

    def counts(self) -> dict[str, int]:
        return {s: len(self.ids(s)) for s in STATES}


@dataclass(slots=True)
class Recovery:
    ready: list[QueueEntry] = field(default_factory=list)
    deferred: list[QueueEntry] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (id, why)
