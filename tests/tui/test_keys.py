"""The keys a newcomer presses first: every dialog takes Enter, typing, Backspace and Esc
where the cursor looks to be; Esc goes back on every step; dimmed keys say why; keys that
arrive in one burst (over SSH) keep their order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual._xterm_parser import XTermParser
from textual.pilot import Pilot
from textual.widgets import Input, TextArea
from textual.widgets._footer import FooterKey

from connectwiz.lab import LabHandle
from connectwiz.policy.model import EncryptionMode
from connectwiz.probe.options import NetworkOptions
from connectwiz.tui import WizardApp
from connectwiz.tui.components.dialogs import (
    ConfirmDialog,
    EmailDialog,
    ExportDialog,
    OrgDialog,
    RouteDialog,
)
from connectwiz.tui.components.domain_dialog import DomainValidateDialog
from connectwiz.tui.screens.add_domains import AddDomainsScreen
from connectwiz.tui.screens.domains import DomainsScreen
from connectwiz.tui.screens.finish import FinishScreen
from connectwiz.tui.screens.routes import RoutesScreen
from connectwiz.tui.screens.start import StartScreen
from tests.tui.helpers import ROUTES, Setup, summary_drawn, wait_for, wizard

SIZE = (80, 24)
ALL_STRICT = {key: EncryptionMode.STRICT for key in ROUTES}


async def open_dialog(pilot: Pilot[Any], key: str, kind: type) -> Any:
    await pilot.press(key)
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, kind), what=kind.__name__)
    return pilot.app.screen


def error_of(app: WizardApp) -> str:
    return str(app.screen.query_one(".error").render())


def burst(app: WizardApp, data: str) -> None:
    """Hand ``data`` to the app as the terminal driver does with one read() of the terminal:
    parsed by Textual's XTermParser, every event posted before any is handled."""
    driver = app._driver
    assert driver is not None
    for event in XTermParser().feed(data):
        driver.process_message(event)


# 1. Every dialog with Enter, typing, Backspace and Esc ---------------------------------

async def test_route_and_org_dialogs_take_typing_backspace_enter_and_esc(
        bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await open_dialog(pilot, "o", OrgDialog)
        assert isinstance(app.focused, Input) and app.focused.id == "domains"
        await pilot.press("end", *", bank.examplx", "backspace", "e", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen)
                       and app.state.model.organisation.internal_domains == (
                           "corp.example", "bank.example"), what="organisation saved")
        await open_dialog(pilot, "o", OrgDialog)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen), what="start")

        await pilot.press("enter")
        dialog = await open_dialog(pilot, "a", RouteDialog)
        assert app.focused is dialog.query_one("#route")
        await pilot.press(*"new.corp.examplx", "backspace", "e", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RoutesScreen)
                       and app.state.route(("new.corp.example", 25)) is not None,
                       what="route added")
        await open_dialog(pilot, "a", RouteDialog)
        await pilot.press(*"other.corp.example", "escape")
        await wait_for(pilot, lambda: isinstance(app.screen, RoutesScreen), what="routes")
        assert app.state.route(("other.corp.example", 25)) is None


async def test_route_email_dialog_wants_an_internal_address_and_clears_old_errors(
        bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        dialog = await open_dialog(pilot, "v", EmailDialog)
        assert app.focused is dialog.query_one("#email")
        await pilot.press("ctrl+u", *"alice@partner.example", "enter")
        await pilot.pause()
        assert app.screen is dialog, "an address outside the organisation is refused"
        assert "use an address at corp.example" in error_of(app)
        await pilot.press(*"x")
        assert error_of(app) == "", "the error went with the text it was about"
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, RoutesScreen), what="routes")
        assert not app.screen.probing and app.state.route_email == ""


async def test_confirm_dialog_footer_names_its_buttons_and_esc_keeps(bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await open_dialog(pilot, "d", ConfirmDialog)
        keys = {key.key: key.description for key in app.screen.query(FooterKey)}
        assert keys["y"] == "Remove" and keys["escape"] == "Keep"
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, RoutesScreen), what="routes")
        assert len(app.state.model.inbound_routes) == len(ROUTES)


async def test_export_dialog_takes_enter(bundle_path: Path, wizard_env: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT).write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter", "n", "f")
        await wait_for(pilot, lambda: summary_drawn(app, "0 domains"), what="summary")
        dialog = await open_dialog(pilot, "x", ExportDialog)
        assert app.focused is dialog.query_one("#path")
        await pilot.press("ctrl+u", *"copy.tomlx", "backspace", "enter")
        await wait_for(pilot, lambda: (wizard_env / "copy.toml").exists(), what="export")
        await open_dialog(pilot, "x", ExportDialog)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, FinishScreen), what="summary")


