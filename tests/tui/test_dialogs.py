"""The dialogs' Cancel buttons: they do what Escape does, in every dialog."""

from __future__ import annotations

from pathlib import Path

from connectwiz.policy.model import EncryptionMode
from connectwiz.tui.components.dialogs import RouteDialog
from connectwiz.tui.components.domain_dialog import DomainValidateDialog
from connectwiz.tui.screens.domains import DomainsScreen
from connectwiz.tui.screens.routes import RoutesScreen
from tests.tui.helpers import ROUTES, Setup, wait_for, wizard

SIZE = (100, 30)


async def test_cancel_button_closes_a_dialog_and_changes_nothing(bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter", "a")
        await wait_for(pilot, lambda: isinstance(app.screen, RouteDialog), what="route dialog")
        await pilot.press(*"new.corp.example")
        await pilot.click("#cancel")
        await wait_for(pilot, lambda: isinstance(app.screen, RoutesScreen), what="routes")
        assert [(r.host, r.port) for r in app.state.model.inbound_routes] == ROUTES


async def test_validate_dialog_cancel_stops_a_test_before_closing(bundle_path: Path) -> None:
    setup = Setup(route_modes={key: EncryptionMode.STRICT for key in ROUTES},
                  domains=["trusted.example"])
    app = wizard(setup.write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter", "n", "v")
        await wait_for(pilot, lambda: isinstance(app.screen, DomainValidateDialog),
                       what="validate dialog")
        dialog = app.screen
        assert isinstance(dialog, DomainValidateDialog)
        dialog.show_pending(["trusted.example"])  # as if a test were running
        await pilot.click("#cancel")
        await pilot.pause()
        assert app.screen is dialog, "the first Cancel only stops the test"
        dialog.settle("trusted.example")
        button = dialog.query_one("#cancel")
        await wait_for(pilot, lambda: not button.has_class("-active"), what="button released")
        await pilot.click("#cancel")
        await wait_for(pilot, lambda: isinstance(app.screen, DomainsScreen), what="domains")
