"""Helpers for the wizard's tests: the app as the CLI builds it, waiting, sample data.

Sample bundles are written with the real Bundle API; sample results are real TargetResult
objects, fed to the screens through the same message the validation worker posts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from textual import events
from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from connectwiz.bundle import Bundle
from connectwiz.policy.model import (
    EncryptionMode,
    LastValidation,
    PolicyModel,
    ValidationStatus,
)
from connectwiz.probe.certs import CertificateInfo
from connectwiz.probe.options import NetworkOptions
from connectwiz.probe.results import HostResult, RcptReply, TargetResult
from connectwiz.tui import WizardApp, make_app
from connectwiz.tui.components.dialogs import EmailDialog
from connectwiz.tui.screens.routes import RoutesScreen

NOW = datetime(2026, 11, 22, 10, 30, tzinfo=UTC)
EARLIER = datetime(2026, 11, 20, 9, 15, tzinfo=UTC)
SIZES = {"80x24": (80, 24), "120x40": (120, 40)}


def fixed_clock() -> datetime:
    return NOW


def wizard(path: Path, options: NetworkOptions | None = None, *,
           hint: str | Callable[[PolicyModel], str] = "", scratch: bool = False) -> WizardApp:
    """The app as the CLI builds it, with the test clock, no blink and no animations."""
    app = make_app(path, options or NetworkOptions(), clock=fixed_clock, hint=hint,
                   scratch=scratch, blink=False)
    app.animation_level = "none"
    app.NOTIFICATION_TIMEOUT = 600  # a slow run must not let a toast vanish from a picture
    return app


async def paste(pilot: Pilot[Any], text: str) -> None:
    """Paste ``text`` into the focused text box, as a terminal's bracketed paste does."""
    await wait_for(pilot, lambda: isinstance(pilot.app.focused, Input | TextArea),
                   what="a focused text box")
    pilot.app.post_message(events.Paste(text))  # where the terminal driver delivers it
    await pilot.pause()


async def wait_for(pilot: Pilot[Any], predicate: Callable[[], bool], timeout: float = 15.0,
                   what: str = "condition") -> None:
    """Let the app run until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def summary_drawn(app: Any, text: str) -> bool:
    """The summary screen is up *and* drawn (its policies line shows ``text``): leaving the
    test while it is still mounting races its Header."""
    from connectwiz.tui.screens.finish import FinishScreen

    return isinstance(app.screen, FinishScreen) and any(
        text in str(w.render()) for w in app.screen.query("#policies"))


# Hand-built bundles and results for the snapshots ------------------------------------

ROUTES = [("mail.corp.example", 25), ("legacy.corp.example", 25), ("old.corp.example", 25)]


@dataclass
class Setup:
    """What a snapshot's bundle holds before the wizard opens it."""

    internal_domains: list[str] = field(default_factory=lambda: ["corp.example"])
    networks: list[str] = field(default_factory=lambda: ["10.0.0.0/8"])
    routes: list[tuple[str, int]] = field(default_factory=lambda: list(ROUTES))
    route_modes: dict[tuple[str, int], EncryptionMode] = field(default_factory=dict)
    domains: list[str] = field(default_factory=list)
    domain_checks: dict[str, ValidationStatus] = field(default_factory=dict)

    def write(self, path: Path) -> Path:
        bundle = Bundle.load_or_new(path)
        bundle.set_organisation(internal_domains=self.internal_domains,
                                authorized_outbound=self.networks)
        for host, port in self.routes:
            bundle.add_route(host, port)
            mode = self.route_modes.get((host, port))
            if mode is not None:
                last = LastValidation(ValidationStatus(mode.value), EARLIER, "")
                bundle.record_route_validation(host, port, last, mode)
        if self.domains:
            bundle.add_domains(self.domains, at=EARLIER)
        for name, status in self.domain_checks.items():
            bundle.record_domain_validation(name, LastValidation(status, EARLIER, ""))
        bundle.save()
        return path


