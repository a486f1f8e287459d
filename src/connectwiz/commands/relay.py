"""``connectwiz relay``: run the enforcing SMTP relay until SIGTERM (SIGHUP reloads)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from connectwiz.bundle import Bundle
from connectwiz.bundle.paths import resolve_bundle_path
from connectwiz.errors import UserError
from connectwiz.policy.model import PolicyModel
from connectwiz.probe.options import NetworkOptions, options_from, parse_host_port
from connectwiz.relay.events import EventLog
from connectwiz.relay.held import load_secure_key
from connectwiz.relay.server import Relay
from connectwiz.relay.settings import RelaySettings
from connectwiz.relay.spool import default_spool
from connectwiz.relay.tlsrpt_post import parse_networks
from connectwiz.relay.workers import (
    Worker,
    default_workers,
    run_workers,
    share,
    waiting_for,
)

METRICS_FOLDER = "metrics"  # in the spool: the workers' counters, with --metrics

if TYPE_CHECKING:
    from connectwiz.metrics import MetricsServer

_LIMITS = {  # CLI option -> RelaySettings field
    "max_size": "max_message_size", "max_recipients": "max_recipients",
    "max_connections": "max_connections", "idle_timeout": "idle_timeout",
    "backoff_min": "backoff_min", "backoff_max": "backoff_max",
    "max_lifetime": "max_lifetime", "shutdown_grace": "shutdown_grace",
    "max_connections_per_client": "max_connections_per_client",
    "junk_command_limit": "junk_command_limit", "session_deadline": "session_deadline",
    "max_hops": "max_hops", "queue_run_delay": "queue_run_delay",
    "destination_concurrency": "destination_concurrency",
}


class _MailLogBridge(logging.Handler):
    """aiosmtpd logs client mishaps (failed handshakes, resets) with tracebacks; the relay's
    log keeps one line per event, so pass on the first line only."""

    def __init__(self, log: EventLog) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log("smtp-session", level=record.levelname.lower(),
                 message=record.getMessage().splitlines()[0][:300],
                 error=repr(record.exc_info[1])[:300] if record.exc_info else None)


def settings_from(args: argparse.Namespace, options: NetworkOptions) -> RelaySettings:
    if options.concurrency <= 0:
        raise UserError("--concurrency must be positive")
    values: dict[str, object] = {
        "hostname": args.hostname or socket.gethostname(),
        "delivery_workers": options.concurrency,  # deliveries in flight, as probes for validate
    }
    for option, name in _LIMITS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        if value <= 0:
            raise UserError(f"--{option.replace('_', '-')} must be positive")
        values[name] = value
    portal = getattr(args, "portal_url", None)
    if portal is not None:
        if not portal.startswith(("https://", "http://")) or any(c.isspace() for c in portal):
            raise UserError(f"--portal-url {portal!r}: give an http(s) URL, "
                            f"e.g. https://mail.example.com/secure")
        values["portal_url"] = portal
    secure_key = getattr(args, "secure_key", None)
    if secure_key or portal is not None:
        # Made (or checked) now, not at the first hold: the portal only reads the key and
        # refuses to start without it.
        load_secure_key(Path(secure_key) if secure_key else None)
    if secure_key:
        values["secure_key"] = secure_key
    allow = getattr(args, "tlsrpt_allow_networks", None)
    if allow:
        values["tlsrpt_allow_networks"] = parse_networks(allow)
    settings = RelaySettings(**values)  # type: ignore[arg-type]
    if settings.backoff_max < settings.backoff_min:
        raise UserError("--backoff-max must not be smaller than --backoff-min")
    return settings


def run(args: argparse.Namespace) -> int:
    if args.check:
        from connectwiz.relay.check import run_check

        return run_check(args, settings_from)
    bundle_path = resolve_bundle_path(args.bundle)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UserError("--tls-cert and --tls-key go together")
    for option in ("tls_cert", "tls_key"):
        value = getattr(args, option)
        if value is not None and not Path(value).is_file():
            raise UserError(f"--{option.replace('_', '-')} {value}: no such file")
    if args.listen.endswith(":0"):  # any free port; the "listening" log line names it
        host, port = parse_host_port(args.listen[:-2], 2525)[0], 0
    else:
        host, port = parse_host_port(args.listen, 2525)
    options = options_from(nameserver=args.nameserver, smtp_port=args.smtp_port,
                           ca_file=args.ca_file, timeout=args.timeout,
                           greeting_timeout=args.greeting_timeout,
                           concurrency=args.concurrency, https_port=args.https_port,
                           dnssec_resolver=args.dnssec_resolver)

    def load_policy() -> PolicyModel:
        return Bundle.load(bundle_path).model

    # One worker per core, as Postfix runs several smtpd and smtp processes (docs/relay.md,
    # "Workers"); worker 0 answers queue control and serves the metrics for all of them.
    workers = default_workers() if args.workers is None else args.workers
    if workers <= 0:
        raise UserError("--workers must be positive")
    if workers > 1 and default_workers() == 1:
        raise UserError("--workers above 1 needs SO_REUSEPORT and fork (not on this system)")
    settings = settings_from(args, options)
    spool = Path(args.spool) if args.spool else default_spool()
    log = EventLog(json_lines=args.log_json)
    mail_log = logging.getLogger("mail.log")
    mail_log.addHandler(_MailLogBridge(log))
    mail_log.propagate = False

    def serve(worker: Worker, listen: tuple[str, int], ready: Callable[[int], None]) -> int:
        if worker.shared:
            log.context["worker"] = worker.index  # which process each line comes from
        relay = Relay(
            load_policy, spool, listen, options=options,
            settings=share(settings, worker.count), log=log,
            tls_cert=Path(args.tls_cert) if args.tls_cert else None,
            tls_key=Path(args.tls_key) if args.tls_key else None, worker=worker,
        )
        exporter = start_metrics(args.metrics, log, relay.spool.root, worker)
        try:
            with log.writing_behind(), asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                runner.run(relay.serve_until_signalled(lambda: ready(relay.address[1])))
        finally:
            if exporter is not None:
                exporter.close()
        return 0

    def started(listening: int) -> None:
        log("started", workers=workers, port=listening)  # every worker listens

    if workers == 1:
        return serve(Worker(), (host, port), started)
    return run_workers(workers, spool, (host, port), serve, started, waiting_for(log, spool))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed: its TLS and socket layers are native code, asyncio's are
    largely Python (the relay's busiest code under load). None: asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def start_metrics(listen: str | None, log: EventLog, spool: Path,
                  worker: Worker) -> MetricsServer | None:
    """Count this worker's events; the leading worker also serves them all over HTTP."""
    if not listen:
        return None
    # prometheus-client: only if used
    from connectwiz.metrics import MetricsServer, RelayMetrics, share_counters

    shared = None
    if worker.shared:  # the workers' counters meet in files (the leader starts first)
        shared = spool / METRICS_FOLDER
        share_counters(shared, clear=worker.leads)
    metrics = RelayMetrics(spool, shared=shared)
    log.subscribe(metrics.observe)
    if not worker.leads:
        return None
    exporter = MetricsServer(listen, metrics.registry)
    log("metrics", host=exporter.address[0], port=exporter.address[1], path="/metrics")
    return exporter
