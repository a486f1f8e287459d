"""`connectwiz wizard`: the terminal wizard over one bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from connectwiz.bundle.paths import resolve_bundle_path
from connectwiz.errors import UserError
from connectwiz.probe.options import options_from


def require_terminal() -> None:
    """Without a terminal (a pipeline, cron) Textual would write escape codes and wait for
    keys that never come: refuse in one line instead."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UserError("the wizard needs a terminal; use `domains`, `routes`, `validate` "
                        "for scripts")


def run(args: argparse.Namespace) -> int:
    options = options_from(nameserver=args.nameserver, smtp_port=args.smtp_port,
                           ca_file=args.ca_file, timeout=args.timeout,
                           greeting_timeout=args.greeting_timeout,
                           concurrency=args.concurrency, https_port=args.https_port,
                           dnssec_resolver=args.dnssec_resolver)
    path = resolve_bundle_path(args.bundle)

    from connectwiz.tui import make_app  # Textual loads in ~0.3 s: not before it is needed

    spool = Path(args.spool).expanduser() if args.spool else None
    app = make_app(path, options, spool=spool)  # a broken bundle: BundleError, one line, exit 2
    require_terminal()
    app.run()
    return 0
