"""The wizard's Mail flow step on a large message log: is the screen live while it reads?

Builds a spool whose log holds N messages (default 100,000: received, one or two
attempts, a fate; over 300 partner domains and the last 7 days; 2% deferred), then:

- baseline: listing the log folder and stat-ing every file (the least any reader does),
- a cold scan (``FlowScanner.scan``: every file read and parsed), a warm one (nothing
  changed: stat only) and one after 1% of the files changed,
- the wizard headless (Textual's run_test) opening Mail flow on that spool: the event
  loop's lag (how late a 10 ms timer fires) while the worker reads the log, against the
  same measurement with nothing loading, and, while it reads the log again with the rows
  shown, how long a Down key takes to move the cursor.

    .venv/bin/python benchmarks/mailflow.py [--messages 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from textual import events
from textual.app import App
from textual.widgets import DataTable

from connectwiz.bundle import Bundle
from connectwiz.probe.options import NetworkOptions
from connectwiz.relay.mailflow import FlowScanner
from connectwiz.tui import make_app
from connectwiz.tui.screens.mailflow import MailFlowScreen

ERROR = "TLS required but the certificate is not accepted: certificate expired on 2026-10-23"


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_log(root: Path, count: int, now: datetime) -> None:
    log = root / "log"
    log.mkdir(parents=True)
    rng = random.Random(1)
    for n in range(count):
        domain = f"partner{n % 300:03d}.example"
        rcpt = f"user{n}@{domain}"
        at = now - timedelta(seconds=rng.uniform(0, 7 * 86400))
        deferred = n % 50 == 0
        attempt = {"event": "attempt", "at": _iso(at), "host": f"mx.{domain}",
                   "address": "127.0.0.12", "port": 25, "definition": "Enforced TLS - Strict",
                   "option": "enforced", "encryption_mode": "strict", "min_tls": "1.2",
                   "recipients": [rcpt], "tls_version": "TLSv1.3",
                   "tls_cipher": "TLS_AES_256_GCM_SHA384", "certificate_verified": not deferred,
                   "reply": "250 2.0.0 Ok", "outcome": "temporary" if deferred else "delivered",
                   "error": ERROR if deferred else "", "policy_type": "no-policy-found",
                   "policy_domain": domain}
        records = [{"event": "received", "at": _iso(at - timedelta(seconds=1)),
                    "client_ip": "10.0.0.5", "mail_from": "alice@corp.example",
                    "recipients": [rcpt], "tls_version": "TLSv1.3", "result": "accepted",
                    "size": 2048}, attempt]
        if deferred:
            records += [attempt, {"event": "deferred", "at": _iso(at), "recipients": [rcpt],
                                  "reason": ERROR}]
        else:
            records.append({"event": "delivered", "at": _iso(at), "recipients": [rcpt]})
        (log / f"M{n:08d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def timed(what: str, fn, base: float | None = None) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    took = time.perf_counter() - start
    ratio = f"  ({took / base:.1f}x the baseline)" if base else ""
    print(f"{what:<48} {took * 1000:9.1f} ms{ratio}")
    return took


async def loop_lag(seconds: float | None, until=None) -> list[float]:  # type: ignore[no-untyped-def]
    """How late a 10 ms sleep wakes, for ``seconds`` or until ``until()`` is true."""
    lags, start = [], time.perf_counter()
    while (until is None and time.perf_counter() - start < (seconds or 0)) or \
            (until is not None and not until()):
        t0 = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - t0 - 0.01)
    return lags


def show(what: str, lags: list[float]) -> None:
    lags = sorted(lags) or [0.0]
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    print(f"{what:<48} median {statistics.median(lags) * 1000:6.1f} ms  "
          f"p99 {p99 * 1000:6.1f} ms  max {lags[-1] * 1000:6.1f} ms  ({len(lags)} ticks)")


async def key(app: App[None], name: str) -> None:
    """A key as the terminal driver delivers it (Pilot.press also waits for the whole
    process to be idle, which a busy worker thread never is)."""
    app.post_message(events.Key(name, name if len(name) == 1 else None))
    await asyncio.sleep(0)


async def reload(app: App[None], screen: MailFlowScreen) -> None:
    await key(app, "g")
    while not screen.loading:
        await asyncio.sleep(0.001)


async def wizard(root: Path, bundle: Path) -> None:
    app = make_app(bundle, NetworkOptions(), blink=False, spool=root)
    app.animation_level = "none"
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        show("event loop lag, idle (baseline)", await loop_lag(2.0))
        start = time.perf_counter()
        await key(app, "m")
        while not (isinstance(app.screen, MailFlowScreen) and app.screen.loading):
            await asyncio.sleep(0.001)
        screen = app.screen
        lags = await loop_lag(None, until=lambda: not screen.loading)
        print(f"{'Mail flow read, first time (worker)':<48} "
              f"{(time.perf_counter() - start) * 1000:9.1f} ms  "
              f"({len(screen.flows)} domains)")
        show("event loop lag while reading (worker)", lags)
        # Read everything again with the rows on screen, pressing Down meanwhile: how long
        # from the key event (posted as the terminal driver posts it) to the cursor moving.
        table = screen.query_one(DataTable)
        screen.scanner = FlowScanner(root)
        start = time.perf_counter()
        await reload(app, screen)
        presses: list[float] = []
        while screen.loading:
            row = table.cursor_row
            t0 = time.perf_counter()
            await key(app, "down")
            while table.cursor_row == row and time.perf_counter() - t0 < 5:
                await asyncio.sleep(0.001)
            presses.append(time.perf_counter() - t0)
            await asyncio.sleep(0.1)
        print(f"{'Mail flow read again, cold (worker)':<48} "
              f"{(time.perf_counter() - start) * 1000:9.1f} ms")
        show("Down key to cursor moved, while reading", presses)
        start = time.perf_counter()
        await reload(app, screen)
        await loop_lag(None, until=lambda: not screen.loading)
        print(f"{'Mail flow refresh (nothing changed)':<48} "
              f"{(time.perf_counter() - start) * 1000:9.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="cw-flow-") as tmp:
        root = Path(tmp) / "spool"
        start = time.perf_counter()
        build_log(root, args.messages, now)
        print(f"built a log of {args.messages:,} messages in {time.perf_counter() - start:.1f} s")
        base = timed("baseline: list + stat every log file",
                     lambda: [e.stat() for e in os.scandir(root / "log")])
        scanner = FlowScanner(root)
        timed("scan, cold (every file parsed)", lambda: scanner.scan(now), base)
        timed("scan, warm (nothing changed)", lambda: scanner.scan(now), base)
        for path in sorted((root / "log").iterdir())[::100]:
            with open(path, "a") as fh:
                fh.write(json.dumps({"event": "delivered", "at": _iso(now),
                                     "recipients": []}) + "\n")
        timed("scan after 1% of the files changed", lambda: scanner.scan(now), base)
        bundle = Path(tmp) / "bundle.toml"
        Bundle.load_or_new(bundle).save()
        asyncio.run(wizard(root, bundle))


if __name__ == "__main__":
    main()