def certificate(name: str, *, trusted: bool = True, self_signed: bool = False,
                match: bool = True, expired: bool = False) -> CertificateInfo:
    issuer = name if self_signed else "connectwiz lab CA"
    return CertificateInfo(
        subject=f"CN={name}", issuer=f"CN={issuer}", names=(name,),
        not_before=datetime(2026, 1, 1, tzinfo=UTC), not_after=datetime(2027, 1, 1, tzinfo=UTC),
        trusted=trusted, self_signed=self_signed, hostname_match=match, expired=expired,
        not_yet_valid=False, key_type="EC", key_size=256, signature_algorithm="ecdsa-with-SHA256",
    )


def host_result(host: str, address: str, status: str, reason: str, port: int = 25, *,
                starttls: bool = True, cert: CertificateInfo | None = None,
                rcpt: RcptReply | None = None) -> HostResult:
    tls = status in ("strict", "relaxed")
    return HostResult(
        host=host, address=address, port=port, preference=10, status=ValidationStatus(status),
        reason=reason, starttls=starttls, tls_version="TLSv1.3" if tls else None,
        cipher="TLS_AES_256_GCM_SHA384" if tls else None, certificate=cert, rcpt=rcpt,
        elapsed_ms=0,
    )


def route_result(host: str, port: int, status: str, reason: str,
                 cert: CertificateInfo | None = None, starttls: bool = True) -> TargetResult:
    h = host_result(host, "127.0.0.30", status, reason, port, starttls=starttls, cert=cert)
    return TargetResult(f"{host}:{port}", "route", ValidationStatus(status), reason, 0, (h,))


def domain_result(name: str, status: str, reason: str, *hosts: HostResult) -> TargetResult:
    return TargetResult(name, "domain", ValidationStatus(status), reason, 0, tuple(hosts))


ROUTE_RESULTS = {
    ("mail.corp.example", 25): route_result(
        "mail.corp.example", 25, "strict", "TLS 1.3, trusted certificate",
        certificate("mail.corp.example")),
    ("legacy.corp.example", 25): route_result(
        "legacy.corp.example", 25, "relaxed", "certificate is self-signed",
        certificate("legacy.corp.example", trusted=False, self_signed=True)),
    ("old.corp.example", 25): route_result(
        "old.corp.example", 25, "unsupported", "STARTTLS not offered", starttls=False),
}

DOMAIN_RESULTS = {
    "trusted.example": domain_result(
        "trusted.example", "strict", "TLS 1.3, trusted certificate",
        host_result("mx.trusted.example", "127.0.0.10", "strict", "TLS 1.3, trusted certificate",
                    cert=certificate("mx.trusted.example"))),
    "selfsigned.example": domain_result(
        "selfsigned.example", "relaxed", "certificate is self-signed",
        host_result("mx.selfsigned.example", "127.0.0.11", "relaxed",
                    "certificate is self-signed",
                    cert=certificate("mx.selfsigned.example", trusted=False, self_signed=True))),
    "nostarttls.example": domain_result(
        "nostarttls.example", "unsupported", "STARTTLS not offered",
        host_result("mx.nostarttls.example", "127.0.0.14", "unsupported",
                    "STARTTLS not offered", starttls=False,
                    rcpt=RcptReply(250, "2.1.5 Ok"))),
    "nullmx.example": domain_result(
        "nullmx.example", "error", "null MX: the domain accepts no mail (RFC 7505)"),
}


async def validate_routes(pilot: Pilot[Any], app: WizardApp) -> None:
    """Validate, accept the pre-filled address, wait until every route has a verdict."""
    await pilot.press("v")
    await wait_for(pilot, lambda: isinstance(app.screen, EmailDialog), what="e-mail dialog")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, RoutesScreen) and not app.screen.probing
                   and len(app.state.route_results) == len(app.state.model.inbound_routes),
                   what="route verdicts")
