"""Relay throughput next to Postfix in one run: accept and deliver ratios, latency, memory.

Both measured sides get the same work and the same surroundings:

- the same burst: N messages of about S bytes from C concurrent aiosmtplib clients, each
  connection STARTTLS (TLS 1.3), every message fsync'd before its 250 (the relay's spool,
  Postfix's queue; both in the same temporary file system);
- the same next hop, resolved the same way: internal mail goes to the inbound route
  ``mail.corp.example`` (the lab's trusted server), Enforced TLS Strict (TLS >= 1.2, chain
  and name verified against the lab CA). Both look the route's host up in DNS for real,
  through one lab DNS server on 127.0.53.53:53 — the relay with ``--nameserver``, Postfix
  with its libc resolver, started in a private mount namespace whose /etc/resolv.conf names
  that server (the machine's own file is untouched). Postfix's transport map sends
  ``corp.example`` to ``[mail.corp.example]:port`` and its TLS policy is the export's,
  unchanged;
- the load generator apart: the sink (lab SMTP servers and DNS) runs in its own process, the
  clients in this one, the relay and Postfix in theirs; each side with its default settings.

The relay and Postfix run side by side for the whole run; their bursts alternate, R rounds
(the order flips each round; an even number of rounds, so that each side goes first and
follows the other equally often), after one uncounted warm-up burst each, so that each
round compares the two under about the same load of a shared machine. Per burst it prints
messages/s accepted (first connect to last 250) and delivered (first connect to last
message at the sink), with the load average; then, per
side, the medians, the 250 -> delivered p50/p99 at half that side's saturating load (its
median delivered rate, paced open-loop), and the peak resident memory of all its processes
together (sum of RSS over the process tree, sampled every 0.2 s; PSS too, which counts
shared pages once). The last lines are the per-round ratios and their medians.

    .venv/bin/python benchmarks/relay_throughput.py [--rounds 4] [--messages 500] [--clients 20]

Postfix needs root and ``unshare`` (for the DNS wiring); without them the relay alone is
measured. ``RELAY_WRAP="py-spy record -r 200 -f raw -o relay.txt --subprocesses --"`` runs
the relay under a profiler (its RSS then is not comparable).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing
import os
import platform
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib

from connectwiz.bundle import Bundle
from connectwiz.bundle.postfix import export_postfix

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.interop.postfix
from tests.interop.postfix import POSTFIX, PostfixInstance, free_port

DNS_HOST = "127.0.53.53"  # the DNS both sides use, on port 53 so libc can reach it
ROUTE = "mail.corp.example"
WRAP = os.environ.get("RELAY_WRAP", "").split()
BUNDLE = """\
schema_version = 1

[organisation]
internal_domains = ["corp.example"]
authorized_outbound = ["127.0.0.1/32"]

