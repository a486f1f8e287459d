"""Prometheus metrics for the relay and the portal (``--metrics HOST:PORT``).

Both processes already describe everything they do as events (relay/events.py); the
metrics subscribe to that stream instead of adding counters across the code, so a metric
and its log line can never disagree. Queue sizes are read from the spool when Prometheus
scrapes (in the exporter's thread, never on the event loop). Label values come from small
sets — TLS versions, outcomes, the bundle's definition and policy names, route names —
never from addresses, ids or free text, so the number of series stays bounded.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from connectwiz.errors import UserError
from connectwiz.probe.options import parse_host_port
from connectwiz.relay.queuectl import QUEUE_STATES, arrival_of, state_ids
from connectwiz.relay.spool import Spool

# Seconds: SMTP transactions take milliseconds to a timeout; queue delays minutes to days.
_ATTEMPT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DELAY_BUCKETS = (0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 4 * 3600, 86400, 5 * 86400)
_PAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def refusal_kind(reason: str) -> str:
    """A bounded label for a receipt refusal's reply."""
    text = reason.lower()
    if "relay access denied" in text:
        return "relay-denied"
    if "starttls command first" in text:
        return "tls-required"
    if "tls 1.2 or newer" in text:
        return "tls-too-weak"
    if "bare lf" in text or "bare cr" in text:
        return "smuggling"
    code = reason[:3]
    return code if code.isdigit() else "other"


class _QueueCollector(Collector):
    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = GaugeMetricFamily("connectwiz_relay_queue_messages",
                                 "Messages in the queue, by state", labels=["state"])
        oldest = GaugeMetricFamily("connectwiz_relay_queue_oldest_age_seconds",
                                   "Age of the oldest message in each queue state (0: empty)",
                                   labels=["state"])
        now = time.time()
        for state in QUEUE_STATES:
            ids = state_ids(self.spool, state)
            size.add_metric([state], len(ids))
            arrived = arrival_of(ids[0]) if ids else None
            oldest.add_metric([state], max(now - arrived, 0.0) if arrived else 0.0)
        yield size
        yield oldest


def share_counters(folder: Path, *, clear: bool) -> None:
    """With several relay workers: from now on this process's counters live in files in
    ``folder`` (prometheus-client's multiprocess mode), which the exporter of one worker
    adds up. ``clear``: drop a previous run's files (by the worker that starts first, while
    no other runs). Call in a worker process before its metrics are made."""
    folder.mkdir(mode=0o700, exist_ok=True)
    if clear:
        for old in folder.glob("*.db"):
            old.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    values.ValueClass = values.MultiProcessValue()


