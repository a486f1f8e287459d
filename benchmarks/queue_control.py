"""Queue control and metrics on a large queue: what ``connectwiz queue`` and a Prometheus
scrape cost when many messages wait.

Builds a spool with N deferred messages (queue files and state files, as the relay writes
them), then times, in this process:

- baseline: listing the queue folder (``os.listdir``), the least any listing must do,
- one scrape of the relay's metrics (queue sizes and oldest age per state: folder
  listings only, the age comes from the ids),
- ``queue list`` (every state file read and parsed),
- ``queue hold`` of every message, then ``queue release`` of every message, as the
  stopped-relay path makes them (the running relay makes the same calls).

    .venv/bin/python benchmarks/queue_control.py [--messages 10000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from connectwiz.metrics import RelayMetrics
from connectwiz.relay import queuectl
from connectwiz.relay.queuefile import QueueEntry, Recipient
from connectwiz.relay.spool import Spool, new_message_id


def timed(what: str, fn: Callable[[], Any], base: float | None = None) -> float:
    start = time.perf_counter()
    fn()
    took = time.perf_counter() - start
    ratio = f"  ({took / base:.1f}x the baseline)" if base else ""
    print(f"{what:<44} {took * 1000:9.1f} ms{ratio}")
    return took


def build(spool: Spool, n: int) -> None:
    body = b"From: a@corp.example\r\nSubject: x\r\n\r\n" + b"x" * 2000 + b"\r\n"
    for i in range(n):
        entry = QueueEntry(id=new_message_id(), mail_from="a@corp.example",
                           recipients=[Recipient(f"r{i}@partner{i % 50}.example")],
                           received_at=time.time(), attempts=1, next_attempt=time.time() + 3600)
        spool.accept(entry, body)
        spool.write_atomic(spool.root / "deferred" / f"{entry.id}.json", entry.to_json(),
                           durable=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "spool"
        spool = Spool(root)
        spool.create()
        start = time.perf_counter()
        build(spool, args.messages)
        print(f"{args.messages} deferred messages built in {time.perf_counter() - start:.1f} s")
        metrics = RelayMetrics(root)
        base = timed("baseline: os.listdir(queue/)", lambda: os.listdir(root / "queue"))
        timed("metrics scrape (generate_latest)", lambda: generate_latest(metrics.registry),
              base)
        timed("queue list (all states, parsed)", lambda: queuectl.list_queue(spool), base)
        for op in ("hold", "release"):
            request = {"op": op}
            timed(f"queue {op} of every message (stopped relay)", lambda r=request: (
                queuectl.apply(spool, r, queuectl.targets(spool, r), "bench.example")), base)
        assert len(queuectl.state_ids(spool, "incoming")) == args.messages


if __name__ == "__main__":
    main()