[[inbound_routes]]
host = "mail.corp.example"
port = {port}
encryption_mode = "strict"
"""


# -- the sink: lab SMTP servers and DNS, in a process of its own --------------------------------


def sink_main(conn: Any) -> None:
    asyncio.run(_sink(conn))


async def _sink(conn: Any) -> None:
    from connectwiz.lab.dns import DNSServer
    from connectwiz.lab.runner import Lab

    async with Lab(smtp_port=0) as lab:
        dns53 = DNSServer([lab.zone], host=DNS_HOST, port=53)
        await dns53.start()
        conn.send({"smtp_port": lab.smtp_port, "ca_file": str(lab.ca_file)})
        try:
            while (request := await asyncio.to_thread(conn.recv))[0] != "stop":
                if request[0] == "issue":
                    conn.send(tuple(str(p) for p in lab.ca.issue(request[1])))
                elif request[0] == "dns":  # queries since the last ask (the log keeps 10,000)
                    conn.send(len(dns53.queries))
                    dns53.queries.clear()
                else:  # ("wait", run_id, count, timeout)
                    conn.send(await _arrivals(lab, *request[1:]))
        finally:
            await dns53.stop()


async def _arrivals(lab: Any, run_id: str, count: int, timeout: float) -> dict[str, Any]:
    """Delivery time and TLS version of each message of ``run_id``, once all ``count`` arrived.
    Scans only new messages each round so waiting costs the sink next to nothing."""
    seen: dict[str, tuple[float, str | None]] = {}
    pos, deadline = 0, time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        messages = lab.messages
        for m in messages[pos:]:
            tag = m.rcpt_tos[0].partition("@")[0] if m.rcpt_tos else ""
            if tag.startswith(run_id):
                seen[tag] = (m.received.timestamp(), m.tls_version)
        pos = len(messages)
        await asyncio.sleep(0.05)
    return seen


class Sink:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=sink_main, args=(child,), daemon=True)
        self.proc.start()
        while not self.conn.poll(0.5):  # e.g. port 53 taken by another run: say so, not hang
            if not self.proc.is_alive():
                raise RuntimeError(f"the sink process failed (exit {self.proc.exitcode}); "
                                   f"is {DNS_HOST}:53 free?")
        info = self.conn.recv()
        self.smtp_port: int = info["smtp_port"]
        self.ca_file = Path(info["ca_file"])

    def ask(self, *request: Any) -> Any:
        self.conn.send(request)
        return self.conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop",))
        self.proc.join(10)


# -- memory of a process tree ------------------------------------------------------------------


def _tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                todo += [int(c) for c in
                         Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return pids


def _kib(path: str, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return 0


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(root: int | None) -> float:
    """CPU time (user + system) of ``root``'s process tree so far, including children it has
    reaped (Postfix's master reaps its short-lived smtp and cleanup processes)."""
    if root is None:
        return 0.0
    total = 0
    for pid in _tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / _TICK


def own_cpu() -> float:
    """This process's CPU time: the clients (and the samplers, which cost next to nothing)."""
    t = os.times()
    return t.user + t.system


@dataclass
class Cpu:
    """CPU seconds of one burst: the measured side, the sink, the clients; wall seconds."""

    side: float
    sink: float
    clients: float
    wall: float


class MemorySampler:
    """Peak of the summed RSS (and PSS) of ``root()``'s process tree, every 0.2 s."""

    def __init__(self, root: Any) -> None:
        self.root = root  # callable: the pid at the top, or None before it exists
        self.rss = self.pss = self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            root = self.root()
            if root is None:
                continue
            pids = _tree(root)
            rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids)
            if rss > self.rss:
                self.rss, self.processes = rss, len(pids)
                self.pss = max(self.pss, sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:")
                                             for p in pids))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# -- the clients -------------------------------------------------------------------------------


async def send(port: int, tags: list[str], args: argparse.Namespace,
               rate: float | None = None) -> tuple[float, dict[str, float]]:
    """Send one message per tag over ``args.clients`` STARTTLS connections: all at once, or
    paced at ``rate`` per second (open loop: a message waits if every connection is busy).
    Returns the start time and each message's 250 time."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the relay's self-signed certificate, Postfix's lab one
    filler = ("x" * 76 + "\r\n") * max(args.size // 78, 1)
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    accepted: dict[str, float] = {}

    async def connect() -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
        await smtp.connect()
        await smtp.starttls(tls_context=ctx)
        return smtp

    async def client(smtp: aiosmtplib.SMTP) -> None:
        while (tag := await queue.get()) is not None:
            data = f"From: bench@partner.example\r\nSubject: {tag}\r\n\r\n{filler}".encode()
            await smtp.sendmail("bench@partner.example", [f"{tag}@corp.example"], data)
            accepted[tag] = time.time()
        await smtp.quit()

    if rate is None:
        start = time.time()
        for tag in tags:
            queue.put_nowait(tag)
        for _ in range(args.clients):
            queue.put_nowait(None)
        smtps = await asyncio.gather(*(connect() for _ in range(args.clients)))
        await asyncio.gather(*(client(s) for s in smtps))
        return start, accepted
    smtps = await asyncio.gather(*(connect() for _ in range(args.clients)))
    workers = [asyncio.create_task(client(s)) for s in smtps]
    start = time.time()
    for i, tag in enumerate(tags):
        await asyncio.sleep(max(start + i / rate - time.time(), 0))
        queue.put_nowait(tag)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return start, accepted


@dataclass
class Side:
    name: str
    port: int = 0
    root: Any = None  # callable: the pid at the top of the side's process tree, or None
    cpu: list[Cpu] = field(default_factory=list)  # per burst
    bursts: list[tuple[float, float, float]] = field(default_factory=list)  # acc, del, load
    burst_latency: list[float] = field(default_factory=list)
    paced_rate: float = 0.0
    paced_latency: list[float] = field(default_factory=list)
    rss_kib: int = 0
    pss_kib: int = 0
    processes: int = 0
    tls: set[str] = field(default_factory=set)
    dns_queries: int = 0
    messages: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def accepted_rate(self) -> float:
        return statistics.median(b[0] for b in self.bursts)

    @property
    def delivered_rate(self) -> float:
        return statistics.median(b[1] for b in self.bursts)


async def burst(side: Side, sink: Sink, args: argparse.Namespace, warmup: bool = False) -> None:
    """One burst of ``args.messages``: accepted and delivered rates, 250 -> delivered. A
    warm-up burst (``args.warmup`` messages) is sent and delivered the same way, and not
    counted: Postfix starts its smtpd and smtp processes on demand, the relay its pool and
    TLS sessions, and neither side's first burst should pay for that."""
    load = os.getloadavg()[0]
    await asyncio.to_thread(sink.ask, "dns")
    run_id = f"b{time.time_ns()}"
    tags = [f"{run_id}-{i}" for i in range(args.warmup if warmup else args.messages)]
    before = Cpu(cpu_seconds(side.root()), cpu_seconds(sink.proc.pid), own_cpu(), time.time())
    start, accepted = await send(side.port, tags, args)
    arrived = await asyncio.to_thread(sink.ask, "wait", run_id, len(tags), 600)
    after = Cpu(cpu_seconds(side.root()), cpu_seconds(sink.proc.pid), own_cpu(),
                max(t for t, _ in arrived.values()))
    if len(arrived) < len(tags):
        raise RuntimeError(f"{side.name}: {len(tags) - len(arrived)} messages never arrived")
    side.dns_queries += await asyncio.to_thread(sink.ask, "dns")
    side.messages += len(tags)
    if warmup:
        return
    side.cpu.append(Cpu(after.side - before.side, after.sink - before.sink,
                        after.clients - before.clients, after.wall - before.wall))
    side.bursts.append((len(tags) / (max(accepted.values()) - start),
                        len(tags) / (max(t for t, _ in arrived.values()) - start), load))
    side.burst_latency += [arrived[t][0] - accepted[t] for t in tags]
    side.tls |= {str(v) for _, v in arrived.values()}


