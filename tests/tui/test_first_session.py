"""What a new admin read on screen in a first session: text that stays true (the demo's
route hint, step 2's mode, the demo's scratch bundle), null MX domains called what they are,
and an 80x24 layout where long lines wrap under themselves and toasts leave the status
line readable."""

from __future__ import annotations

import threading
from pathlib import Path

from textual.widgets import Static

from connectwiz.bundle import Bundle, BundleError
from connectwiz.commands.demo import demo_hint, seed_demo_bundle
from connectwiz.lab import LabHandle
from connectwiz.policy.model import EncryptionMode
from connectwiz.probe.options import NetworkOptions
from connectwiz.tui import WizardApp, make_state
from connectwiz.tui.components.dialogs import ConfirmDialog, ExportDialog
from connectwiz.tui.editors import Input
from connectwiz.tui.screens.domains import DomainsScreen
from connectwiz.tui.screens.finish import FinishScreen
from connectwiz.tui.screens.routes import RoutesScreen
from connectwiz.tui.screens.start import PreparingScreen, StartScreen
from connectwiz.tui.state import WizardState
from tests.tui.helpers import (
    DOMAIN_RESULTS,
    ROUTES,
    Setup,
    fixed_clock,
    summary_drawn,
    wait_for,
    wizard,
)
from tests.tui.test_polish import feed

SIZE = (80, 24)
ALL_STRICT = {key: EncryptionMode.STRICT for key in ROUTES}


def text_of(app: object, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())  # type: ignore[attr-defined]


# 6. Text that stays true -----------------------------------------------------------------

async def test_demo_route_hint_goes_with_the_route(bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path), hint=demo_hint({"old.corp.example"}))
    async with app.run_test(size=SIZE) as pilot:
        assert "old.corp.example:25 has no TLS" in text_of(app, "#hint")
        await pilot.press("enter", "down", "down", "d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="confirm")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.state.route(ROUTES[2]) is None, what="removed")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen)
                       and "has no TLS" not in text_of(app, "#hint"), what="hint redrawn")
        assert "lab domains" in text_of(app, "#hint")


async def test_demo_hint_says_nothing_of_a_route_the_bundle_never_had(bundle_path: Path) -> None:
    app = wizard(Setup(routes=ROUTES[:2]).write(bundle_path),
                 hint=demo_hint({"old.corp.example"}))
    async with app.run_test(size=SIZE):
        assert "has no TLS" not in text_of(app, "#hint")


async def test_step_two_does_not_call_every_domain_strict(bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT, domains=["a.example"]).write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter", "n")
        await wait_for(pilot, lambda: isinstance(app.screen, DomainsScreen)
                       and bool(app.screen.query(".explain")), what="domains")
        explain = " ".join(str(w.render()) for w in app.screen.query(".explain"))
        assert "Enforced TLS (Strict)" not in explain
        assert "Strict or Relaxed" in explain


# 5. The demo's scratch bundle ---------------------------------------------------------------

async def test_scratch_bundle_is_called_scratch_and_exports_to_the_working_folder(
        wizard_env: Path) -> None:
    scratch = wizard_env / "scratch"
    scratch.mkdir()
    app = wizard(Setup(route_modes=ALL_STRICT).write(scratch / "bundle.toml"), scratch=True)
    async with app.run_test(size=(100, 30)) as pilot:
        assert "scratch: deleted on exit" in text_of(app, "#bundle")
        await pilot.press("enter", "n", "f")
        await wait_for(pilot, lambda: summary_drawn(app, "0 domains"), what="summary")
        assert "a scratch copy, deleted when the demo ends: export it (x)" in text_of(
            app, "#saved")
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportDialog)
                       and bool(app.screen.query("#path")), what="export")
        assert app.screen.query_one("#path", Input).value == "bundle.json"


async def test_a_kept_demo_bundle_follows_the_lab_to_its_new_port(
        bundle_path: Path, lab: LabHandle) -> None:
    old_port = lab.smtp_port + 1
    Setup(routes=[(host, old_port) for host, _ in lab.routes]).write(bundle_path)
    seed_demo_bundle(bundle_path, lab)
    model = Bundle.load(bundle_path).model
    assert [(r.host, r.port) for r in model.inbound_routes] == list(lab.routes)
    assert model.organisation.internal_domains == ("corp.example",)  # the rest is kept


