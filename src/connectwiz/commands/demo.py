"""`connectwiz demo`: the lab in a thread and the wizard wired to it, so every state of the
flow can be seen with no network and no set-up. The wizard's first frame is drawn while the
lab starts; the lab stops when the wizard exits."""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

from connectwiz.bundle import Bundle, resolve_bundle_path
from connectwiz.commands.wizard import require_terminal
from connectwiz.policy.model import PolicyModel, ValidationStatus
from connectwiz.probe.options import NetworkOptions

if TYPE_CHECKING:
    from connectwiz.lab import LabHandle
    from connectwiz.tui.state import WizardState

DEMO_INTERNAL_DOMAIN = "corp.example"
DEMO_NETWORK = "10.0.0.0/8"
DEMO_HINT = (
    "Demo: a local lab answers for you. Add lab domains to see each verdict: "
    "trusted.example, selfsigned.example, expired.example, nostarttls.example, "
    "nullmx.example, mixed.example."
)


def seed_demo_bundle(path: Path, lab: LabHandle) -> None:
    """A starting bundle: the organisation and the lab's sample routes (strict, relaxed, none).
    A bundle kept from an earlier demo gets its lab routes pointed at this lab's port: the
    lab listens on a new port every time."""
    bundle = Bundle.load_or_new(path)
    if not path.exists():
        bundle.set_organisation(internal_domains=[DEMO_INTERNAL_DOMAIN],
                                authorized_outbound=[DEMO_NETWORK])
        for host, port in lab.routes:
            bundle.add_route(host, port)
    else:
        current = dict(lab.routes)
        moved = [(r.host, r.port) for r in bundle.model.inbound_routes
                 if r.host in current and r.port != current[r.host]]
        if not moved:
            return
        for host, port in moved:
            bundle.update_route(host, port, host, current[host])
    bundle.save()


def routes_without_tls(lab: LabHandle) -> set[str]:
    """The lab's sample routes that do not offer TLS (their host names)."""
    return {name for name, route in lab.expected_routes.items()
            if ValidationStatus(route.expected) is ValidationStatus.UNSUPPORTED}


def demo_hint(no_tls: Collection[str]) -> Callable[[PolicyModel], str]:
    """The Start screen's hint: the lab domains to try, and the sample routes without TLS
    (``no_tls``) for as long as the bundle has them."""

    def hint(model: PolicyModel) -> str:
        left = [f"{r.host}:{r.port}" for r in model.inbound_routes if r.host in no_tls]
        if not left:
            return DEMO_HINT
        return (f"{DEMO_HINT} The sample route {', '.join(left)} has no TLS: edit or "
                "remove it in step 1 to go on.")

    return hint


def demo_options(lab: LabHandle) -> NetworkOptions:
    return NetworkOptions(nameserver=lab.nameserver, smtp_port=lab.smtp_port,
                          ca_file=Path(lab.ca_file), timeout=5.0, concurrency=50,
                          https_port=lab.https_port)


def run(args: argparse.Namespace) -> int:
    require_terminal()
    kept = resolve_bundle_path(args.bundle) if args.bundle else None
    from connectwiz.tui import WizardApp, make_state

    labs: list[LabHandle] = []
    started, finished = threading.Event(), threading.Event()
    with tempfile.TemporaryDirectory(prefix="connectwiz-") as scratch:
        path = kept or Path(scratch) / "bundle.toml"

        def prepare() -> WizardState:
            # In the App's thread while its first frame is drawn: the lab takes ~0.7 s.
            started.set()
            try:
                from connectwiz.lab import run_in_thread

                lab = run_in_thread(smtp_port=0)
                labs.append(lab)
                seed_demo_bundle(path, lab)
                return make_state(path, demo_options(lab),
                                  hint=demo_hint(routes_without_tls(lab)), scratch=kept is None)
            finally:
                finished.set()

        app = WizardApp(prepare)
        try:
            app.run()
        finally:
            if started.is_set():  # quit while the lab was starting: let it finish, then stop it
                finished.wait()
            for lab in labs:  # the lab stops (and removes its files) when the wizard exits
                lab.stop()
        if app.failure is not None:
            raise app.failure
        if kept is None:
            print("The demo bundle was scratch and is gone; use --bundle PATH to keep it.",
                  file=sys.stderr)
    return 0