async def paced(side: Side, sink: Sink, args: argparse.Namespace) -> None:
    """``args.paced`` messages at half the side's saturating (median delivered) rate."""
    side.paced_rate = args.paced_rate or side.delivered_rate / 2
    await asyncio.to_thread(sink.ask, "dns")
    run_id = f"p{time.time_ns()}"
    tags = [f"{run_id}-{i}" for i in range(args.paced)]
    _, accepted = await send(side.port, tags, args, rate=side.paced_rate)
    arrived = await asyncio.to_thread(sink.ask, "wait", run_id, len(tags), 600)
    if len(arrived) < len(tags):
        raise RuntimeError(f"{side.name}: {len(tags) - len(arrived)} paced messages lost")
    side.paced_latency = sorted(arrived[t][0] - accepted[t] for t in tags)
    side.tls |= {str(v) for _, v in arrived.values()}
    side.dns_queries += await asyncio.to_thread(sink.ask, "dns")
    side.messages += len(tags)


async def wait_greeting(port: int, proc: subprocess.Popen | None, timeout: float = 60,
                        log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            said = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"the relay exited before listening:\n{said}")
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            line = await reader.readline()
            writer.close()
            if line.startswith(b"220"):
                return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing greets on 127.0.0.1:{port}")


# -- the relay ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def relay_running(side: Side, sink: Sink, workdir: Path,
                        args: argparse.Namespace) -> AsyncIterator[None]:
    bundle = workdir / "bundle.toml"
    bundle.write_text(BUNDLE.format(port=sink.smtp_port))
    side.port = free_port()
    log = workdir / "relay.log"
    # The log goes through a pipe, as a service's goes to journald and Postfix's to its
    # postlogd, not straight into a file from the relay's event loop.
    with log.open("wb") as log_file:
        drain = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=log_file)
    assert drain.stdin is not None
    with drain.stdin:
        proc = subprocess.Popen(
            [*WRAP, sys.executable, "-m", "connectwiz", "relay", "--bundle", str(bundle),
             "--listen", f"127.0.0.1:{side.port}", "--spool", str(workdir / "spool"),
             "--nameserver", f"{DNS_HOST}:53", "--ca-file", str(sink.ca_file),
             "--hostname", "relay.bench.example", *args.relay_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=drain.stdin)
    relay_pid = proc.pid if not WRAP else None

    def root() -> int | None:
        nonlocal relay_pid
        if relay_pid is None:  # wrapped: the relay is the wrapper's child
            kids = _tree(proc.pid)[1:]
            relay_pid = kids[0] if kids else None
        return relay_pid

    side.root = root
    sampler = MemorySampler(root)
    try:
        await wait_greeting(side.port, proc, log=log)
        yield
    finally:
        sampler.stop()
        pid = root()
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        proc.wait(60)
        drain.wait(60)
    side.rss_kib, side.pss_kib, side.processes = sampler.rss, sampler.pss, sampler.processes
    text = log.read_text(errors="replace")
    per_worker = collections.Counter(re.findall(r" received worker=(\d+)", text))
    if per_worker:  # how evenly SO_REUSEPORT spread the connections
        side.notes.append("messages received per worker: " + ", ".join(
            f"{w}: {n}" for w, n in sorted(per_worker.items())))
    side.notes.append(f"delivery attempts with a verified certificate: "
                      f"{text.count('verified=True')}, over a reused session: "
                      f"{text.count('reused=True')}")


# -- Postfix -----------------------------------------------------------------------------------


def master_pid(instance: PostfixInstance) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((instance.root / "queue" / "pid" / "master.pid").read_text().split()[0])
    return None


@contextlib.asynccontextmanager
async def postfix_running(side: Side, sink: Sink, workdir: Path) -> AsyncIterator[None]:
    bundle = Bundle.from_text(BUNDLE.format(port=sink.smtp_port))
    exported = workdir / "export"
    exported.mkdir()
    for name, text in export_postfix(bundle.model).files.items():
        (exported / name).write_text(text)
    cert, key = await asyncio.to_thread(sink.ask, "issue", ["postfix.bench.example"])
    root = Path(tempfile.mkdtemp(prefix="connectwiz-postfix-bench-"))
    # Postfix resolves the route's name through the lab DNS, as the relay does; the transport
    # entry is what an admin writes next to the export: internal mail to the route, by name.
    instance = PostfixInstance(
        root, exported, (), sink.smtp_port, sink.ca_file, DNS_HOST,
        next_hops={"corp.example": f"[{ROUTE}]:{sink.smtp_port}"},
        extra=(f"smtpd_tls_cert_file = {cert}", f"smtpd_tls_key_file = {key}"))
    side.port = instance.port
    side.root = lambda: master_pid(instance)
    sampler = MemorySampler(side.root)
    try:
        await asyncio.to_thread(instance.start)
        yield
        side.notes.append(f"verified TLS connections to the sink in Postfix's log: "
                          f"{instance.log().count('Verified TLS connection established')}")
    finally:
        sampler.stop()
        await asyncio.to_thread(instance.stop)
        shutil.rmtree(root, ignore_errors=True)
    side.rss_kib, side.pss_kib, side.processes = sampler.rss, sampler.pss, sampler.processes


def _postfix_version() -> str:
    done = subprocess.run(["postconf", "-h", "mail_version"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip()


# -- report ------------------------------------------------------------------------------------


def _ms(latencies: list[float], pct: int) -> str:
    return f"{statistics.quantiles(sorted(latencies), n=100)[pct - 1] * 1000:.0f} ms"


def side_label(side: Side) -> str:
    return "relay" if side.name.startswith("connectwiz") else "Postfix"


def report(sides: list[Side], args: argparse.Namespace) -> None:
    for s in sides:
        print(f"{s.name}: sink saw {sorted(s.tls)}")
        for (acc, dlv, load), cpu in zip(s.bursts, s.cpu, strict=True):
            print(f"  burst   accepted {acc:7.1f} msg/s, delivered {dlv:7.1f} msg/s "
                  f"(load average {load:.2f})")
            # Load-independent: CPU per message, and how many cores each process kept busy
            # (a process near 1.0 that cannot use more is what limits the burst).
            ms = 1000 / args.messages
            print(f"          CPU per message: {side_label(s)} {cpu.side * ms:5.2f} ms, "
                  f"sink {cpu.sink * ms:5.2f} ms, clients {cpu.clients * ms:5.2f} ms; "
                  f"cores busy: "
                  f"{cpu.side / cpu.wall:.2f}, {cpu.sink / cpu.wall:.2f}, "
                  f"{cpu.clients / cpu.wall:.2f}")
        side_cpu = statistics.median(c.side for c in s.cpu) / args.messages * 1000
        print(f"  median  CPU per message {side_cpu:.2f} ms (the side's whole process tree, "
              "receipt and delivery)")
        print(f"  median  accepted {s.accepted_rate:7.1f} msg/s, delivered "
              f"{s.delivered_rate:7.1f} msg/s; 250 -> delivered in the bursts: p50 "
              f"{_ms(s.burst_latency, 50)}, p99 {_ms(s.burst_latency, 99)}")
        print(f"  paced at {s.paced_rate:5.1f} msg/s ({args.paced} messages): 250 -> delivered "
              f"p50 {_ms(s.paced_latency, 50)}, p99 {_ms(s.paced_latency, 99)}, "
              f"max {s.paced_latency[-1] * 1000:.0f} ms")
        print(f"  peak memory, {s.processes} processes: RSS {s.rss_kib / 1024:.1f} MiB, "
              f"PSS {s.pss_kib / 1024:.1f} MiB")
        print(f"  DNS queries at the lab server: {s.dns_queries} for {s.messages} messages")
        for note in s.notes:
            print(f"  {note}")
    if len(sides) == 2:
        relay, postfix = sides
        rounds = [(r[0] / p[0], r[1] / p[1]) for r, p in zip(relay.bursts, postfix.bursts,
                                                             strict=True)]
        print("ratio relay/Postfix per round (accepted, delivered): "
              + ", ".join(f"{a:.2f}x/{d:.2f}x" for a, d in rounds))
        print(f"ratio relay/Postfix: accepted {statistics.median(a for a, _ in rounds):.2f}x, "
              f"delivered {statistics.median(d for _, d in rounds):.2f}x (medians); "
              f"peak RSS {relay.rss_kib / postfix.rss_kib:.2f}x, "
              f"PSS {relay.pss_kib / postfix.pss_kib:.2f}x")
        cpu = [r.side / p.side for r, p in zip(relay.cpu, postfix.cpu, strict=True)]
        print(f"CPU per message relay/Postfix: {statistics.median(cpu):.2f}x (median; rounds "
              + ", ".join(f"{c:.2f}x" for c in cpu) + ")")


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}")
    print(f"messages: {args.rounds} rounds of {args.messages} x {args.size} B (after a warm-up "
          f"of {args.warmup}) from "
          f"{args.clients} clients per side; STARTTLS in, Enforced TLS Strict out to {ROUTE} "
          "(looked up in the lab DNS)")
    with_postfix = not args.relay_only
    if not with_postfix:
        print("postfix: left out (--relay-only)")
    elif POSTFIX is None:
        print("postfix: not installed; comparison skipped")
        with_postfix = False
    elif os.geteuid() != 0 or shutil.which("unshare") is None:
        print("postfix: installed, but starting it with the lab DNS needs root and unshare; "
              "comparison skipped")
        with_postfix = False
    sink = await asyncio.to_thread(Sink)
    relay, postfix = Side("connectwiz relay"), Side("Postfix " + _postfix_version())
    sides = [relay, postfix] if with_postfix else [relay]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "relay").mkdir()
            (Path(tmp) / "postfix").mkdir()
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(
                    relay_running(relay, sink, Path(tmp) / "relay", args))
                if with_postfix:
                    await stack.enter_async_context(
                        postfix_running(postfix, sink, Path(tmp) / "postfix"))
                # Both run throughout; their bursts alternate (the order too), so that each
                # round compares the two under about the same load of the shared machine.
                if args.warmup:
                    for side in sides:
                        await burst(side, sink, args, warmup=True)
                # An even number of rounds: each side goes first, and each follows the
                # other, equally often.
                for n in range(args.rounds):
                    for side in (sides if n % 2 == 0 else sides[::-1]):
                        await burst(side, sink, args)
                for side in sides:
                    await paced(side, sink, args)
    finally:
        sink.close()
    report(sides, args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=500, help="messages in each burst")
    p.add_argument("--rounds", type=int, default=4, help="bursts per side, alternating")
    p.add_argument("--warmup", type=int, default=200,
                   help="messages of each side's first burst, not counted (0: none)")
    p.add_argument("--clients", type=int, default=20, help="concurrent client connections")
    p.add_argument("--size", type=int, default=4096, help="approximate body bytes")
    p.add_argument("--paced", type=int, default=300, help="messages in the paced run")
    p.add_argument("--paced-rate", type=float, default=0.0,
                   help="msg/s for the paced run (default: half the side's delivered rate)")
    p.add_argument("--relay-only", action="store_true",
                   help="measure the relay alone (e.g. under a profiler)")
    p.add_argument("--relay-arg", dest="relay_args", action="append", default=[],
                   help="extra option for connectwiz relay (repeat), e.g. --relay-arg=--workers=1")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
