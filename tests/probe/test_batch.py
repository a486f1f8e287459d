"""validate_targets' scheduling guarantees, with the per-host probe replaced by a controllable
stand-in (no sockets: what is tested here is the batch logic itself)."""

from __future__ import annotations

import asyncio

import pytest

from connectwiz.probe import NetworkOptions, Status, Target, validate_targets
from connectwiz.probe.results import HostResult


class FakeProbes:
    """Probes that stay in flight until released, counting how many run at once."""

    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0
        self.started: list[tuple[str, int]] = []
        self.emails: list[tuple[int, str | None]] = []
        self.release = asyncio.Event()

    async def __call__(self, host, addresses, port, preference, settings,
                       lookup_error=None) -> HostResult:
        self.started.append((host, port))
        self.emails.append((port, settings.email))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.release.wait()
        finally:
            self.active -= 1
        return HostResult(host, addresses[0], port, preference, Status.STRICT, "fake")


@pytest.fixture
def fake(monkeypatch) -> FakeProbes:
    probes = FakeProbes()
    monkeypatch.setattr("connectwiz.probe.batch.probe_host", probes)
    return probes


async def _settle(rounds: int = 100) -> None:
    """Let every runnable task run until it blocks (no I/O is involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0)


OPTIONS = NetworkOptions(nameserver=("127.0.0.1", 9), timeout=5.0, concurrency=2)


async def test_no_more_probes_in_flight_than_the_concurrency(fake):
    targets = [Target.route("127.0.0.1", 2500 + i) for i in range(5)]
    task = asyncio.create_task(validate_targets(targets, OPTIONS))
    await _until(lambda: fake.active >= 2)
    await _settle()
    assert fake.active == 2 and len(fake.started) == 2  # the other three wait their turn
    fake.release.set()
    results = await task
    assert fake.max_active == 2 and len(fake.started) == 5
    assert [r.target for r in results] == [f"127.0.0.1:{2500 + i}" for i in range(5)]


async def test_shared_server_is_probed_once_and_progress_reports_each_target(fake):
    seen = []
    targets = [Target.route("127.0.0.1", 2525), Target.route("127.0.0.1", 2525),
               Target.route("127.0.0.1", 2526)]
    fake.release.set()
    results = await validate_targets(targets, OPTIONS, progress=seen.append)
    assert sorted(fake.started) == [("127.0.0.1", 2525), ("127.0.0.1", 2526)]
    assert [r.status for r in results] == [Status.STRICT] * 3
    assert sorted(r.target for r in seen) == sorted(r.target for r in results)


async def test_cancelling_the_batch_cancels_every_probe(fake):
    targets = [Target.route("127.0.0.1", 2500 + i) for i in range(3)]
    task = asyncio.create_task(validate_targets(targets, OPTIONS))
    await _until(lambda: fake.active >= 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.active == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_one_address_for_the_whole_batch(fake):
    fake.release.set()
    targets = [Target.route("127.0.0.1", 2525), Target.route("127.0.0.1", 2526)]
    await validate_targets(targets, OPTIONS, email="postmaster@corp.example")
    assert sorted(fake.emails) == [(2525, "postmaster@corp.example"),
                                   (2526, "postmaster@corp.example")]


async def test_a_mapping_gives_each_target_its_address_and_absent_ones_none(fake):
    fake.release.set()
    first, second, third = (Target.route("127.0.0.1", 2525 + i) for i in range(3))
    emails = {first: "a@one.example", second: "b@two.example"}
    await validate_targets([first, second, third], OPTIONS, email=emails)
    assert sorted(fake.emails) == [(2525, "a@one.example"), (2526, "b@two.example"),
                                   (2527, None)]