# 8. A null MX domain accepts no mail ------------------------------------------------------

async def test_null_mx_domain_is_said_to_accept_no_mail(bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT, domains=["nullmx.example"]).write(bundle_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("enter", "n")
        await wait_for(pilot, lambda: isinstance(app.screen, DomainsScreen), what="domains")
        await feed(pilot, {"nullmx.example": DOMAIN_RESULTS["nullmx.example"]})
        await wait_for(pilot, lambda: "It accepts no mail: remove it (d)." in text_of(
            app, "#detail"), what="the verdict's advice")
        assert app.state.risks().no_mail == ("nullmx.example",)
        assert app.state.risks().failed == ()
        await pilot.press("f", "a")
        await wait_for(pilot, lambda: summary_drawn(app, "1 domain"), what="summary")
        warnings = text_of(app, "#warnings")
        assert "Accepting no mail (null MX): remove them (1): nullmx.example" in warnings
        assert "Could not be validated" not in warnings


# 7. The 80x24 layout ------------------------------------------------------------------------

async def test_summary_lines_wrap_under_themselves_and_modes_line_up(bundle_path: Path) -> None:
    names = [f"partner{i}.example" for i in range(6)]
    setup = Setup(route_modes={ROUTES[0]: EncryptionMode.STRICT,
                               ROUTES[1]: EncryptionMode.RELAXED,
                               ROUTES[2]: EncryptionMode.STRICT}, domains=names)
    app = wizard(setup.write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        routes = text_of(app, "#routes").splitlines()[1:]
        assert len({line.index(mode) for line, mode in zip(
            routes, ("Strict", "Relaxed", "Strict"), strict=True)}) == 1, routes
        await pilot.press("enter", "n", "f", "a")
        await wait_for(pilot, lambda: summary_drawn(app, "6 domains"), what="summary")
        await pilot.pause()
        warnings = text_of(app, "#warnings").splitlines()
        assert warnings[1].startswith("  Never validated (6): partner0.example")
        assert len(warnings) > 2, "six names do not fit on one line at 80 columns"
        assert all(line.startswith("    ") for line in warnings[2:]), warnings
        assert isinstance(app.screen, FinishScreen)


async def test_notifications_leave_the_status_line_readable(bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RoutesScreen), what="routes")
        app.notify("Something happened that takes two lines to say at this width, at least")
        await wait_for(pilot, lambda: bool(app.screen.query("Toast")), what="toast")
        await pilot.pause()
        status = app.screen.query_one("#status").region
        for toast in app.screen.query("Toast"):
            assert not toast.region.overlaps(status), (toast.region, status)


# Performance: the demo draws its first frame while the lab starts ----------------------------

async def test_app_draws_while_its_state_is_prepared_then_shows_start(bundle_path: Path) -> None:
    Setup().write(bundle_path)
    release = threading.Event()

    def prepare() -> WizardState:
        assert release.wait(30), "the test did not let the preparation finish"
        return make_state(bundle_path, NetworkOptions(), clock=fixed_clock)

    app = WizardApp(prepare, blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, PreparingScreen), what="preparing")
        assert "Starting the lab" in text_of(app, ".explain")
        release.set()
        # The Start screen, drawn from the prepared state (leaving mid-mount races Header).
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen)
                       and "mail.corp.example" in text_of(app, "#routes"), what="start")
        await pilot.press("escape")  # nothing below the Start screen: the step stays
        assert isinstance(app.screen, StartScreen)


async def test_a_failed_preparation_ends_the_app_with_its_error(bundle_path: Path) -> None:
    bundle_path.write_text("schema_version = 1\n[organisation\n")

    def prepare() -> WizardState:
        return make_state(bundle_path, NetworkOptions())

    app = WizardApp(prepare, blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.failure is not None, what="the failure")
    assert isinstance(app.failure, BundleError)
    assert str(bundle_path) in str(app.failure)
