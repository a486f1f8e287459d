"""``--workers N``: relay processes sharing one port and one spool."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiosmtplib
import pytest

from .conftest import body, lab_messages, token, wait_lab
from .test_process import BUNDLE, start_relay

pytestmark = pytest.mark.network


def _children(pid: int) -> set[int]:
    return {int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()}


async def test_workers_share_the_port_and_the_spool_and_die_with_the_parent(lab,
                                                                            tmp_path) -> None:
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port))
    relay = await start_relay(lab, bundle, spool, "--workers", "2")
    try:
        listening = [await relay.wait_event("listening", n) for n in (1, 2)]
        assert {e["worker"] for e in listening} == {0, 1}
        assert listening[0]["port"] == listening[1]["port"]  # SO_REUSEPORT
        workers = _children(relay.proc.pid)
        assert len(workers) == 2

        tags = [token() for _ in range(20)]

        async def one(tag: str) -> None:  # a connection each: the kernel spreads them
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
            await client.connect()
            await client.sendmail("x@partner.example", [f"bob-{tag}@corp.example"], body(tag))
            await client.quit()

        await asyncio.gather(*(one(tag) for tag in tags))
        assert await wait_lab(lab, lambda: all(lab_messages(lab, t) for t in tags), timeout=30)
        await relay.wait_event("done", count=len(tags))
        received = [e for e in relay.events if e.get("event") == "received"]
        assert {e["worker"] for e in received} == {0, 1}  # both processes took mail
        assert all(len(lab_messages(lab, t)) == 1 for t in tags)  # each delivered once

        await relay.kill()  # SIGKILL to the parent: the workers must not outlive it
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, "a worker outlived its parent"
            await asyncio.sleep(0.05)
    finally:
        await relay.kill()


async def test_a_worker_dying_on_its_own_stops_the_relay_with_status_1(lab, tmp_path) -> None:
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port))
    relay = await start_relay(lab, bundle, spool, "--workers", "2")
    try:
        workers = sorted(_children(relay.proc.pid))
        os.kill(workers[-1], signal.SIGKILL)
        # The other worker is stopped and the spool left for the next start to recover.
        assert await relay.wait_exit() == 1
        assert any("exited with status -9; stopping the others" in line
                   for line in relay.stderr_lines)
        assert not Path(f"/proc/{workers[0]}").exists()  # stopped and reaped by the parent
    finally:
        await relay.kill()


async def test_without_the_option_the_relay_runs_a_worker_per_core(lab, tmp_path) -> None:
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port))
    relay = await start_relay(lab, bundle, spool)
    try:
        cores = len(os.sched_getaffinity(0))
        assert (await relay.wait_event("started"))["workers"] == cores
        if cores > 1:
            assert len(_children(relay.proc.pid)) == cores
    finally:
        await relay.kill()
