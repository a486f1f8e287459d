"""``connectwiz queue`` against a running relay process, and against a stopped one.

The next hop is a gate under test control: closed, it drops every connection (the relay
defers); open, it forwards to the lab's internal server. Retries are an hour apart, so a
delivery within the test can only come from queue control.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from connectwiz.relay.spool import Spool

from .conftest import body, forward, lab_messages, token, wait_lab
from .test_process import BUNDLE, HoldThenForward, RelayProcess, start_relay

pytestmark = pytest.mark.network

SLOW_RETRY = ("--backoff-min", "3600", "--backoff-max", "3600")


class Gate:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.open = False

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        await forward(reader, writer, self.target)

    async def stop(self) -> None:
        self.server.close()


async def queue(spool: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connectwiz", "queue", *args, "--spool", str(spool),
        "--hostname", "relay.corp.example",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def queue_json(spool: Path, *args: str) -> Any:
    code, out, err = await queue(spool, *args, "--json")
    assert code == 0, err
    return json.loads(out)


async def submit(relay: RelayProcess, sender: str, rcpts: list[str], tag: str) -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    try:
        _, reply = await client.sendmail(sender, rcpts, body(tag))
    finally:
        client.close()
    return reply.rsplit(" ", 1)[-1]


@pytest.fixture
async def gated(lab, tmp_path):
    gate = Gate((lab.address_of("mail.corp.example"), lab.smtp_port))
    port = await gate.start()
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="127.0.0.1", route_port=port))
    started: list[RelayProcess] = []

    async def start() -> RelayProcess:
        relay = await start_relay(lab, bundle, spool, *SLOW_RETRY)
        started.append(relay)
        return relay

    yield gate, spool, start
    for relay in started:
        await relay.kill()
    await gate.stop()


async def test_list_show_and_flush_one_message_while_the_relay_runs(lab, gated) -> None:
    gate, spool, start = gated
    relay = await start()
    tag = token()
    msg_id = await submit(relay, f"alice-{tag}@trusted.example", [f"bob-{tag}@corp.example"], tag)
    await relay.wait_event("deferred")

    listed = await queue_json(spool, "list", "--deferred")
    assert [m["id"] for m in listed] == [msg_id]
    assert listed[0]["state"] == "deferred" and listed[0]["attempts"] == 1
    assert "connection closed" in listed[0]["recipients"][0]["detail"]
    code, text, _ = await queue(spool, "list")
    assert code == 0 and msg_id in text and f"bob-{tag}@corp.example" in text

    code, shown, _ = await queue(spool, "show", msg_id, "--headers")
    assert code == 0
    assert "127.0.0.1[127.0.0.1]" in shown and "no TLS" in shown and "temporary" in shown
    assert f"Subject: test {tag}" in shown

    gate.open = True
    reply = await queue_json(spool, "flush", msg_id)
    assert reply["relay"] == "running"
    assert reply["results"] == [{"id": msg_id, "result": "flushed"}]
    await relay.wait_event("done")  # an hour before the scheduled retry
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    assert await queue_json(spool, "list") == []


async def test_flush_by_domain_leaves_other_domains_waiting(lab, gated, tmp_path) -> None:
    gate, spool, start = gated
    relay = await start()
    tag = token()
    internal = await submit(relay, "x@partner.example", [f"bob-{tag}@corp.example"], tag)
    # An MX that refuses connections: this one stays deferred whatever we flush.
    other = await submit(relay, "x@corp.example", [f"carol-{tag}@refused.example"], tag)
    await relay.wait_event("deferred", count=2)
    gate.open = True
    reply = await queue_json(spool, "flush", "--domain", "corp.example")
    assert reply["results"] == [{"id": internal, "result": "flushed"}]
    await relay.wait_event("done")
    assert [m["id"] for m in await queue_json(spool, "list")] == [other]


async def test_hold_survives_a_restart_and_release_delivers(lab, gated) -> None:
    gate, spool, start = gated
    relay = await start()
    tag = token()
    msg_id = await submit(relay, "x@partner.example", [f"bob-{tag}@corp.example"], tag)
    await relay.wait_event("deferred")
    assert (await queue_json(spool, "hold", msg_id))["results"][0]["result"] == "held"
    gate.open = True
    flushed = await queue_json(spool, "flush")  # everything deferred: the held one is not
    assert flushed["results"] == []
    code, _, _ = await queue(spool, "flush", msg_id)
    assert code == 1

    relay.proc.terminate()
    assert await relay.wait_exit() == 0
    relay = await start()
    listening = await relay.wait_event("listening")
    assert listening["recovered"] == 0 and listening["deferred"] == 0  # hold is not claimed
    assert (spool / "hold" / f"{msg_id}.msg").exists(), "the held queue file stays"
    [held] = await queue_json(spool, "list")
    assert held["id"] == msg_id and held["state"] == "hold"
    assert held["attempts"] == 1 and "connection closed" in held["recipients"][0]["detail"]
    assert not lab_messages(lab, tag)
    code, shown, _ = await queue(spool, "show", msg_id, "--headers")
    assert code == 0 and f"Subject: test {tag}" in shown  # a held message keeps its body

    reply = await queue_json(spool, "release", msg_id)
    assert reply["results"] == [{"id": msg_id, "result": "released"}]
    await relay.wait_event("done")
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)


async def test_delete_sends_a_bounce_to_the_sender(lab, gated) -> None:
    _, spool, start = gated
    relay = await start()
    tag = token()
    sender = f"alice-{tag}@trusted.example"
    msg_id = await submit(relay, sender, [f"bob-{tag}@corp.example"], tag)
    await relay.wait_event("deferred")
    reply = await queue_json(spool, "delete", msg_id)
    result = reply["results"][0]["result"]
    assert result.startswith("deleted, bounce ")
    bounce_id = result.rsplit(" ", 1)[1]
    await relay.wait_event("done")  # the bounce, sent at once to trusted.example's MX
    assert await wait_lab(lab, lambda: any(
        sender in m.rcpt_tos and b"deleted from the queue" in m.data for m in list(lab.messages)))
    assert not (spool / "queue" / f"{msg_id}.msg").exists()
    code, log_text, _ = await queue_json_log(spool, msg_id)
    assert code == 0 and '"status": "deleted"' in log_text and bounce_id in log_text


async def queue_json_log(spool: Path, msg_id: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connectwiz", "log", "--spool", str(spool), "--json", msg_id,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_delete_one_domain_keeps_the_other_recipients(lab, gated) -> None:
    gate, spool, start = gated
    relay = await start()
    tag = token()
    msg_id = await submit(relay, "x@corp.example",
                          [f"bob-{tag}@corp.example", f"carol-{tag}@refused.example"], tag)
    await relay.wait_event("deferred")
    reply = await queue_json(spool, "delete", "--domain", "refused.example", "--silent")
    assert reply["results"] == [{"id": msg_id, "result": "deleted 1 recipient(s)"}]
    [left] = await queue_json(spool, "list")
    assert [r["address"] for r in left["recipients"] if r["status"] == "pending"] == \
        [f"bob-{tag}@corp.example"]
    gate.open = True
    await queue_json(spool, "flush", msg_id)
    await relay.wait_event("done")
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    assert lab_messages(lab, tag)[0].rcpt_tos == (f"bob-{tag}@corp.example",)


async def test_changes_while_the_relay_is_stopped_apply_at_next_start(lab, gated) -> None:
    gate, spool, start = gated
    relay = await start()
    tag = token()
    keep = await submit(relay, "x@partner.example", [f"bob-{tag}@corp.example"], tag)
    drop = await submit(relay, "x@partner.example", [f"dave-{tag}@corp.example"], tag)
    await relay.wait_event("deferred", count=2)
    relay.proc.terminate()
    assert await relay.wait_exit() == 0

    reply = await queue_json(spool, "delete", drop, "--silent")
    assert reply["relay"] == "stopped"
    assert reply["results"] == [{"id": drop, "result": "deleted"}]
    assert (await queue_json(spool, "flush"))["results"] == [{"id": keep, "result": "flushed"}]
    gate.open = True
    relay = await start()
    assert (await relay.wait_event("listening"))["recovered"] == 1  # flushed: tried at once
    await relay.wait_event("done")
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    assert lab_messages(lab, tag)[0].rcpt_tos == (f"bob-{tag}@corp.example",)


async def test_hold_of_a_message_in_flight_is_made_when_the_attempt_ends(lab, tmp_path) -> None:
    hop = HoldThenForward((lab.address_of("mail.corp.example"), lab.smtp_port))
    hop_port = await hop.start()
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="127.0.0.1", route_port=hop_port))
    # The hop never greets: the attempt ends after the greeting timeout.
    relay = await start_relay(lab, bundle, spool, "--timeout", "3", "--greeting-timeout", "3")
    try:
        tag = token()
        msg_id = await submit(relay, "x@partner.example", [f"bob-{tag}@corp.example"], tag)
        await asyncio.wait_for(hop.held.wait(), 20)  # in flight
        code, out, _ = await queue(spool, "flush", msg_id)
        assert code == 1 and "busy" in out  # nothing to flush while it is being tried
        code, out, _ = await queue(spool, "hold", msg_id)
        assert code == 0 and "will be held when its current delivery attempt ends" in out
        assert (spool / "active" / f"{msg_id}.json").exists(), "the worker's file untouched"
        done = await relay.wait_event("queue-control", count=3)  # flush, promise, then this
        assert done["id"] == msg_id and done["result"] == "held"
        [held] = await queue_json(spool, "list")
        assert held["id"] == msg_id and held["state"] == "hold" and held["attempts"] == 1
        code, _, err = await queue(spool, "hold", "not-an-id")
        assert code == 2 and err.count("\n") == 1 and "not a queue id" in err
    finally:
        await relay.kill()
        await hop.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the spool to another user needs root")
async def test_a_stopped_relays_spool_is_only_changed_by_its_owner(tmp_path) -> None:
    spool = tmp_path / "spool"
    Spool(spool).create()
    os.chown(spool, 54321, 54321)
    code, _, err = await queue(spool, "flush")
    assert code == 2 and "run this as the relay's user" in err and err.count("\n") == 1


async def test_control_while_workers_retry_constantly_loses_and_repeats_nothing(lab,
                                                                                tmp_path) -> None:
    """Retries every 0.2-0.4 s race with hold, release and flush of every message; each
    change either wins or answers busy, and in the end each message arrives once."""
    gate = Gate((lab.address_of("mail.corp.example"), lab.smtp_port))
    port = await gate.start()
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="127.0.0.1", route_port=port))
    relay = await start_relay(lab, bundle, spool)  # fast retries
    try:
        tags = [token() for _ in range(12)]
        for tag in tags:
            await submit(relay, "x@partner.example", [f"bob-{tag}@corp.example"], tag)
        await relay.wait_event("deferred", count=len(tags))
        outcomes: set[str] = set()
        for _ in range(3):
            for op in ("hold", "release", "flush"):
                args = ["--domain", "corp.example"] if op != "flush" else []
                code, out, err = await queue(spool, op, *args, "--json")
                assert code in (0, 1), err  # 1: some were busy at that moment
                outcomes |= {r["result"].split(":")[0] for r in json.loads(out)["results"]}
        assert {"held", "released"} <= outcomes
        gate.open = True
        # A hold promised for a message in flight is made when its attempt ends, perhaps
        # after a release: release until everything has arrived.
        arrived = False
        for _ in range(20):
            await queue(spool, "release", "--domain", "corp.example")
            arrived = await wait_lab(lab, lambda: all(lab_messages(lab, t) for t in tags), 3)
            if arrived:
                break
        assert arrived
        await relay.wait_event("done", count=len(tags), timeout=60)
        assert all(len(lab_messages(lab, t)) == 1 for t in tags)
        assert await queue_json(spool, "list") == []
        assert not [e for e in relay.events if e.get("event") == "error"]
    finally:
        await relay.kill()
        await gate.stop()
