"""The dialogs driven by keys and clicks: Cancel does what Escape does; what the organisation
and route dialogs save reaches the state and the screen."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Static

from connectwiz.policy.model import EncryptionMode
from connectwiz.tui.components.dialogs import OrgDialog, RouteDialog
from connectwiz.tui.components.domain_dialog import DomainValidateDialog
from connectwiz.tui.probing import TargetValidated
from connectwiz.tui.screens.domains import DomainsScreen
from connectwiz.tui.screens.routes import RoutesScreen
from connectwiz.tui.screens.start import StartScreen
from tests.tui.helpers import ROUTE_RESULTS, ROUTES, Setup, wait_for, wizard

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


async def test_organisation_dialog_saves_into_the_bundle_state(bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, OrgDialog), what="org dialog")
        await pilot.press("end", *", Bücher.example", "tab", "end", *", 192.168.1.7/24", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, StartScreen), what="start")
        org = app.state.model.organisation
        assert org.internal_domains == ("corp.example", "xn--bcher-kva.example")
        assert [str(n) for n in org.authorized_outbound] == ["10.0.0.0/8", "192.168.1.0/24"]
        assert "192.168.1.0/24" in str(app.screen.query_one("#organisation", Static).render())


async def test_route_edit_replaces_the_route_and_forgets_its_verdict(bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        app.screen.post_message(TargetValidated(ROUTES[2], ROUTE_RESULTS[ROUTES[2]]))
        await wait_for(pilot, lambda: ROUTES[2] in app.state.route_results, what="verdict")
        await pilot.press("down", "down", "e")
        await wait_for(pilot, lambda: isinstance(app.screen, RouteDialog), what="route dialog")
        await pilot.press("ctrl+u", *"new.corp.example:2525", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RoutesScreen), what="routes")
        assert [(r.host, r.port) for r in app.state.model.inbound_routes] == [
            *ROUTES[:2], ("new.corp.example", 2525)]
        assert ROUTES[2] not in app.state.route_results
        assert str(app.screen.query_one(DataTable).get_cell("new.corp.example:2525", "status")
                   ) == "not validated"
