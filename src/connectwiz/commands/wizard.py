"""`connectwiz wizard`: the terminal wizard over one bundle."""

from __future__ import annotations

import argparse

from connectwiz.bundle.paths import resolve_bundle_path
from connectwiz.probe.options import options_from
from connectwiz.tui import make_app


def run(args: argparse.Namespace) -> int:
    options = options_from(nameserver=args.nameserver, smtp_port=args.smtp_port,
                           ca_file=args.ca_file, timeout=args.timeout,
                           greeting_timeout=args.greeting_timeout,
                           concurrency=args.concurrency, https_port=args.https_port)
    make_app(resolve_bundle_path(args.bundle), options).run()  # BundleError: one line, exit 2
    return 0
