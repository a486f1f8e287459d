"""Relay throughput: N messages from C concurrent clients, STARTTLS on both sides, into a sink.

The relay runs as its own process (``connectwiz relay``), exactly as deployed, with a fresh
spool (every message fsync'd before 250). Clients (aiosmtplib, STARTTLS) and the sink (the
lab's trusted internal server ``mail.corp.example``, reached as an inbound route with
Enforced TLS, Strict: verified chain and name) run in this process. Prints:

- messages/s accepted (first connect to last 250) and delivered (first connect to last
  message at the sink),
- p50 / p99 / max latency from the client's 250 to the sink's receipt of the message,
- the relay process's peak resident memory (VmHWM),
- a Postfix comparison when ``postfix`` is installed, or says it was skipped.

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

from connectwiz.lab import run_in_thread

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


async def run(args: argparse.Namespace) -> None:
    with run_in_thread(smtp_port=0) as lab, tempfile.TemporaryDirectory() as tmp:
        proc, port = await start_relay(lab, Path(tmp), args.workers)
        try:
            run_id = f"b{int(time.time())}"
            tags = [f"{run_id}-{i}" for i in range(args.messages)]
            accepted: dict[str, float] = {}
            start = time.time()
            per_client = [tags[i::args.clients] for i in range(args.clients)]
            await asyncio.gather(*(client(port, t, args.size, accepted) for t in per_client))
            all_accepted = time.time()

            def arrived() -> bool:
                return sum(1 for m in list(lab.messages)
                           if m.rcpt_tos and m.rcpt_tos[0].startswith(run_id)) >= len(tags)

            if not await asyncio.to_thread(lab.wait_for, arrived, 600):
                raise RuntimeError("not every message reached the sink within 600 s")
            delivered = {m.rcpt_tos[0].split("@")[0]: m.received.timestamp()
                         for m in list(lab.messages) if m.rcpt_tos[0].startswith(run_id)}
            tls = {m.tls_version for m in list(lab.messages) if m.rcpt_tos[0].startswith(run_id)}
            rss = peak_rss_kib(proc.pid)
        finally:
            proc.terminate()
            await proc.wait()
    latencies = sorted(delivered[t] - accepted[t] for t in tags)
    last = max(delivered.values())
    q = statistics.quantiles(latencies, n=100)
    print(f"machine: {platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}")
    print(f"messages: {args.messages} x {args.size} B from {args.clients} clients, "
          f"{args.workers} delivery workers; TLS in and out (sink saw {sorted(tls)})")
    print(f"accepted: {args.messages / (all_accepted - start):8.1f} msg/s "
          f"(all 250s after {all_accepted - start:.2f} s)")
    print(f"delivered: {args.messages / (last - start):7.1f} msg/s "
          f"(last delivery after {last - start:.2f} s)")
    print(f"250 -> delivered: p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms")
    print(f"relay peak RSS: {rss / 1024:.1f} MiB")
    if shutil.which("postfix") or Path("/usr/sbin/postfix").exists():
        print("postfix: installed, but a side-by-side run needs root and a dedicated "
              "configuration; not automated here (skipped)")
    else:
        print("postfix: not installed; comparison skipped")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=500)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--workers", type=int, default=50, help="relay delivery workers")
    p.add_argument("--size", type=int, default=4096, help="approximate body bytes")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
