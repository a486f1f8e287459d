"""Relay throughput: N messages from C concurrent clients, STARTTLS on both sides, into a sink.

The relay runs as its own process (``connectwiz relay``), exactly as deployed, with a fresh
spool (every message fsync'd before 250). Clients (aiosmtplib, STARTTLS) and the sink (the
lab's trusted internal server ``mail.corp.example``, reached as an inbound route with
Enforced TLS, Strict: verified chain and name) run in this process. Prints:

- messages/s accepted (first connect to last 250) and delivered (first connect to last
  message at the sink),
- p50 / p99 / max latency from the client's 250 to the sink's receipt of the message,
- the relay process's peak resident memory (VmHWM),
- the same figures for a real Postfix (when installed and run as root) configured from
  ``connectwiz export --format postfix`` for the same bundle, with the wiring of
  tests/interop/postfix.py (no DNS: a transport map to the sink's loopback address), a
  lab-CA certificate for its STARTTLS, delivering with ``secure`` to the same sink.

    .venv/bin/python benchmarks/relay_throughput.py [--messages 500] [--clients 20] [--size 4096]

``RELAY_PROFILE="-m cProfile -o relay.prof"`` runs the relay process under a profiler.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib

from connectwiz.bundle import Bundle
from connectwiz.bundle.postfix import export_postfix
from connectwiz.lab import run_in_thread

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.interop.postfix
from tests.interop.postfix import POSTFIX, PostfixInstance, running

PROFILE = os.environ.get("RELAY_PROFILE", "").split()
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


async def start_relay(lab, workdir: Path, workers: int) -> tuple[asyncio.subprocess.Process, int]:
    bundle = workdir / "bundle.toml"
    bundle.write_text(BUNDLE.format(port=lab.smtp_port))
    host, port = lab.nameserver
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *PROFILE, "-m", "connectwiz", "relay", "--bundle", str(bundle),
        "--listen", "127.0.0.1:0", "--spool", str(workdir / "spool"), "--log-json",
        "--nameserver", f"{host}:{port}", "--smtp-port", str(lab.smtp_port),
        "--ca-file", str(lab.ca_file), "--concurrency", str(workers),
        "--max-connections", "1000", "--hostname", "relay.bench.example",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        event = json.loads(line)
        if event["event"] == "listening":
            # Keep draining the log so the relay never blocks on a full pipe.
            asyncio.get_running_loop().create_task(_drain(proc.stderr))
            return proc, event["port"]
    raise RuntimeError("the relay exited before listening")


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def client(port: int, tags: list[str], size: int, accepted: dict[str, float]) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the relay's self-signed certificate
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
    await smtp.connect()
    await smtp.starttls(tls_context=ctx)
    filler = ("x" * 76 + "\r\n") * max(size // 78, 1)
    for tag in tags:
        data = f"From: bench@partner.example\r\nSubject: {tag}\r\n\r\n{filler}".encode()
        await smtp.sendmail("bench@partner.example", [f"{tag}@corp.example"], data)
        accepted[tag] = time.time()
    await smtp.quit()


async def measure(lab, port: int, args: argparse.Namespace) -> dict[str, object]:
    """Send the burst to ``port``; wait until the sink has every message; the figures."""
    run_id = f"b{time.time_ns()}"
    tags = [f"{run_id}-{i}" for i in range(args.messages)]
    accepted: dict[str, float] = {}
    start = time.time()
    per_client = [tags[i::args.clients] for i in range(args.clients)]
    await asyncio.gather(*(client(port, t, args.size, accepted) for t in per_client))
    all_accepted = time.time()

    def mine() -> list:
        return [m for m in list(lab.messages) if m.rcpt_tos and m.rcpt_tos[0].startswith(run_id)]

    if not await asyncio.to_thread(lab.wait_for, lambda: len(mine()) >= len(tags), 600):
        raise RuntimeError("not every message reached the sink within 600 s")
    delivered = {m.rcpt_tos[0].split("@")[0]: m.received.timestamp() for m in mine()}
    latencies = sorted(delivered[t] - accepted[t] for t in tags)
    return {"start": start, "accepted": all_accepted, "last": max(delivered.values()),
            "latencies": latencies, "tls": sorted({str(m.tls_version) for m in mine()})}


def report(name: str, figures: dict, args: argparse.Namespace, rss_kib: int | None) -> None:
    start, latencies = figures["start"], figures["latencies"]
    q = statistics.quantiles(latencies, n=100)
    print(f"{name}: sink saw {figures['tls']}")
    print(f"  accepted: {args.messages / (figures['accepted'] - start):8.1f} msg/s "
          f"(all 250s after {figures['accepted'] - start:.2f} s)")
    print(f"  delivered: {args.messages / (figures['last'] - start):7.1f} msg/s "
          f"(last delivery after {figures['last'] - start:.2f} s)")
    print(f"  250 -> delivered: p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms")
    if rss_kib is not None:
        print(f"  peak RSS: {rss_kib / 1024:.1f} MiB")


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}")
    print(f"messages: {args.messages} x {args.size} B from {args.clients} clients; "
          "STARTTLS in, Enforced TLS Strict out")
    with run_in_thread(smtp_port=0) as lab, tempfile.TemporaryDirectory() as tmp:
        proc, port = await start_relay(lab, Path(tmp), args.workers)
        try:
            figures = await measure(lab, port, args)
            rss = peak_rss_kib(proc.pid)
        finally:
            proc.terminate()
            await proc.wait()
        report(f"connectwiz relay ({args.workers} delivery workers)", figures, args, rss)
        if POSTFIX is None:
            print("postfix: not installed; comparison skipped")
        elif os.geteuid() != 0:
            print("postfix: installed, but starting an instance needs root; comparison skipped")
        else:
            await run_postfix(lab, Path(tmp), args)


async def run_postfix(lab, workdir: Path, args: argparse.Namespace) -> None:
    bundle = Bundle.from_text(BUNDLE.format(port=lab.smtp_port))
    exported = workdir / "export"
    exported.mkdir()
    for name, text in export_postfix(bundle.model).files.items():
        (exported / name).write_text(text)
    sink = lab.address_of("mail.corp.example")
    cert, key = lab.ca.issue(["postfix.bench.example"])
    root = Path(tempfile.mkdtemp(prefix="connectwiz-postfix-bench-"))
    instance = PostfixInstance(
        root, exported, {"corp.example": (sink, lab.smtp_port)}, Path(lab.ca_file),
        rekey={f"[mail.corp.example]:{lab.smtp_port}": f"[{sink}]:{lab.smtp_port}"},
        extra=(f"smtpd_tls_cert_file = {cert}", f"smtpd_tls_key_file = {key}",
               "default_process_limit = 100"))
    try:
        with running(instance):
            figures = await measure(lab, instance.port, args)
            verified = instance.log().count("Verified TLS connection established")
        report("postfix (same bundle via export --format postfix; default concurrency)",
               figures, args, None)
        print(f"  verified TLS connections to the sink in Postfix's log: {verified}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=500)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--workers", type=int, default=50, help="relay delivery workers")
    p.add_argument("--size", type=int, default=4096, help="approximate body bytes")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
