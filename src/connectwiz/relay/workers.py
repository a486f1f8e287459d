"""Several relay processes on one spool and one port (``--workers N``), the way Postfix runs
several smtpd and smtp processes so that every core works.

Each worker is a whole relay (receipt, queue, delivery) in its own process with its own
event loop. The kernel spreads incoming connections over the workers' listening sockets
(``SO_REUSEPORT``); a worker delivers what it received, and a message is claimed by an
atomic rename or an exclusive link in the spool, so two workers never deliver it at once
(another worker's periodic rescan may pick up a message whose worker died or lost it).

The parent holds the spool lock and supervises. It starts worker 0, which recovers the
spool (an interrupted delivery goes back to the queue), and once that one listens, the
others; it passes SIGTERM, SIGINT and SIGHUP on to every worker. A worker that dies on its
own makes the parent stop the others and exit 1, so that the service manager restarts the
relay and the spool is recovered once more.

A parent killed with SIGKILL interrupts no delivery, as killing Postfix's master leaves its
smtp processes to finish their transactions: the kernel sends each worker ``DRAIN_SIGNAL``
(``PR_SET_PDEATHSIG``), and the worker stops listening, ends idle SMTP sessions with 421,
starts no delivery, lets those in flight finish and records them as usual, then exits. The
workers share the parent's spool lock (the same open file description, inherited by fork),
so a relay started meanwhile waits in ``Spool.lock`` until the last of them is gone, and
only then binds the port and recovers the spool.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType

from connectwiz.errors import UserError
from connectwiz.relay.events import EventLog
from connectwiz.relay.settings import RelaySettings
from connectwiz.relay.spool import Spool

_PR_SET_PDEATHSIG = 1
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# What a worker gets when its parent dies: finish the deliveries in flight, then exit
# (Relay.serve_until_signalled). SIGTERM means "stop within the grace period" instead.
DRAIN_SIGNAL = signal.SIGUSR1
# How long a relay starting on the spool waits for the workers of a killed one; their
# deliveries each have per-step timeouts (--timeout), so a drain lasting longer is stuck.
ORPHAN_WAIT = 300.0


@dataclass(frozen=True, slots=True)
class Worker:
    """Which relay process this is: ``index`` of ``count``."""

    index: int = 0
    count: int = 1

    @property
    def shared(self) -> bool:
        """Other workers use the same spool and port (the parent holds the spool lock)."""
        return self.count > 1

    @property
    def leads(self) -> bool:
        """Answers for the whole relay: the queue control socket, the metrics endpoint,
        sending TLS reports (worker 0, also when it is the only one)."""
        return self.index == 0

    @property
    def recovers(self) -> bool:
        """Recovers the spool at start: only one process may, before anyone delivers."""
        return self.index == 0


def default_workers() -> int:
    """One worker per core this process may run on; 1 where the platform has no
    ``SO_REUSEPORT`` or ``fork``."""
    if not hasattr(socket, "SO_REUSEPORT") or not hasattr(os, "fork"):
        return 1
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def share(settings: RelaySettings, count: int) -> RelaySettings:
    """One worker's part of the relay-wide limits (rounded up): N workers together keep
    the limits the options give for the whole relay."""

    def part(total: int) -> int:
        return max(-(-total // count), 1)

    return replace(settings, delivery_workers=part(settings.delivery_workers),
                   destination_concurrency=part(settings.destination_concurrency),
                   max_connections=part(settings.max_connections),
                   max_connections_per_client=part(settings.max_connections_per_client))


def waiting_for(log: EventLog, spool: os.PathLike[str]) -> Callable[[int], None]:
    """The log line of a relay that waits for a killed one's workers (``Spool.lock``)."""

    def note(pid: int) -> None:
        log("waiting", reason=f"relay pid {pid} is gone but its workers still hold the spool "
                              f"{spool}: they finish the deliveries in flight first",
            wait_s=ORPHAN_WAIT)

    return note


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` (not listening) with SO_REUSEPORT: the workers' listening sockets
    join it on the same port, which this fixes when ``port`` is 0."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        # The same options asyncio's create_server sets, or the workers could not join.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def run_workers(count: int, spool_root: os.PathLike[str], listen: tuple[str, int],
                serve: Callable[[Worker, tuple[str, int], Callable[[int], None]], int],
                started: Callable[[int], None], waiting: Callable[[int], None]) -> int:
    """Run ``count`` workers; returns the exit status. ``serve(worker, listen, ready)`` runs
    one worker until it is signalled to stop and returns its exit status; it calls
    ``ready(port)`` once it listens. ``started(port)`` is called once every worker listens;
    ``waiting(pid)`` if the workers of a killed relay ``pid`` still hold the spool."""
    spool = Spool(spool_root)
    spool.create()
    # Held here for every worker (and by them, see the module docstring): another relay on
    # this spool is refused, a killed one's draining workers are waited for.
    spool.lock(ORPHAN_WAIT, waiting)
    reserved = reserve_port(*listen)
    listen = (listen[0], reserved.getsockname()[1])
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        for index in range(count):
            if stopping:
                break
            pid, ready = _start(Worker(index, count), listen, serve, reserved, os.getpid())
            children[pid] = index
            # One at a time: worker 0 recovers the spool before anyone delivers, and the
            # relay counts as started once every worker listens.
            listening = os.read(ready, 1) == b"R"
            os.close(ready)
            if not listening:  # it could not start (its error is printed), or was stopped
                if not stopping:
                    forward(signal.SIGTERM, None)
                break
        else:
            started(listen[1])
        status = 0
        while children:
            pid, raw = os.wait()
            index = children.pop(pid, -1)
            code = os.waitstatus_to_exitcode(raw)
            if stopping and code in (-signal.SIGTERM, -signal.SIGINT):
                code = 0  # stopped while starting, before its loop handled the signal
            if code != 0 and not stopping:  # died on its own: stop the rest, let restart
                print(f"connectwiz: relay worker {index} (pid {pid}) exited with status "
                      f"{code}; stopping the others", file=sys.stderr)
                forward(signal.SIGTERM, None)
                code = 1
            status = status or code
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reserved.close()
        spool.unlock()


def _start(worker: Worker, listen: tuple[str, int],
           serve: Callable[[Worker, tuple[str, int], Callable[[int], None]], int],
           reserved: socket.socket, parent: int) -> tuple[int, int]:
    """Fork one worker; returns its pid and the read end of its readiness pipe."""
    ready_r, ready_w = os.pipe()
    sys.stderr.flush()
    # Signals wait until each side has its own handlers: the worker must not run the
    # parent's forwarding handler it inherits.
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        os.close(ready_w)
        return pid, ready_r
    # The worker. It never returns into the parent's code.
    code = 70  # EX_SOFTWARE, should anything below fail unexpectedly
    try:
        os.close(ready_r)
        reserved.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # A reload asked for before this worker's loop handles SIGHUP must not kill it (it
        # is loading the bundle anyway).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        _drain_with_parent(parent)

        def ready(_port: int) -> None:
            # A parent killed meanwhile reads no more: this worker drains (DRAIN_SIGNAL).
            with contextlib.suppress(BrokenPipeError):
                os.write(ready_w, b"R")

        code = serve(worker, listen, ready)
    except UserError as exc:
        print(f"connectwiz: {exc}", file=sys.stderr)
        code = 2
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _drain_with_parent(parent: int) -> None:
    """Have the kernel send ``DRAIN_SIGNAL`` to this process when its parent dies (Linux).
    Until the worker's event loop handles it, the signal's default action ends the
    worker: it has started no delivery yet."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, DRAIN_SIGNAL)
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)
