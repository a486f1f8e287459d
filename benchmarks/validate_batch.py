"""Validation batch benchmark: is a batch about as slow as its slowest domain, not the sum?

Starts the lab with N extra benchmark domains (``dNNNN.bench.example``), each with its own
trusted server on its own loopback address that waits ``--delay`` seconds before greeting.
The lab runs in a child process: real partner servers do their DNS answers and TLS handshakes
on their own machines, so their CPU time must not compete with the validator's for the GIL.
Validates them with concurrency 50 and with concurrency 1, times a few single-domain runs,
then (unless ``--big 0``) a batch of ``--big`` domains at concurrency 50. Prints figures only.

    .venv/bin/python benchmarks/validate_batch.py [--count 50] [--big 1000] [--delay 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from connectwiz.lab import run_in_thread
from connectwiz.lab.zones import BENCH_SUFFIX
from connectwiz.probe import NetworkOptions, Target, validate_targets

TARGET_RATIO = 1.5  # concurrent wall time / slowest single domain


@dataclass(frozen=True)
class LabInfo:
    nameserver: tuple[str, int]
    smtp_port: int
    ca_file: Path
    domains: list[str]  # the benchmark domains, sorted


def _serve_lab(conn: Connection, kwargs: dict[str, Any]) -> None:
    """Child process: run the lab, report where it is, serve until the parent says stop."""
    with run_in_thread(**kwargs) as lab:
        names = sorted(n for n in lab.domains if n.endswith(BENCH_SUFFIX))
        conn.send(LabInfo(lab.nameserver, lab.smtp_port, lab.ca_file, names))
        conn.recv()


@contextlib.contextmanager
def lab_process(**kwargs: Any) -> Iterator[LabInfo]:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve_lab, args=(child, kwargs), daemon=True)
    process.start()
    try:
        if not parent.poll(120):
            raise RuntimeError("the lab did not start within 120 s")
        yield parent.recv()
    finally:
        if process.is_alive():
            parent.send("stop")
        process.join(30)


def _options(lab: LabInfo, concurrency: int, timeout: float) -> NetworkOptions:
    return NetworkOptions(nameserver=lab.nameserver, smtp_port=lab.smtp_port,
                          ca_file=lab.ca_file, timeout=timeout, concurrency=concurrency)


def _timed(targets: list[Target], options: NetworkOptions) -> tuple[float, Counter[str]]:
    started = time.perf_counter()
    results = asyncio.run(validate_targets(targets, options))
    wall = time.perf_counter() - started
    return wall, Counter(str(r.status) for r in results)


def _bench_targets(lab: LabInfo, count: int) -> list[Target]:
    return [Target.domain(n) for n in lab.domains[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="domains in the main comparison")
    parser.add_argument("--big", type=int, default=1000, help="large batch size (0: skip)")
    parser.add_argument("--delay", type=float, default=1.0, help="greeting delay of each server")
    parser.add_argument("--singles", type=int, default=10, help="single-domain runs to time")
    parser.add_argument("--repeat", type=int, default=3, help="concurrent runs to time")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {platform.system()} {platform.release()}")
    started = time.perf_counter()
    with lab_process(smtp_port=0, greeting_delay=args.delay,
                     extra_slow_domains=max(args.count, args.big)) as lab:
        print(f"lab with {max(args.count, args.big)} benchmark domains up in "
              f"{time.perf_counter() - started:.1f} s; greeting delay {args.delay:g} s")
        targets = _bench_targets(lab, args.count)

        singles = []
        for target in targets[:args.singles]:
            wall, _ = _timed([target], _options(lab, 1, args.timeout))
            singles.append(wall)
        slowest = max(singles)
        print(f"single domain ({len(singles)} runs): fastest {min(singles):.2f} s, "
              f"slowest {slowest:.2f} s")

        # Several runs: the machine may be shared, the best run shows what the code can do.
        runs = [_timed(targets, _options(lab, 50, args.timeout)) for _ in range(args.repeat)]
        walls = sorted(wall for wall, _ in runs)
        concurrent, statuses = walls[0], runs[0][1]
        print(f"{len(targets)} domains, concurrency 50: best {concurrent:.2f} s, median "
              f"{statistics.median(walls):.2f} s of {len(walls)} runs  {dict(statuses)}")
        sequential, statuses = _timed(targets, _options(lab, 1, args.timeout))
        print(f"{len(targets)} domains, concurrency 1:  {sequential:.2f} s  {dict(statuses)}")
        ratio = concurrent / slowest
        verdict = "OK" if ratio <= TARGET_RATIO else "ABOVE TARGET"
        print(f"sequential / concurrent: {sequential / concurrent:.1f}x")
        median = statistics.median(walls) / slowest
        print(f"concurrent / slowest single: {ratio:.2f} best, {median:.2f} median "
              f"(target <= {TARGET_RATIO}) {verdict}")

        if args.big:
            big = _bench_targets(lab, args.big)
            wall, statuses = _timed(big, _options(lab, 50, args.timeout))
            ideal = len(big) / 50 * slowest
            print(f"{len(big)} domains, concurrency 50: {wall:.2f} s  {dict(statuses)}; "
                  f"{len(big) / wall:.0f} domains/s; ideal (batches of 50 x slowest single) "
                  f"{ideal:.1f} s")


if __name__ == "__main__":
    main()
