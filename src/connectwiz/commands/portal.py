"""``connectwiz portal``: serve the Secure Messaging portal until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path
from urllib.parse import urlsplit

from connectwiz.bundle import Bundle
from connectwiz.bundle.paths import resolve_bundle_path
from connectwiz.errors import UserError
from connectwiz.policy.wording import Wording
from connectwiz.portal.app import Portal, PortalConfig, tls_context
from connectwiz.probe.options import parse_host_port
from connectwiz.relay.events import EventLog
from connectwiz.relay.spool import default_spool


def config_from(args: argparse.Namespace) -> PortalConfig:
    hostname = args.hostname or socket.gethostname()
    public_url = args.public_url or f"https://{hostname}/secure"
    url = urlsplit(public_url)
    if url.scheme not in ("http", "https") or not url.netloc or url.query or url.fragment \
            or any(c.isspace() for c in public_url):
        raise UserError(f"--public-url {public_url!r}: give an http(s) URL, "
                        "e.g. https://mail.example.com/secure")
    local = url.hostname in ("127.0.0.1", "localhost", "::1")
    if args.insecure_cookies and not local:
        raise UserError("--insecure-cookies is only for http://127.0.0.1 tests; "
                        f"--public-url {public_url} needs Secure cookies")
    if url.scheme == "http" and not local:
        raise UserError(f"--public-url {public_url}: recipients must open https:// (browsers "
                        "drop the portal's Secure cookies on http://, so every form would "
                        "fail); serve TLS with --tls-cert or a reverse proxy")
    organisation, logo, wording = _branding(args.bundle)
    return PortalConfig(
        spool=Path(args.spool) if args.spool else default_spool(),
        public_url=public_url,
        relay=parse_host_port(args.relay, 2525),
        key_file=Path(args.secure_key) if args.secure_key else None,
        insecure_cookies=args.insecure_cookies,
        behind_proxy=args.behind_proxy,
        hostname=hostname,
        organisation=organisation,
        logo=logo,
        wording=wording,
    )


def _branding(bundle: str | None) -> tuple[str, Path | None, Wording]:
    """The organisation's name, logo and wording (texts, colours) from the bundle (the
    relay's), when there is one: pages without them look like phishing to a first-time
    recipient. A logo path is relative to the bundle's folder."""
    path = resolve_bundle_path(bundle)
    if bundle is None and not path.exists():
        return "", None, Wording()
    model = Bundle.load(path).model
    org = model.organisation
    logo = (path.parent / org.logo) if org.logo else None
    return org.name, logo, model.secure_settings.wording


def run(args: argparse.Namespace) -> int:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UserError("--tls-cert and --tls-key go together")
    if args.listen.endswith(":0"):  # any free port; the "listening" log line names it
        host, port = parse_host_port(args.listen[:-2], 8080)[0], 0
    else:
        host, port = parse_host_port(args.listen, 8080)
    config = config_from(args)
    if not (config.spool / "secure").is_dir():
        raise UserError(f"{config.spool}: no Secure Messaging store (secure/); "
                        "give the relay's --spool")
    ssl_context = tls_context(Path(args.tls_cert), Path(args.tls_key)) if args.tls_cert \
        else None
    log = EventLog(json_lines=args.log_json)
    portal = Portal(config, log)
    exporter = None
    if args.metrics:
        from connectwiz.metrics import MetricsServer, PortalMetrics  # only when asked for

        metrics = PortalMetrics()
        log.subscribe(metrics.observe)  # the portal's events are the metrics' only source
        exporter = MetricsServer(args.metrics, metrics.registry)
        log("metrics", host=exporter.address[0], port=exporter.address[1], path="/metrics")
    try:
        asyncio.run(portal.serve_until_signalled(host, port, ssl_context))
    finally:
        if exporter is not None:
            exporter.close()
    return 0