class RelayMetrics:
    def __init__(self, spool_root: Path, registry: CollectorRegistry | None = None,
                 shared: Path | None = None) -> None:
        """``shared``: the folder of ``share_counters``; then ``registry`` (what the
        exporter serves) holds every worker's counters added up, not this process's."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if shared:
            MultiProcessCollector(self.registry, str(shared))
            r = CollectorRegistry()  # the counters' own: their values are in the files
        self.received = Counter(
            "connectwiz_relay_received_messages", "Messages accepted, by receipt policy, "
            "option and the TLS version of the session", ["policy", "option", "tls"], registry=r)
        self.refused = Counter(
            "connectwiz_relay_refused", "Recipients or messages refused on receipt, by kind",
            ["kind"], registry=r)
        self.attempts = Counter(
            "connectwiz_relay_delivery_attempts", "Delivery attempts to one host, by delivery "
            "definition, TLS version, certificate verification and outcome",
            ["definition", "tls", "verified", "outcome"], registry=r)
        self.attempt_seconds = Histogram(
            "connectwiz_relay_delivery_attempt_seconds", "Time of one delivery attempt to "
            "one host (connect, TLS, transaction)", ["outcome"], buckets=_ATTEMPT_BUCKETS,
            registry=r)
        self.fates = Counter(
            "connectwiz_relay_messages", "Messages delivered, deferred or bounced, with the "
            "definition and TLS of their last delivery attempt",
            ["result", "definition", "tls", "verified"], registry=r)
        self.delay = Histogram(
            "connectwiz_relay_queue_delay_seconds", "From receipt to the last recipient done",
            buckets=_DELAY_BUCKETS, registry=r)
        self.reloads = Counter("connectwiz_relay_reloads", "Bundle reloads (SIGHUP)",
                               ["result"], registry=r)
        self.control = Counter("connectwiz_relay_queue_control", "connectwiz queue changes",
                               ["op"], registry=r)
        self.registry.register(_QueueCollector(Spool(spool_root)))
        self._last: dict[str, tuple[str, str, str]] = {}  # id -> labels of its last attempt
        self._lock = threading.Lock()

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """An EventLog listener (relay/events.py)."""
        if event == "received":
            self.received.labels(fields.get("policy") or "default", fields.get("receipt") or "-",
                                 fields.get("tls") or "none").inc()
        elif event == "refused":
            self.refused.labels(refusal_kind(str(fields.get("reason", "")))).inc()
        elif event == "attempt":
            labels = (str(fields.get("definition") or "-"), str(fields.get("tls") or "none"),
                      "yes" if fields.get("verified") else "no")
            outcome = str(fields.get("outcome") or "-")
            self.attempts.labels(*labels, outcome).inc()
            if "elapsed_s" in fields:
                self.attempt_seconds.labels(outcome).observe(float(fields["elapsed_s"]))
            with self._lock:
                self._last[str(fields.get("id"))] = labels
        elif event in ("done", "deferred", "bounced"):
            msg_id = str(fields.get("id"))
            with self._lock:
                labels = self._last.get(msg_id, ("-", "none", "no"))
                if event != "bounced":  # a bounce is followed by done or deferred
                    self._last.pop(msg_id, None)
            result = {"done": "delivered"}.get(event, event)
            self.fates.labels(result, *labels).inc()
            arrived = arrival_of(msg_id)
            if event == "done" and arrived:
                self.delay.observe(max(time.time() - arrived, 0.0))
        elif event in ("reloaded", "reload-refused"):
            self.reloads.labels("ok" if event == "reloaded" else "refused").inc()
        elif event == "queue-control":
            self.control.labels(str(fields.get("op"))).inc()


class PortalMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Histogram(
            "connectwiz_portal_request_seconds", "Requests by route and status",
            ["route", "status"], buckets=_PAGE_BUCKETS, registry=r)
        self.logins = Counter("connectwiz_portal_logins",
                              "Recipients who proved their mailbox with a correct code",
                              registry=r)
        self.code_failures = Counter(
            "connectwiz_portal_code_failures", "Codes refused: wrong, burnt (three wrong "
            "tries) or none (expired, used, never sent)", ["result"], registry=r)
        self.codes_sent = Counter("connectwiz_portal_codes_sent", "One-time codes e-mailed",
                                  registry=r)
        self.refusals = Counter(
            "connectwiz_portal_refusals", "Refused links, forms and rate limits, by kind",
            ["kind"], registry=r)
        self.actions = Counter(
            "connectwiz_portal_actions", "Replies, read receipts and content deletions",
            ["action"], registry=r)

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        if event == "http":
            self.requests.labels(str(fields.get("route") or "-"), str(fields.get("status"))
                                 ).observe(float(fields.get("ms", 0)) / 1000)
        elif event == "code-checked":
            result = str(fields.get("result"))
            if result == "ok":
                self.logins.inc()
            else:
                self.code_failures.labels(result).inc()
        elif event == "code-sent":
            self.codes_sent.inc()
        elif event in ("link-refused", "csrf-refused", "reply-refused", "link-locked"):
            self.refusals.labels(event.removesuffix("-refused")).inc()
        elif event == "rate-limited":
            self.refusals.labels(f"rate-limited-{fields.get('what', '-')}").inc()
        elif event in ("reply-sent", "read-receipt-sent", "content-deleted"):
            self.actions.labels(event).inc()


class MetricsServer:
    """The exporter's HTTP server (prometheus-client's, in a daemon thread)."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        if listen.endswith(":0"):
            host, port = parse_host_port(listen[:-2], 9100)[0], 0
        else:
            host, port = parse_host_port(listen, 9100)
        try:
            self._httpd, self._thread = start_http_server(port, host.strip("[]"),
                                                          registry=registry)
        except OSError as exc:
            raise UserError(f"--metrics {listen}: cannot listen: "
                            f"{exc.strerror or exc}") from None
        self.address = self._httpd.server_address[:2]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