async def test_domain_validate_dialog_takes_typing_and_enter(
        bundle_path: Path, lab: LabHandle, lab_network_options: NetworkOptions) -> None:
    """Step 2's `v`: the address field has the focus, so Enter validates (it used to sit on
    the scroll container, where Enter, typing and Backspace did nothing)."""
    setup = Setup(route_modes=ALL_STRICT, domains=["trusted.example"])
    app = wizard(setup.write(bundle_path), lab_network_options)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("enter", "n")
        await wait_for(pilot, lambda: isinstance(app.screen, DomainsScreen), what="domains")
        dialog = await open_dialog(pilot, "v", DomainValidateDialog)
        assert app.focused is dialog.query_one("#email")
        await pilot.press("ctrl+u", *"bob@other.example", "enter")
        await pilot.pause()
        assert "use an address at trusted.example" in error_of(app)
        await pilot.press("ctrl+u", *"bob@trusted.examplx", "backspace", "e", "enter")
        await wait_for(pilot, lambda: "trusted.example" in app.state.domain_results,
                       timeout=30, what="verdict")
        assert app.state.domain_emails["trusted.example"] == "bob@trusted.example"
        await wait_for(pilot, lambda: not dialog.probing, what="probe finished")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, DomainsScreen), what="domains")


# 9. Esc goes back; dimmed keys say why; the palette lists each command once -------------

async def test_esc_goes_back_on_every_step_but_cancels_a_running_test(bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT, domains=["trusted.example"]).write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter", "n")
        await wait_for(pilot, lambda: isinstance(app.screen, DomainsScreen), what="domains")
        screen = app.screen
        assert isinstance(screen, DomainsScreen)
        screen.show_pending(["trusted.example"])  # as if a validation were running
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen, "Esc cancels the test, it does not leave the step"
        screen.settle("trusted.example")
        await pilot.press("f", "a")
        await wait_for(pilot, lambda: summary_drawn(app, "1 domain"), what="summary")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, DomainsScreen), what="domains")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, RoutesScreen), what="routes")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen), what="start")


async def test_dimmed_add_on_the_batch_review_says_why(bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT).write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter", "n", "a")
        await wait_for(pilot, lambda: isinstance(app.screen, AddDomainsScreen), what="add")
        await pilot.press(*"bad_domain", "ctrl+s")
        await wait_for(pilot, lambda: app.screen.reviewing, what="review")
        add = next(k for k in app.screen.query(FooterKey) if k.key == "a")
        assert add.has_class("-disabled")
        await pilot.press("a")
        await wait_for(pilot, lambda: bool(list(app._notifications)), what="a notification")
        said = " ".join(n.message for n in app._notifications)
        assert "1 line(s) have errors: remove them (d) or edit the text (e)" in said
        assert app.state.model.external_domains == ()


async def test_palette_lists_each_command_once(bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await open_dialog(pilot, "d", ConfirmDialog)
        for screen in (app.screen, app.screen_stack[-2]):
            titles = [c.title for c in app.get_system_commands(screen)]
            assert len(titles) == len(set(titles)), titles
            assert "Quit" in titles


# 11. Keys that arrive in one burst keep their order --------------------------------------

async def test_a_burst_of_keys_edits_in_order(bundle_path: Path) -> None:
    """Ctrl+U then a new value then Enter in one read, as over SSH: Textual runs bound keys
    (Ctrl+U, Backspace, Enter) only after they bubble up to the App, so the letters that
    followed used to be typed first and then wiped."""
    app = wizard(Setup().write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter", "down", "down")
        dialog = await open_dialog(pilot, "e", RouteDialog)
        burst(app, "\x15new.corp.examplx\x7fe:2525\r")
        await wait_for(pilot, lambda: app.screen is not dialog, what="the dialog closed")
        assert app.state.route(("new.corp.example", 2525)) is not None

        app.push_screen(AddDomainsScreen())
        await wait_for(pilot, lambda: isinstance(app.focused, TextArea), what="text box")
        burst(app, "trusted.examplx\x7fe\rbank.example")
        area = app.focused
        assert isinstance(area, TextArea)
        await wait_for(pilot, lambda: area.text.endswith("bank.example"), what="typed")
        assert area.text == "trusted.example\nbank.example"
