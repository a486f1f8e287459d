"""The running relay: SMTP receipt, the queue scheduler, delivery workers, signals.

Lifecycle: ``start()`` loads the policy (a broken bundle is a UserError), recovers the
spool, listens; ``reload()`` (SIGHUP) swaps the policy only when the new one loads;
``stop()`` (SIGTERM) stops listening, lets sessions and deliveries finish for up to
``settings.shutdown_grace`` seconds, then drops what is left — anything not delivered is
still in the spool and is picked up again on the next start. A worker whose parent died
drains instead (``stop(drain=True)``): idle sessions end at once, and the deliveries in
flight finish however long their own timeouts let them take.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from connectwiz.directory.ldap import DirectoryCache, DirectoryError
from connectwiz.errors import UserError
from connectwiz.policy.model import PolicyModel
from connectwiz.policy.secure import SecureIndex
from connectwiz.policy.select import PolicyIndex
from connectwiz.probe.options import NetworkOptions
from connectwiz.relay.attempt import Attempt
from connectwiz.relay.clientcert import pinned_certificates
from connectwiz.relay.control import ControlServer
from connectwiz.relay.deliver import Deliverer, group_recipients
from connectwiz.relay.dsn import build_dsn
from connectwiz.relay.events import EventLog
from connectwiz.relay.limits import DestinationLimits, ReceiptFirst
from connectwiz.relay.msglog import MessageLog
from connectwiz.relay.published import CACHE_FILE
from connectwiz.relay.queuefile import DamagedQueueFile, QueueEntry, QueueWriter, Recipient
from connectwiz.relay.receipt import ReceiptContext, ReceiptHandler, server_context
from connectwiz.relay.secure import SecureMessaging, SecurePlan
from connectwiz.relay.settings import RelaySettings
from connectwiz.relay.spool import Recovery, Spool, new_message_id
from connectwiz.relay.tlscert import ensure_self_signed
from connectwiz.relay.tlsrpt import TlsRptRecorder, TlsRptSender, TlsRptStore, queue_local
from connectwiz.relay.workers import DRAIN_SIGNAL, ORPHAN_WAIT, Worker, waiting_for

_RECEIPT_THREADS = 32


class Relay:
    def __init__(
        self,
        load_policy: Callable[[], PolicyModel],
        spool_dir: Path,
        listen: tuple[str, int] = ("127.0.0.1", 2525),
        options: NetworkOptions | None = None,
        settings: RelaySettings | None = None,
        log: EventLog | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        worker: Worker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.load_policy = load_policy
        self.worker = worker or Worker()
        self.spool = Spool(Path(spool_dir))
        self.msglog = MessageLog(Path(spool_dir))
        self.listen = listen
        self.options = options or NetworkOptions()
        self.settings = settings or RelaySettings()
        self.log = log or EventLog()
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.deliverer = Deliverer(self.options, self.settings.hostname)
        self.deliverer.published.sts.load(Path(spool_dir) / CACHE_FILE)
        self.deliverer.published.sts.events = self.log
        self.secure = SecureMessaging(self.spool, self.msglog, self.settings.secure_portal_url,
                                      self.settings.hostname,
                                      Path(self.settings.secure_key) if self.settings.secure_key
                                      else None)
        self._model = PolicyModel()
        self._index = PolicyIndex(self._model)
        self._secure_index = SecureIndex(self._model)
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._destinations = DestinationLimits(self.settings.destination_concurrency)
        self._receipt_first = ReceiptFirst(
            self.settings.delivery_workers,
            receiving=lambda: bool(self._handler is not None and self._handler.sessions))
        self._pacing: asyncio.Task[None] | None = None
        self._queued: set[str] = set()  # ids waiting in _ready or being delivered
        self._stopping = False
        self._stopped = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handler: ReceiptHandler | None = None
        self._tls_files: tuple[str, str] | None = None  # (cert, key) once started
        self._tls_pins: tuple[bytes, ...] = ()  # client certificates the context trusts
        self._tls_context: ssl.SSLContext | None = None
        self._rescan: asyncio.Task[None] | None = None
        self._directory: DirectoryCache | None = None
        self._directory_task: asyncio.Task[None] | None = None
        # Spool I/O has its own threads: fsyncs never queue behind other blocking work
        # (trust store loads, parsing) on the default executor, nor the other way round.
        self._spool_io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool")
        # Receipt's own: a 250 waits for its commit, which must not queue behind delivery's
        # file work. Its threads mostly wait in fsync (no CPU), and concurrent fsyncs share
        # the file system's journal commits, so it is sized for many sessions at once.
        self._receipt_io = ThreadPoolExecutor(max_workers=_RECEIPT_THREADS,
                                              thread_name_prefix="receipt")
        # Records what a delivery's remote accepted, the moment it does (_record_attempt).
        self._recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="record")
        self._control = ControlServer(self.spool, self.settings.hostname, self._control_take,
                                      self._control_settle, self.log)
        self.address: tuple[str, int] = listen
        store = TlsRptStore(Path(spool_dir))
        # ``clock`` decides the UTC day TLS sessions are counted for and reports sent (tests
        # move it past midnight).
        self.tlsrpt = TlsRptRecorder(store, self.settings.hostname, self.worker.index, clock)
        self.tlsrpt_sender = TlsRptSender(
            store, self.options, self._queue_local, self.log,
            allowed=self.settings.tlsrpt_allow_networks, clock=clock,
            tick=self.settings.tlsrpt_tick)
        self._tlsrpt_task: asyncio.Task[None] | None = None

    def _io(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Run blocking spool I/O on the spool executor (submitted at once)."""
        return asyncio.get_running_loop().run_in_executor(
            self._spool_io, functools.partial(fn, *args, **kwargs))

    def _receipt_io_call(self, fn: Callable[..., Any], *args: Any,
                         **kwargs: Any) -> asyncio.Future[Any]:
        """Run receipt's blocking work (queue file writes and commits, header parsing) on
        the receipt executor."""
        return asyncio.get_running_loop().run_in_executor(
            self._receipt_io, functools.partial(fn, *args, **kwargs))

    # -- policy --------------------------------------------------------------------------------

    async def _load_model(self) -> PolicyModel:
        """Load the bundle and build its indexes in a worker thread (a large bundle takes a
        while), then swap all three at once: a model an index rejects is never half-applied."""

        def load() -> tuple[PolicyModel, PolicyIndex, SecureIndex, DirectoryCache | None, str]:
            model = self.load_policy()
            directory, error = self._directory, ""
            if model.directory is None:
                directory = None
            elif directory is None or directory.settings != model.directory:
                # New or changed [directory]: read it before the policy takes effect, so the
                # first messages do not see empty directory groups.
                directory = DirectoryCache(model.directory)
                try:
                    directory.refresh()
                except DirectoryError as exc:
                    error = str(exc)
            return (model, PolicyIndex(model, directory), SecureIndex(model, directory),
                    directory, error)

        model, index, secure_index, directory, error = await asyncio.to_thread(load)
        self._model, self._index, self._secure_index = model, index, secure_index
        if directory is not self._directory and directory is not None:
            self._log_directory(directory, error)
        self._directory = directory
        return model

    def _log_directory(self, directory: DirectoryCache, error: str) -> None:
        if error:
            self.log("directory-failed", reason=error,
                     note="directory groups and attributes keep their last known members"
                          if directory.snapshot.loaded_at else
                          "directory groups and attributes match nobody until a read succeeds")
        else:
            snapshot = directory.snapshot
            self.log("directory-read", url=directory.settings.url, groups=len(snapshot.groups),
                     addresses=len(snapshot.attributes))

    async def _directory_loop(self) -> None:
        """Re-read the directory every ``refresh_seconds`` in a worker thread: selection
        only ever reads the cache, so a slow directory never holds up a message."""
        while not self._stopping:
            directory = self._directory
            await asyncio.sleep(directory.settings.refresh_seconds if directory else 60)
            if directory is None or directory is not self._directory:
                continue  # none, or a reload replaced it (and read it) meanwhile
            error = ""
            try:
                await asyncio.to_thread(directory.refresh)
            except DirectoryError as exc:
                error = str(exc)
            self._log_directory(directory, error)

    async def reload(self) -> bool:
        try:
            model = await self._load_model()
        except Exception as exc:  # anything: the old policy must stay in force
            self.log("reload-refused", reason=str(exc) or type(exc).__name__,
                     note="the previous policy stays in force")
            return False
        if self._tls_files and pinned_certificates(model) != self._tls_pins:
            # New sessions ask for (and trust) the newly pinned client certificates.
            self._tls_context = await asyncio.to_thread(self._server_context, model)
        self.log("reloaded", **_policy_summary(model))
        return True

    def _server_context(self, model: PolicyModel) -> ssl.SSLContext:
        self._tls_pins = pinned_certificates(model)
        return server_context(*self._tls_files, self._tls_pins)

    # -- start / stop --------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.spool.create)
        await asyncio.to_thread(self.secure.store.create)
        if not self.worker.shared:  # else the parent process holds it for every worker
            await asyncio.to_thread(self.spool.lock, ORPHAN_WAIT,
                                    waiting_for(self.log, self.spool.root))
        try:
            await self._start()
        except BaseException:
            self.spool.stop_pool()
            self.spool.unlock()
            raise

    async def _start(self) -> None:
        model = await self._load_model()
        self.log("policy", **_policy_summary(model))
        cert, key = self.tls_cert, self.tls_key
        if cert is None or key is None:
            cert, key, created = await asyncio.to_thread(
                ensure_self_signed, self.spool.root / "tls", self.settings.hostname)
            # Every start, not only the first: partners under Enforced TLS - Strict (and
            # Postfix at "secure") refuse to send to a certificate no CA vouches for.
            self.log("warning", reason=f"STARTTLS uses a self-signed certificate for "
                     f"{self.settings.hostname} ({'made now' if created else 'made earlier'}; "
                     f"{cert}): senders that verify certificates will not deliver here",
                     fix="pass --tls-cert FULLCHAIN.pem --tls-key KEY.pem (a certificate "
                         "for the name in your MX record, from a public CA such as Let's "
                         "Encrypt), or set tls_cert/tls_key in service.toml")
        self._tls_files = (str(cert), str(key))
        try:
            self._tls_context = self._server_context(model)
        except (OSError, ssl.SSLError) as exc:
            raise UserError(f"cannot use TLS certificate {cert} / key {key}: {exc}") from None
        # Only one worker recovers, before any delivers (recovery puts active messages back);
        # the others find stray messages with the periodic rescan.
        found = await self._io(self.spool.recover) if self.worker.recovers else Recovery()
        # After recovery, which removes pool files left unsealed.
        await self._io(self.spool.start_pool)
        for msg_id, why in found.quarantined:
            await self._io(self.msglog.append, msg_id, "quarantined", reason=why,
                           folder=str(self.spool.root / "corrupt"))
            self.log("quarantined", id=msg_id, reason=why,
                     folder=str(self.spool.root / "corrupt"))
        await self._io(self._repair_log, found.ready + found.deferred)
        ready, deferred = found.ready, found.deferred
        self._handler = ReceiptHandler(ReceiptContext(
            settings=self.settings, model=lambda: self._model, index=lambda: self._index,
            spool=self.spool, io=self._receipt_io_call, store=self._store,
            record_refusal=self._record_refusal, log=self.log))
        loop = asyncio.get_running_loop()
        handler = self._handler
        host, port = self.listen
        try:
            self._server = await loop.create_server(
                lambda: handler.protocol(self._tls_context), host, port,
                reuse_port=self.worker.shared or None)  # workers share the port
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.address = self._server.sockets[0].getsockname()[:2]
        self.deliverer.own_addresses = {s.getsockname()[:2] for s in self._server.sockets}
        self._workers = [asyncio.create_task(self._worker())
                         for _ in range(self.settings.delivery_workers)]
        self._pacing = asyncio.create_task(self._receipt_first.run())
        for entry in ready:
            self._enqueue(entry.id)
        for entry in deferred:
            self._schedule(entry.id, entry.next_attempt - time.time())
        self._rescan = asyncio.create_task(self._rescan_loop())
        self._directory_task = asyncio.create_task(self._directory_loop())
        # One control socket for the relay: a change claims the message in the spool, which
        # keeps every worker's hands off it (relay/control.py).
        await self._control.start(listen=self.worker.leads)
        self._tlsrpt_task = asyncio.create_task(self._tlsrpt_loop())
        self.log("listening", host=self.address[0], port=self.address[1], pid=os.getpid(),
                 spool=str(self.spool.root), recovered=len(ready), deferred=len(deferred),
                 quarantined=len(found.quarantined) or None,
                 loop=type(loop).__module__.partition(".")[0])  # uvloop or asyncio

    async def stop(self, drain: bool = False) -> None:
        """Stop listening and delivering. Sessions get ``shutdown_grace`` seconds to end, so
        do deliveries in flight; with ``drain`` (the parent process died: a relay starting
        meanwhile waits for this one to exit), sessions without a transaction end at once
        and deliveries in flight get as long as their own timeouts allow."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        deadline = time.monotonic() + self.settings.shutdown_grace
        if self._server is not None:
            self._server.close()
        await self._control.close()
        # Logged once not listening.
        self.log("stopping", grace_s=self.settings.shutdown_grace,
                 drain="the relay's parent process is gone: finishing the deliveries in "
                       f"flight ({len(self._busy)} messages), then exiting" if drain else None)
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        sessions = self._handler.sessions if self._handler else set()
        if drain:
            for proto in list(sessions):
                proto.shut()
        while sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for proto in list(sessions):
            proto.close()
        if self._busy:
            await asyncio.wait(set(self._busy),
                               timeout=None if drain else max(deadline - time.monotonic(), 0))
        tasks = [*self._workers, *(t for t in (self._rescan, self._directory_task,
                                                self._tlsrpt_task, self._pacing)
                                   if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.deliverer.close()
        if self._server is not None:
            await self._server.wait_closed()
        counts = await self._io(self.spool.counts)
        await self._io(self.tlsrpt.flush)
        self._spool_io.shutdown(wait=True)
        self._receipt_io.shutdown(wait=True)
        self._recorder.shutdown(wait=True)
        await asyncio.to_thread(self.spool.stop_pool)
        self.spool.unlock()
        self.log("stopped", **counts)
        self._stopped.set()

    async def serve_until_signalled(self, on_ready: Callable[[], None] | None = None) -> None:
        """Run until SIGTERM/SIGINT; SIGHUP reloads the policy. ``on_ready`` is called once
        the relay listens."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        drain = False
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        signals = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
        if self.worker.shared:  # a worker: the kernel's word that its parent died

            def on_orphaned() -> None:
                nonlocal drain
                drain = True
                stop.set()

            loop.add_signal_handler(DRAIN_SIGNAL, on_orphaned)
            signals.append(DRAIN_SIGNAL)
        reloads: set[asyncio.Task[bool]] = set()  # the loop keeps only weak references

        def on_hup() -> None:
            task = asyncio.ensure_future(self.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        await self.start()
        if on_ready is not None:
            on_ready()
        try:
            await stop.wait()
        finally:
            try:
                await self.stop(drain)
            finally:
                # Only now: a second SIGTERM (systemd signals every process of the unit,
                # the parent forwards its own) must not kill a worker while it stops.
                for sig in signals:
                    loop.remove_signal_handler(sig)

    # -- receipt callbacks ---------------------------------------------------------------------

    async def _store(self, writer: QueueWriter, entry: QueueEntry,
                     record: dict[str, Any]) -> None:
        """Commit, name and log a message; the 250 follows. Shielded: a session dropped
        meanwhile must not leave a commit without its name (nor an enqueue undone)."""
        await asyncio.shield(self._commit(writer, entry, record))
        self.log("received", id=entry.id, client=record["client_ip"], mail_from=entry.mail_from,
                 rcpts=len(entry.recipients), tls=record["tls_version"] or "none",
                 cipher=record["tls_cipher"], receipt=record.get("receipt_option"),
                 policy=record.get("policy"), size=record["size"])

    async def _commit(self, writer: QueueWriter, entry: QueueEntry,
                      record: dict[str, Any]) -> None:
        await self._receipt_io_call(self._commit_sync, writer, entry, record)
        self._enqueue(entry.id)

    def _commit_sync(self, writer: QueueWriter, entry: QueueEntry,
                     record: dict[str, Any]) -> None:
        """The queue file is the commit (for a small message a single write, queuefile.py);
        the rename into ``queue/`` and the log line follow without an fsync of their own:
        should a crash lose the log line, ``_repair_log`` writes it again from the copy in
        the queue file. If either fails, the message is taken back so that the 451 is true.
        All in a receipt thread: creating and renaming files can wait for the file system's
        journal, which the event loop must not."""
        writer.commit(entry)
        writer.publish()  # on error it revokes the commit itself
        try:
            self.msglog.append(entry.id, "received", durable=False, **record)
        except OSError:
            self.spool.unqueue(entry.id)
            raise

    def _repair_log(self, entries: list[QueueEntry]) -> None:
        for entry in entries:
            record = entry.extra.get("received")
            if record and not self.msglog.has_event(entry.id, "received"):
                self.msglog.append(entry.id, "received", **record)

    async def _record_refusal(self, msg_id: str, record: dict[str, Any]) -> None:
        await self._io(self.msglog.append, msg_id, "received", **record)
        self.log("refused", id=msg_id, client=record["client_ip"], reason=record["result"],
                 policy=record.get("policy"))

    async def _rescan_loop(self) -> None:
        """Every ``queue_run_delay``: pick up messages no timer or worker knows about (a
        claim that failed, a deferred message whose timer was lost), like Postfix's
        periodic queue scan."""
        while not self._stopping:
            await asyncio.sleep(self.settings.queue_run_delay)
            try:
                incoming, deferred = await self._io(self._scan)
            except OSError as exc:
                self.log("error", reason=f"queue scan failed: {exc}")
                continue
            now = time.time()
            for msg_id in incoming:
                if msg_id not in self._queued:
                    self._enqueue(msg_id)
            for msg_id, due in deferred:
                if msg_id not in self._queued and msg_id not in self._timers:
                    self._schedule(msg_id, due - now)

    def _scan(self) -> tuple[list[str], list[tuple[str, float]]]:
        deferred = []
        for msg_id in self.spool.ids("deferred"):
            try:
                deferred.append((msg_id, self.spool.read_entry("deferred", msg_id).next_attempt))
            except (OSError, DamagedQueueFile):
                continue  # gone meanwhile, or left for the next start's recovery
        return self.spool.ids("incoming"), deferred

    # -- scheduling ----------------------------------------------------------------------------

    def _enqueue(self, msg_id: str) -> None:
        self._timers.pop(msg_id, None)
        if msg_id not in self._queued and not self._stopping:
            self._queued.add(msg_id)
            self._ready.put_nowait(msg_id)

    def _control_take(self, msg_id: str) -> bool:
        """``connectwiz queue`` (relay/queuectl.py) wants to change a message: refused while
        a worker has it or it waits for one; otherwise no timer or rescan hands it to a
        worker until ``_control_settle``."""
        if msg_id in self._queued or self._stopping:
            return False
        self._queued.add(msg_id)
        handle = self._timers.pop(msg_id, None)
        if handle is not None:
            handle.cancel()
        return True

    def _control_settle(self, msg_id: str, delay: float | None) -> None:
        """The change is made: retry after ``delay`` seconds (0: now), or, with None, not
        at all (held or deleted)."""
        self._queued.discard(msg_id)
        if delay is not None:
            self._schedule(msg_id, delay)

    def _schedule(self, msg_id: str, delay: float) -> None:
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        self._timers[msg_id] = loop.call_later(max(delay, 0.0), self._enqueue, msg_id)

    async def _worker(self) -> None:
        while not self._stopping:
            msg_id = await self._ready.get()
            async with self._receipt_first.slot():
                if self._stopping:
                    return
                await self._attempt(msg_id)

    async def _attempt(self, msg_id: str) -> None:
        task = asyncio.create_task(self._process(msg_id))
        self._busy.add(task)
        try:
            await task
        except Exception as exc:  # a bug or a disk error must not kill the worker
            self.log("error", id=msg_id, reason=f"{type(exc).__name__}: {exc}",
                     retry_in_s=self.settings.backoff_max)
            await self._park(msg_id)
        finally:
            self._busy.discard(task)
            self._queued.discard(msg_id)
            self._control.released(msg_id)  # a hold or delete that waited for this

    async def _park(self, msg_id: str) -> None:
        """After an unexpected error: keep the message and try again much later."""
        try:
            await self._io(self.spool.move, msg_id, "active", "deferred")
        except OSError:
            return  # not in active (already moved on) or the disk is failing: restart recovers
        self._schedule(msg_id, self.settings.backoff_max)

    async def _process(self, msg_id: str) -> None:
        try:
            claimed = await self._io(self.spool.claim, msg_id)
        except DamagedQueueFile as exc:
            await self._io(self._quarantine, msg_id, str(exc))
            return
        if claimed is None:
            return
        entry, body = claimed
        model, index = self._model, self._index
        entry.attempts += 1
        plan = None
        if self.secure.may_apply(entry, body, self._secure_index):
            plan = await asyncio.to_thread(self.secure.plan, entry, body, self._secure_index)
        bodies = {"": body}
        if plan is not None:  # Secure Messaging has something to do with this message
            bodies = await asyncio.to_thread(self.secure.bodies, body, plan)
            if plan.applied and plan.portal(entry):
                await self._hold(entry, bodies[""], plan)
        groups = group_recipients(entry, model, index, plan.variant if plan else None)
        for group in groups:
            record = functools.partial(self._record_attempt, entry, group.policy)
            async with self._destinations.slot((group.kind, group.domain)):
                if self._stopping:  # no delivery starts now; the next start recovers it
                    return
                attempts = await self.deliverer.deliver_group(entry, bodies[group.variant],
                                                              group, model, record)
            if await self._io(self._sync_group, entry, attempts, group.recipients):
                self.log("done", id=entry.id, attempts=entry.attempts)
                return
        now = time.time()
        pending = entry.pending()
        expired = bool(pending) and now - entry.received_at >= self.settings.max_lifetime
        if expired:
            for rcpt in pending:
                rcpt.status = "failed"
                rcpt.detail = (f"gave up after {entry.attempts} attempts over "
                               f"{_duration(now - entry.received_at)}; last error: "
                               f"{rcpt.detail or 'none recorded'}")
            await self._io(self.msglog.append, entry.id, "expired",
                           recipients=[r.address for r in pending])
        if entry.failed():
            await self._bounce(entry, body, expired)
        pending = entry.pending()
        if pending:
            delay = self.settings.backoff(entry.attempts)
            entry.next_attempt = now + delay
            await self._io(self._defer_sync, entry, pending)
            self.log("deferred", id=entry.id, rcpts=len(pending), retry_in_s=round(delay, 3),
                     reason=pending[0].detail)
            self._schedule(entry.id, delay)
        else:
            await self._io(self.spool.finish, entry.id)
            self.log("done", id=entry.id, attempts=entry.attempts)

    async def _hold(self, entry: QueueEntry, plain: bytes, plan: SecurePlan) -> None:
        """Secure Messaging: hold the message for its portal recipients and queue their
        notifications before anything else is delivered."""
        notes = await asyncio.to_thread(self.secure.hold, entry, plain, plan)
        self.log("secure-held", id=entry.id, definition=plan.state["definition"]["name"],
                 rcpts=len(notes), notifications=",".join(notes))
        for note_id in notes:
            self._enqueue(note_id)

    def _quarantine(self, msg_id: str, why: str) -> None:
        moved = self.spool.quarantine(msg_id)
        folder = str(self.spool.root / "corrupt")
        self.msglog.append(msg_id, "quarantined", reason=why, folder=folder, files=moved)
        self.log("quarantined", id=msg_id, reason=why, folder=folder)

    async def _record_attempt(self, entry: QueueEntry, policy: str, att: Attempt,
                              delivered: list[Recipient]) -> None:
        """Record one attempt the moment it ends: a kill -9 repeats a delivery only when it
        lands between the end of the message and this record. The delivery holds its
        destination slot until then, so no more deliveries are exposed than run at once.

        No fsync: a few small writes, an unlink or a rename into the page cache, which
        survive the process being killed; ``_sync_group`` then makes them survive a power
        loss. They run in a thread of their own (``_recorder``), where nothing waits for an
        fsync ahead of them, and not on the event loop, which they would block while the
        file system's journal is busy (about 1 ms each under load). The log line comes
        first: a kill between the two repeats the delivery with the log saying so, never
        settles a message the log still calls queued."""
        records = [{"event": "attempt", "policy": policy, **att.as_record()}]
        if delivered:
            records.append({"event": "delivered", "recipients": [r.address for r in delivered]})
        await asyncio.get_running_loop().run_in_executor(
            self._recorder, self._record_sync, entry, records, bool(delivered))
        self.log("attempt", id=entry.id, host=att.host, ip=att.address, port=att.port,
                 definition=att.definition, tls=att.tls_version or "none",
                 cipher=att.tls_cipher, verified=att.certificate_verified,
                 reused=att.reused_connection or None,  # shown only when reused
                 outcome=att.outcome, reply=att.error or att.reply, elapsed_s=att.elapsed_s)

    def _record_sync(self, entry: QueueEntry, records: list[dict[str, Any]],
                     delivered: bool) -> None:
        self.msglog.append_many(entry.id, records, durable=False)
        if delivered:
            self.spool.mark_delivered(entry)

    def _sync_group(self, entry: QueueEntry, attempts: list[Attempt],
                    recipients: list[Recipient]) -> bool:
        """Make one destination's recorded attempts durable (fsync); True when that
        finished the message."""
        settled = False
        if any(r.status == "delivered" for r in recipients):
            settled = entry.settled()
            self.spool.sync_delivered(entry.id, settled)
        if attempts:
            self.msglog.sync(entry.id)
        self.tlsrpt.count(attempts)  # after the commit: not in the window for duplicates
        return settled

    def _defer_sync(self, entry: QueueEntry, pending: list[Recipient]) -> None:
        self.msglog.append(entry.id, "deferred", recipients=[r.address for r in pending],
                           reason=pending[0].detail, next_attempt=entry.next_attempt)
        self.spool.defer(entry)

    async def _bounce(self, entry: QueueEntry, body: bytes, expired: bool) -> None:
        failed = entry.failed()
        addresses = [r.address for r in failed]
        reason = failed[0].detail
        if not entry.mail_from or entry.is_bounce:
            await self._io(self.msglog.append, entry.id, "bounced",
                           recipients=addresses, reason=reason,
                           note="null sender: no bounce for a bounce")
            self.log("bounced", id=entry.id, rcpts=len(failed), reason=reason, dsn="none")
        else:
            dsn = build_dsn(entry, failed, body, self.settings.hostname, expired)
            bounce = QueueEntry(id=new_message_id(), mail_from="",
                                recipients=[Recipient(entry.mail_from)],
                                received_at=time.time(), is_bounce=True)
            await self._io(self._store_bounce, entry, bounce, dsn, addresses, reason)
            self.log("bounced", id=entry.id, rcpts=len(failed), reason=reason, dsn=bounce.id)
            self._enqueue(bounce.id)
        for rcpt in failed:
            rcpt.status = "bounced"
        await self._io(self.spool.update_active, entry)

    def _store_bounce(self, entry: QueueEntry, bounce: QueueEntry, dsn: bytes,
                      addresses: list[str], reason: str) -> None:
        self.spool.accept(bounce, dsn)
        self.msglog.append(bounce.id, "received", client_ip="local", helo=None, mail_from="",
                           recipients=[entry.mail_from], tls_version=None, tls_cipher=None,
                           size=len(dsn), result="accepted", receipt_option=None,
                           policy=f"delivery status notification for {entry.id}")
        self.msglog.append(entry.id, "bounced", recipients=addresses, reason=reason,
                           dsn=bounce.id)

    async def _tlsrpt_loop(self) -> None:
        """Every worker writes its own TLS-RPT counts; one (the leader) sends the reports,
        built from all workers' counts."""
        if self.worker.leads:
            await self.tlsrpt_sender.run(self.tlsrpt)
        while True:
            await asyncio.sleep(self.settings.tlsrpt_tick)
            await self._io(self.tlsrpt.flush)

    async def _queue_local(self, mail_from: str, rcpts: list[str], data: bytes,
                           note: str) -> None:
        """A message the relay writes itself (a TLS report), queued like received mail."""
        self._enqueue(await self._io(queue_local, self.spool, self.msglog, mail_from, rcpts,
                                     data, note))

    # -- for tests and the benchmark -----------------------------------------------------------

    async def idle(self) -> None:
        """Wait until nothing is queued for immediate delivery (deferred entries may remain)."""
        while self._queued:
            await asyncio.sleep(0.02)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _policy_summary(model: PolicyModel) -> dict[str, int]:
    return {"delivery_policies": len(model.delivery_policies),
            "receipt_policies": len(model.receipt_policies),
            "inbound_routes": len(model.inbound_routes),
            "external_domains": len(model.external_domains)}

