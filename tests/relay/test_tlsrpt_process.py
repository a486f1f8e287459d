"""TLS-RPT in a real ``connectwiz relay`` process: at start it sends the reports of a day an
earlier run counted, refusing the lab's loopback https: endpoint by default and posting to
it with ``--tlsrpt-allow-networks``."""

from __future__ import annotations

import gzip
import json
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connectwiz.relay.deliver import Attempt
from connectwiz.relay.tlsrpt import TlsRptRecorder, TlsRptStore

from .conftest import token, wait_lab
from .test_process import BUNDLE, start_relay

pytestmark = pytest.mark.network


async def test_relay_process_sends_yesterdays_report_only_where_allowed(lab, tmp_path: Path
                                                                        ) -> None:
    tag = token()
    domain = f"proc-{tag}.example"
    path = f"/tlsrpt/{tag}"
    lab.add_record(f"_smtp._tls.{domain}.", "TXT",
                   f'"v=TLSRPTv1; rua=https://reports.sts-testing.example{path}"')
    bundle = tmp_path / "bundle.toml"
    bundle.write_text(BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port))
    spool = tmp_path / "spool"
    # What an earlier run of the relay counted yesterday (UTC), written as it writes it.
    recorder = TlsRptRecorder(TlsRptStore(spool), "relay.corp.example",
                              clock=lambda: time.time() - 86400)
    recorder.count([Attempt(f"mx.{domain}", "127.0.0.99", 25, "Opportunistic TLS",
                            "opportunistic", "relaxed", "1.2", [f"u@{domain}"],
                            tls_version="TLSv1.3", reply="220 hi", outcome="delivered",
                            policy_domain=domain)])
    recorder.flush()
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()

    relay = await start_relay(lab, bundle, spool)
    failed = await relay.wait_event("tlsrpt-failed")
    assert failed["domain"] == domain and failed["day"] == yesterday
    assert failed["reason"].startswith("refused: reports.sts-testing.example resolves to "
                                       "127.0.0.40 (loopback), not a public address")
    relay.proc.send_signal(signal.SIGTERM)
    assert await relay.wait_exit() == 0

    relay = await start_relay(lab, bundle, spool, "--https-port", str(lab.https_port),
                              "--tlsrpt-allow-networks", "127.0.0.0/8")
    try:
        sent = await relay.wait_event("tlsrpt-sent")
        assert sent["domain"] == domain and sent["rua"].endswith(path)
        assert await wait_lab(lab, lambda: any(p.path == path for p in list(lab.report_posts)))
        [post] = [p for p in list(lab.report_posts) if p.path == path]
        report = json.loads(gzip.decompress(post.body))
        assert report["date-range"]["start-datetime"] == f"{yesterday}T00:00:00Z"
        assert report["policies"][0]["summary"]["total-successful-session-count"] == 1
    finally:
        relay.proc.send_signal(signal.SIGTERM)
        assert await relay.wait_exit() == 0
