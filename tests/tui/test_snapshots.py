"""Pictures of every step and state of the wizard, at 80x24 and (for the main steps) 120x40.

Results are real TargetResult objects posted as the validation worker posts them, so the
pictures are deterministic and come from the same code path as a live probe. Review the
SVGs in snapshots/test_snapshots/ before accepting changes with --snapshot-update.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from connectwiz.policy.model import EncryptionMode, ValidationStatus
from connectwiz.probe.results import TargetResult
from connectwiz.relay.published import Published, PublishedView
from connectwiz.tui.deciding import TlsDecided, bundle_definitions
from connectwiz.tui.probing import ProbeRunner, TargetValidated
from tests.tui.helpers import (
    DOMAIN_RESULTS,
    ROUTE_RESULTS,
    ROUTES,
    SIZES,
    Setup,
    paste,
    summary_drawn,
    wait_for,
    wizard,
)

BOTH = pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
HINT = "Demo: add lab domains such as trusted.example, selfsigned.example, nullmx.example."
ALL_STRICT = {key: EncryptionMode.STRICT for key in ROUTES}
DOMAINS = ["trusted.example", "selfsigned.example", "nostarttls.example", "nullmx.example"]

Step = Callable[[Pilot[Any]], Awaitable[None]]


def steps(*actions: Step) -> Step:
    async def run(pilot: Pilot[Any]) -> None:
        for action in actions:
            await action(pilot)
        await pilot.pause()

    return run


def press(*keys: str) -> Step:
    async def run(pilot: Pilot[Any]) -> None:
        await pilot.press(*keys)
        await pilot.pause()

    return run


def feed(results: dict[Any, TargetResult]) -> Step:
    """Post results to the current screen exactly as the probe worker does."""

    async def run(pilot: Pilot[Any]) -> None:
        for key, result in results.items():
            pilot.app.screen.post_message(TargetValidated(key, result))
        await pilot.pause()

    return run


async def summary(pilot: Pilot[Any]) -> None:
    """Wait for the summary to be drawn: Finish saves in a thread, and until the save ends
    the summary is not there and its keys do nothing."""
    await wait_for(pilot, lambda: summary_drawn(pilot.app, "domain"), what="summary drawn")


def pending(keys: list[Hashable]) -> Step:
    async def run(pilot: Pilot[Any]) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, ProbeRunner)
        screen.show_pending(keys)
        screen.redraw()  # type: ignore[attr-defined]
        await pilot.pause()

    return run


def to_domains(pilot: Pilot[Any]) -> Awaitable[None]:
    return press("enter", "n")(pilot)


@BOTH
def test_start(snap_compare: Any, bundle_path: Path, size: str) -> None:
    setup = Setup(route_modes={ROUTES[0]: EncryptionMode.STRICT,
                               ROUTES[1]: EncryptionMode.RELAXED},
                  domains=DOMAINS,
                  domain_checks={"trusted.example": ValidationStatus.STRICT,
                                 "nostarttls.example": ValidationStatus.UNSUPPORTED})
    app = wizard(setup.write(bundle_path), hint=HINT)
    assert snap_compare(app, terminal_size=SIZES[size])


def test_start_new_bundle(snap_compare: Any, bundle_path: Path) -> None:
    assert snap_compare(wizard(bundle_path))


def test_organisation_dialog(snap_compare: Any, bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    assert snap_compare(app, press=["o"])


def test_organisation_dialog_rejects_bad_network(snap_compare: Any, bundle_path: Path) -> None:
    async def type_bad(pilot: Pilot[Any]) -> None:
        await pilot.press("o", "tab", "end", *", 10.0.0.0/33", "enter")

    app = wizard(Setup().write(bundle_path))
    assert snap_compare(app, run_before=steps(type_bad))


def test_routes_not_validated(snap_compare: Any, bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    assert snap_compare(app, press=["enter"])


def test_routes_email_dialog_checks_address(snap_compare: Any, bundle_path: Path) -> None:
    async def type_bad(pilot: Pilot[Any]) -> None:
        await pilot.press("enter", "v", "ctrl+u", *"not-an-address", "enter")

    app = wizard(Setup().write(bundle_path))
    assert snap_compare(app, run_before=steps(type_bad))


@BOTH
def test_routes_results_block_next(snap_compare: Any, bundle_path: Path, size: str) -> None:
    app = wizard(Setup().write(bundle_path))
    assert snap_compare(app, terminal_size=SIZES[size],
                        run_before=steps(press("enter"), feed(ROUTE_RESULTS)))


def test_routes_all_supported(snap_compare: Any, bundle_path: Path) -> None:
    app = wizard(Setup(routes=ROUTES[:2]).write(bundle_path))
    good = {k: ROUTE_RESULTS[k] for k in ROUTES[:2]}
    assert snap_compare(app, run_before=steps(press("enter"), feed(good)))


def test_routes_testing(snap_compare: Any, bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    first = {ROUTES[0]: ROUTE_RESULTS[ROUTES[0]]}
    assert snap_compare(app, run_before=steps(press("enter"), pending(list(ROUTES)),
                                              feed(first)))


def test_route_edit_dialog(snap_compare: Any, bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    assert snap_compare(app, run_before=steps(press("enter", "down", "down", "e")))


@BOTH
def test_domains(snap_compare: Any, bundle_path: Path, size: str) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path))
    # The cursor ends on selfsigned.example: only relaxed, so Enforce Relaxed is offered.
    assert snap_compare(app, terminal_size=SIZES[size],
                        run_before=steps(to_domains, feed(DOMAIN_RESULTS), press("down")))


def test_domains_empty(snap_compare: Any, bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT).write(bundle_path))
    assert snap_compare(app, run_before=steps(to_domains))


def test_domains_validating(snap_compare: Any, bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path))
    two = {d: DOMAIN_RESULTS[d] for d in DOMAINS[:2]}
    assert snap_compare(app, run_before=steps(to_domains, pending(list(DOMAINS)), feed(two)))


def test_add_domains_text(snap_compare: Any, bundle_path: Path) -> None:
    async def type_batch(pilot: Pilot[Any]) -> None:
        await pilot.press("a")
        await paste(pilot, "partner.example\nbank.example\nbücher.example")

    app = wizard(Setup(route_modes=ALL_STRICT).write(bundle_path))
    assert snap_compare(app, run_before=steps(to_domains, type_batch))


def test_add_domains_review_with_errors(snap_compare: Any, bundle_path: Path) -> None:
    async def type_batch(pilot: Pilot[Any]) -> None:
        text = "partner.example\nnot a domain\nPARTNER.example\ntrusted.example\nbank.example"
        await pilot.press("a")
        await paste(pilot, text)
        await pilot.press("ctrl+s")

    app = wizard(Setup(route_modes=ALL_STRICT, domains=["trusted.example"]).write(bundle_path))
    assert snap_compare(app, run_before=steps(to_domains, type_batch))


def test_domain_dialog_error_more(snap_compare: Any, bundle_path: Path) -> None:
    async def open_more(pilot: Pilot[Any]) -> None:
        await pilot.press("down", "down", "v")
        await pilot.pause()
        failed = DOMAIN_RESULTS["nostarttls.example"]
        pilot.app.screen.post_message(TargetValidated("nostarttls.example", failed))
        await pilot.pause()
        await pilot.click("CollapsibleTitle")

    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path))
    assert snap_compare(app, terminal_size=(100, 30), run_before=steps(to_domains, open_more))


def test_domain_dialog_supports_tls(snap_compare: Any, bundle_path: Path) -> None:
    async def validated(pilot: Pilot[Any]) -> None:
        await pilot.press("v")
        await pilot.pause()
        ok = DOMAIN_RESULTS["trusted.example"]
        pilot.app.screen.post_message(TargetValidated("trusted.example", ok))

    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path))
    assert snap_compare(app, run_before=steps(to_domains, validated))


def test_remove_confirm(snap_compare: Any, bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path))
    assert snap_compare(app, run_before=steps(to_domains, press("d")))


@BOTH
def test_finish(snap_compare: Any, bundle_path: Path, size: str) -> None:
    async def edit_and_finish(pilot: Pilot[Any]) -> None:
        await pilot.press("d", "y")  # remove trusted.example
        await pilot.press("a")
        await paste(pilot, "partner.example\nbank.example")
        await pilot.press("ctrl+s", "a")
        await pilot.pause()
        await pilot.press("f", "a")  # the others were never validated: Finish anyway

    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path))
    assert snap_compare(app, terminal_size=SIZES[size],
                        run_before=steps(to_domains, edit_and_finish))


def test_export_dialog(snap_compare: Any, bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path))
    assert snap_compare(app, run_before=steps(to_domains, press("f", "a"), summary,
                                              press("x")))


def test_quit_with_unsaved_changes_asks(snap_compare: Any, bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path))
    assert snap_compare(app, run_before=steps(to_domains, press("d", "y", "ctrl+q")))


def test_no_color(snap_compare: Any, bundle_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = wizard(Setup().write(bundle_path))
    assert app.no_color
    assert snap_compare(app, run_before=steps(press("enter"), feed(ROUTE_RESULTS)))


def test_domain_dialog_relaxed_offers_relaxed(snap_compare: Any, bundle_path: Path) -> None:
    async def validated(pilot: Pilot[Any]) -> None:
        await pilot.press("down", "v")
        await pilot.pause()
        relaxed = DOMAIN_RESULTS["selfsigned.example"]
        pilot.app.screen.post_message(TargetValidated("selfsigned.example", relaxed))

    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path))
    assert snap_compare(app, run_before=steps(to_domains, validated))


def test_finish_warning(snap_compare: Any, bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path))
    assert snap_compare(app, run_before=steps(to_domains, feed(DOMAIN_RESULTS), press("f")))


def test_domain_dialog_decided_by(snap_compare: Any, bundle_path: Path) -> None:
    """The verdict says who decides TLS, and warns where a Relaxed policy overrides the
    partner's MTA-STS enforce (a decision built by hand as the App's worker stores it)."""
    domain = "trusted.example"

    async def decided(pilot: Pilot[Any]) -> None:
        await pilot.press("r", "v")  # trusted.example enforced Relaxed, then its dialog
        await pilot.pause()
        state = pilot.app.state  # type: ignore[attr-defined]
        definition = bundle_definitions(state, {domain: f"postmaster@{domain}"})[domain]
        state.decisions[domain] = PublishedView(
            domain, definition, "enforce", "", False,
            (("mx.trusted.example", definition, Published("sts", domain, "bundle")),))
        pilot.app.screen.post_message(TargetValidated(domain, DOMAIN_RESULTS[domain]))
        await pilot.pause()
        pilot.app.screen.post_message(TlsDecided(domain))

    too_strict = {domain: ValidationStatus.RELAXED}  # so that r offers Relaxed
    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS,
                       domain_checks=too_strict).write(bundle_path))
    assert snap_compare(app, run_before=steps(to_domains, decided))
