"""What several relay workers (``--workers 2``) share: one queue control socket, one metrics
endpoint and one set of TLS-RPT counts, each covering the work of every worker."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime

import aiosmtplib
import pytest

from connectwiz.relay.deliver import Attempt
from connectwiz.relay.tlsrpt import TlsRptRecorder, TlsRptStore
from tests.service.test_metrics import scrape, value

from .conftest import body, lab_messages, no_verify, token, wait_lab
from .test_process import BUNDLE, HoldThenForward, RelayProcess, start_relay
from .test_queue import queue, queue_json, submit


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


async def _until_both_workers_received(relay: RelayProcess, send: int = 40) -> list[str]:
    """Messages over one connection each until each worker has received one (the kernel
    spreads connections over the workers); returns their tags."""
    tags: list[str] = []
    for _ in range(send):
        tag = token()
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.starttls(tls_context=no_verify())
        await client.sendmail("x@partner.example", [f"bob-{tag}@corp.example"], body(tag))
        await client.quit()
        tags.append(tag)
        await relay.wait_event("received", count=len(tags))
        if {e.get("worker") for e in relay.events if e.get("event") == "received"} == {0, 1}:
            return tags
    raise AssertionError(f"{send} connections all went to one worker")


@pytest.mark.network
async def test_metrics_and_tls_reports_count_the_work_of_every_worker(lab, tmp_path) -> None:
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port))
    relay = await start_relay(lab, bundle, spool, "--workers", "2", "--metrics", "127.0.0.1:0")
    try:
        port = (await relay.wait_event("metrics"))["port"]
        assert len([e for e in relay.events if e.get("event") == "metrics"]) == 1  # one server
        tags = await _until_both_workers_received(relay)
        assert await wait_lab(lab, lambda: all(lab_messages(lab, t) for t in tags), timeout=30)
        await relay.wait_event("done", count=len(tags))
        m = await scrape(port)
        assert value(m, "connectwiz_relay_received_messages_total") == len(tags)
        assert value(m, "connectwiz_relay_messages_total", result="delivered") == len(tags)
        assert value(m, "connectwiz_relay_delivery_attempt_seconds_count") == len(tags)
        assert value(m, "connectwiz_relay_queue_messages", state="incoming") == 0
        relay.proc.send_signal(signal.SIGTERM)  # each worker writes its TLS-RPT counts
        assert await relay.wait_exit() == 0
    finally:
        await relay.kill()
    store = TlsRptStore(spool)
    assert sorted(p.name for p in store.dir.iterdir()) == [f"{_today()}.json",
                                                           f"{_today()}.w1.json"]
    counts = store.counts(_today())["domains"]
    assert sum(entry["success"] for policies in counts.values()
               for entry in policies.values()) == len(tags)


@pytest.mark.network
async def test_hold_of_a_message_another_worker_delivers_is_made_when_its_attempt_ends(
        lab, tmp_path) -> None:
    """Worker 0 answers ``connectwiz queue``; the message is in flight in worker 1."""
    hop = HoldThenForward((lab.address_of("mail.corp.example"), lab.smtp_port))
    hop_port = await hop.start()
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="127.0.0.1", route_port=hop_port))
    # The hop never greets: each attempt ends after the greeting timeout, and is retried
    # within a second (a hold made only at the next retry would see a second attempt).
    relay = await start_relay(lab, bundle, spool, "--workers", "2", "--timeout", "6",
                              "--greeting-timeout", "6")
    try:
        msg_id = ""
        for _ in range(40):
            tag = token()
            msg_id = await submit(relay, "x@partner.example", [f"bob-{tag}@corp.example"], tag)
            received = [e for e in relay.events if e.get("event") == "received"]
            if not received or received[-1]["id"] != msg_id:
                received = [await relay.wait_event("received", count=len(received) + 1)]
            if received[-1]["worker"] == 1:
                break
        else:
            raise AssertionError("40 connections all went to worker 0")
        await asyncio.wait_for(hop.held.wait(), 20)
        while not (spool / "active" / f"{msg_id}.json").exists():  # in flight in worker 1
            await asyncio.sleep(0.05)
        code, out, _ = await queue(spool, "hold", msg_id)
        assert code == 0 and "will be held when its current delivery attempt ends" in out
        held = await relay.wait_event("queue-control", count=2)
        assert held["id"] == msg_id and held["result"] == "held"
        assert held["worker"] == 1  # made by the worker that let go of the message
        [entry] = [q for q in await queue_json(spool, "list") if q["id"] == msg_id]
        assert entry["state"] == "hold" and entry["attempts"] == 1
    finally:
        await relay.kill()
        await hop.stop()


def test_each_worker_counts_tls_sessions_in_its_own_file_and_reports_add_them_up(
        tmp_path) -> None:
    store = TlsRptStore(tmp_path)

    def attempt(error: str = "") -> Attempt:
        return Attempt("mx.a.example", "127.0.0.1", 25, "Enforced TLS - Strict", "enforced",
                       "strict", "1.2", ["x@a.example"], tls_version="TLSv1.3",
                       reply="220 hi", outcome="temporary" if error else "delivered",
                       error=error, policy_domain="a.example")

    failure = attempt("TLS required but the certificate is not accepted: name mismatch: "
                      "certificate is for other.example")
    for worker in (0, 1):
        recorder = TlsRptRecorder(store, "relay.example", worker)
        recorder.count([attempt(), failure])
        recorder.flush()
    # Worker 1 again after a restart: it adds to its own file, not to the sum.
    recorder = TlsRptRecorder(store, "relay.example", 1)
    recorder.count([attempt()])
    recorder.flush()
    assert store.days() == [_today()]
    entry = store.counts(_today())["domains"]["a.example"]["no-policy-found"]
    assert entry["success"] == 3
    [counted] = entry["failures"].values()
    assert counted["result-type"] == "certificate-host-mismatch"
    assert counted["failed-session-count"] == 2
    assert store.part(_today(), 1)["domains"]["a.example"]["no-policy-found"]["success"] == 2
