"""``--metrics``: Prometheus text from a running relay process and from the portal.

Scrapes go over HTTP to the exporter and are parsed with prometheus-client's own parser,
so the test reads what Prometheus would.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectwiz.metrics import MetricsServer, PortalMetrics, refusal_kind
from tests.portal.conftest import READER, hold, mime, portal_client, secure_key_home, sink  # noqa: F401
from tests.relay.conftest import body, no_verify, token
from tests.relay.test_process import BUNDLE, ENFORCED_RECEIPT, start_relay

pytestmark = pytest.mark.network


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            return resp.read().decode()

    text = await asyncio.to_thread(get)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum over series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and labels.items() <= dict(ls).items())


async def test_relay_metrics_count_receipt_delivery_and_the_queue(lab, tmp_path) -> None:
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port)
                      + ENFORCED_RECEIPT)
    relay = await start_relay(lab, bundle, spool, "--metrics", "127.0.0.1:0")
    try:
        port = (await relay.wait_event("metrics"))["port"]
        tag = token()
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.starttls(tls_context=no_verify())
        await client.sendmail("x@partner.example", [f"bob-{tag}@corp.example"], body(tag))
        client.close()
        # Plaintext under an enforced receipt policy: refused at RCPT TO.
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.ehlo()
        await client.mail("p@enforced.example")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused):
            await client.rcpt("bob@corp.example")
        client.close()
        # Undeliverable for now: stays deferred in the queue.
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.sendmail("x@corp.example", [f"c-{tag}@refused.example"], body(tag))
        client.close()
        await relay.wait_event("done")
        await relay.wait_event("deferred")

        m = await scrape(port)
        assert value(m, "connectwiz_relay_received_messages_total", tls="TLSv1.3",
                     option="opportunistic") == 1
        assert value(m, "connectwiz_relay_received_messages_total", tls="none") == 1
        assert value(m, "connectwiz_relay_refused_total", kind="tls-required") == 1
        route = "Inbound route mail.corp.example (Enforced TLS, Relaxed)"
        assert value(m, "connectwiz_relay_delivery_attempts_total", definition=route,
                     tls="TLSv1.3", verified="no", outcome="delivered") == 1
        assert value(m, "connectwiz_relay_messages_total", result="delivered",
                     definition=route, tls="TLSv1.3") == 1
        assert value(m, "connectwiz_relay_messages_total", result="deferred") == 1
        assert value(m, "connectwiz_relay_delivery_attempt_seconds_count",
                     outcome="delivered") == 1
        assert value(m, "connectwiz_relay_queue_delay_seconds_count") == 1
        assert value(m, "connectwiz_relay_queue_messages", state="deferred") == 1
        assert value(m, "connectwiz_relay_queue_messages", state="incoming") == 0
        assert value(m, "connectwiz_relay_queue_oldest_age_seconds", state="deferred") > 0
    finally:
        await relay.kill()


async def test_portal_metrics_count_logins_and_code_failures(portal_client, sink) -> None:  # noqa: F811
    pc = await portal_client()
    metrics = PortalMetrics()
    pc.portal.log.subscribe(metrics.observe)
    exporter = MetricsServer("127.0.0.1:0", metrics.registry)
    try:
        held, tokens = hold(pc.spool, mime("metrics"))
        link = pc.link(held, tokens[READER])
        csrf = await pc.csrf(link)
        await pc.client.post(link + "/code", data={"_csrf": csrf}, allow_redirects=False)
        code = await sink.wait_code(READER)
        wrong = "000000" if code != "000000" else "111111"
        resp = await pc.client.post(link + "/verify", data={"_csrf": csrf, "code": wrong})
        assert resp.status == 400
        resp = await pc.client.post(link + "/verify", data={"_csrf": csrf, "code": code},
                                    allow_redirects=False)
        assert resp.status == 303
        assert (await pc.client.get(pc.link(held, "x" * 43))).status == 404

        m = await scrape(exporter.address[1])
        assert value(m, "connectwiz_portal_logins_total") == 1
        assert value(m, "connectwiz_portal_code_failures_total", result="wrong") == 1
        assert value(m, "connectwiz_portal_codes_sent_total") == 1
        assert value(m, "connectwiz_portal_refusals_total", kind="link") == 1
        assert value(m, "connectwiz_portal_request_seconds_count", route="message",
                     status="200") >= 1
        assert value(m, "connectwiz_portal_request_seconds_count", route="code-verify") == 2
    finally:
        exporter.close()


async def test_portal_process_serves_metrics(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    key_file = tmp_path / "keys" / "secure.key"
    hold(spool, mime("proc"), key_file=key_file)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connectwiz", "portal", "--listen", "127.0.0.1:0",
        "--spool", str(spool), "--public-url", "http://127.0.0.1/secure",
        "--insecure-cookies", "--secure-key", str(key_file), "--relay", "127.0.0.1:9",
        "--metrics", "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        ports: dict[str, int] = {}
        while len(ports) < 2:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            found = re.search(r"\b(listening|metrics)\b.* port=(\d+)", line)
            assert line, "portal exited"
            if found:
                ports[found[1]] = int(found[2])
        url = f"http://127.0.0.1:{ports['listening']}/secure/m/AAAA/{'x' * 43}"
        with pytest.raises(urllib.error.HTTPError):
            await asyncio.to_thread(urllib.request.urlopen, url, timeout=10)
        m = await scrape(ports["metrics"])
        assert value(m, "connectwiz_portal_refusals_total", kind="link") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


@pytest.mark.parametrize(("reason", "kind"), [
    ("relay access denied", "relay-denied"),
    ("530 5.7.0 Must issue a STARTTLS command first", "tls-required"),
    ("530 5.7.0 TLS 1.2 or newer with an approved cipher required (this session: x)",
     "tls-too-weak"),
    ("550 5.5.2 Message refused: bare LF or bare CR in DATA (RFC 5321 2.3.8)", "smuggling"),
    ("452 4.5.3 Too many recipients", "452"),
])
def test_refusal_kinds_are_a_small_set(reason: str, kind: str) -> None:
    assert refusal_kind(reason) == kind
