"""The whole wizard driven by keys against the real lab (DNS, SMTP, TLS on loopback),
asserting on the bundle file it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectwiz.bundle import Bundle
from connectwiz.lab import LabHandle
from connectwiz.policy.model import EncryptionMode, ValidationStatus
from connectwiz.probe.options import NetworkOptions
from connectwiz.tui import WizardApp
from connectwiz.tui.components.dialogs import ConfirmDialog
from connectwiz.tui.components.finish_warning import FinishWarningDialog
from connectwiz.tui.screens.add_domains import AddDomainsScreen
from connectwiz.tui.screens.domains import DomainsScreen
from connectwiz.tui.screens.routes import RoutesScreen
from tests.tui.helpers import Setup, paste, summary_drawn, validate_routes, wait_for, wizard

pytestmark = pytest.mark.network
SIZE = (100, 30)


def on(app: WizardApp, screen: type) -> bool:
    return isinstance(app.screen, screen)


def statuses(path: Path) -> dict[str, tuple[ValidationStatus | None, EncryptionMode]]:
    model = Bundle.load(path).model
    return {d.domain: (d.last_validation.status if d.last_validation else None,
                       d.encryption_mode) for d in model.external_domains}


async def test_first_run_writes_the_bundle_at_finish(
        bundle_path: Path, lab: LabHandle, lab_network_options: NetworkOptions) -> None:
    (host1, port), (host2, _), _ = lab.routes
    # A first run: the organisation is known, no routes, no domains yet.
    Setup(routes=[]).write(bundle_path)
    before = bundle_path.read_text()
    app = wizard(bundle_path, lab_network_options)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        assert on(app, RoutesScreen)
        for host in (host1, host2):
            await pilot.press("a")
            await paste(pilot, f"{host}:{port}")
            await pilot.press("enter")
            await wait_for(pilot, lambda: on(app, RoutesScreen), what="route dialog closed")
        await validate_routes(pilot, app)
        modes = {r.host: r.encryption_mode for r in app.state.model.inbound_routes}
        assert modes == {host1: EncryptionMode.STRICT, host2: EncryptionMode.RELAXED}

        await pilot.press("n")
        assert on(app, DomainsScreen)
        await pilot.press("a")
        await paste(pilot, "trusted.example\nselfsigned.example")
        await pilot.press("ctrl+s", "a")
        await wait_for(pilot, lambda: on(app, DomainsScreen), what="domains list")
        await pilot.press("V")
        await wait_for(pilot, lambda: len(app.state.domain_results) == 2
                       and not app.screen.probing, what="domain verdicts")
        await pilot.press("down", "r")  # selfsigned.example is only relaxed: enforce it so
        assert bundle_path.read_text() == before, "nothing is written before Finish"

        await pilot.press("f")
        await wait_for(pilot, lambda: summary_drawn(app, "2 domains"), what="summary drawn")

    assert statuses(bundle_path) == {
        "trusted.example": (ValidationStatus.STRICT, EncryptionMode.STRICT),
        "selfsigned.example": (ValidationStatus.RELAXED, EncryptionMode.RELAXED),
    }
    routes = {r.host: r.encryption_mode for r in Bundle.load(bundle_path).model.inbound_routes}
    assert routes == {host1: EncryptionMode.STRICT, host2: EncryptionMode.RELAXED}


async def test_rerun_removes_a_domain_and_keeps_admin_comments(
        bundle_path: Path, lab: LabHandle, lab_network_options: NetworkOptions) -> None:
    good = lab.routes[:1]
    Setup(routes=good, route_modes={good[0]: EncryptionMode.STRICT},
          domains=["trusted.example", "selfsigned.example"]).write(bundle_path)
    bundle_path.write_text("# Owned by the mail team: ask before editing\n"
                           + bundle_path.read_text())
    app = wizard(bundle_path, lab_network_options)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter", "n")
        assert on(app, DomainsScreen)
        table_rows = app.screen.query_one("DataTable").row_count
        assert table_rows == 2, "re-running shows the existing domains"
        await pilot.press("d")
        await wait_for(pilot, lambda: on(app, ConfirmDialog), what="confirm dialog")
        await pilot.press("y", "f")
        # selfsigned.example was never validated: Finish asks before enforcing TLS with it.
        await wait_for(pilot, lambda: on(app, FinishWarningDialog), what="finish warning")
        assert app.screen.risks.not_validated == ("selfsigned.example",)
        await pilot.press("a")
        await wait_for(pilot, lambda: summary_drawn(app, "domain"), what="summary drawn")
        changes = str(app.screen.query_one("#changes").render())
        assert "Domains removed (1): trusted.example" in changes

    text = bundle_path.read_text()
    assert text.startswith("# Owned by the mail team: ask before editing\n")
    assert list(statuses(bundle_path)) == ["selfsigned.example"]


async def test_rerun_adds_a_batch_with_invalid_and_duplicate_lines(
        bundle_path: Path, lab: LabHandle, lab_network_options: NetworkOptions) -> None:
    good = lab.routes[:1]
    Setup(routes=good, route_modes={good[0]: EncryptionMode.STRICT},
          domains=["trusted.example"]).write(bundle_path)
    batch = ("selfsigned.example\nnot a domain\nSELFSIGNED.example\ntrusted.example\n"
             "nostarttls.example\n")
    app = wizard(bundle_path, lab_network_options)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter", "n", "a")
        await paste(pilot, batch)
        await pilot.press("ctrl+s")
        screen = app.screen
        assert isinstance(screen, AddDomainsScreen)
        verdicts = [(line.text, line.rejection) for line in screen.lines]
        assert [r for _, r in verdicts] == [None, "invalid", "duplicate", "already exists", None]
        assert screen.check_action("add", ()) is None, "Add waits until the errors are removed"
        await pilot.press("a")
        assert on(app, AddDomainsScreen)
        for _ in range(3):  # remove the three rejected lines, the first of them each time
            row = next(i for i, line in enumerate(screen.lines) if not line.accepted)
            screen.query_one("#review").move_cursor(row=row)
            await pilot.press("d")
        assert [line.domain for line in screen.lines] == ["selfsigned.example",
                                                          "nostarttls.example"]
        await pilot.press("a")
        await wait_for(pilot, lambda: on(app, DomainsScreen), what="domains list")
        await pilot.press("f")
        await wait_for(pilot, lambda: on(app, FinishWarningDialog), what="finish warning")
        await pilot.press("a")
        await wait_for(pilot, lambda: summary_drawn(app, "3 domains"), what="summary drawn")

    assert sorted(statuses(bundle_path)) == ["nostarttls.example", "selfsigned.example",
                                             "trusted.example"]


async def test_a_route_without_tls_blocks_next(
        bundle_path: Path, lab: LabHandle, lab_network_options: NetworkOptions) -> None:
    Setup(routes=list(lab.routes)).write(bundle_path)
    app = wizard(bundle_path, lab_network_options)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await validate_routes(pilot, app)
        blocking = [r.host for r in app.state.routes_blocking()]
        assert blocking == ["old.corp.example"]
        assert app.screen.check_action("next", ()) is None
        await pilot.press("n")
        assert on(app, RoutesScreen), "Next is disabled while a route does not support TLS"

        await pilot.press("down", "down", "d")
        await wait_for(pilot, lambda: on(app, ConfirmDialog), what="confirm dialog")
        await pilot.press("y")
        await wait_for(pilot, lambda: on(app, RoutesScreen), what="routes")
        await pilot.press("n")
        assert on(app, DomainsScreen)


async def test_quit_with_unsaved_changes_asks_and_writes_nothing(
        bundle_path: Path, lab: LabHandle, lab_network_options: NetworkOptions) -> None:
    good = lab.routes[:1]
    Setup(routes=good, route_modes={good[0]: EncryptionMode.STRICT},
          domains=["trusted.example"]).write(bundle_path)
    before = bundle_path.read_text()
    app = wizard(bundle_path, lab_network_options)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter", "n", "d", "y", "ctrl+q")
        await wait_for(pilot, lambda: on(app, ConfirmDialog), what="quit dialog")
        await pilot.press("n")  # stay
        assert on(app, DomainsScreen)
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: on(app, ConfirmDialog), what="quit dialog")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.return_code is not None, what="exit")
    assert bundle_path.read_text() == before


async def test_validation_can_be_cancelled(
        bundle_path: Path, lab: LabHandle, lab_network_options: NetworkOptions) -> None:
    good = lab.routes[:1]
    Setup(routes=good, route_modes={good[0]: EncryptionMode.STRICT},
          domains=["tarpit.example"]).write(bundle_path)
    app = wizard(bundle_path, lab_network_options)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter", "n", "V")
        screen = app.screen
        assert isinstance(screen, DomainsScreen)
        await wait_for(pilot, lambda: screen.probing, what="validation started")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.probing, what="validation stopped")
        assert "tarpit.example" not in app.state.domain_results
        messages = [n.message for n in app._notifications]
        assert "Validation cancelled" in messages
        assert app.is_running


async def test_probe_failure_is_a_message_not_a_crash(bundle_path: Path, tmp_path: Path,
                                                       lab: LabHandle) -> None:
    broken_ca = tmp_path / "deleted-after-start.pem"  # options_from checked it; now it is gone
    options = NetworkOptions(nameserver=lab.nameserver, smtp_port=lab.smtp_port,
                             ca_file=broken_ca, timeout=3.0)
    Setup(routes=list(lab.routes)[:1]).write(bundle_path)
    app = wizard(bundle_path, options)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter", "v", "enter")
        await wait_for(pilot, lambda: any(n.message.startswith("Validation failed")
                                          for n in app._notifications), what="error message")
        assert app.is_running and on(app, RoutesScreen)
        assert not app.screen.probing


async def test_export_writes_json(bundle_path: Path, lab: LabHandle,
                                  lab_network_options: NetworkOptions) -> None:
    good = lab.routes[:1]
    Setup(routes=good, route_modes={good[0]: EncryptionMode.STRICT},
          domains=["trusted.example"]).write(bundle_path)
    app = wizard(bundle_path, lab_network_options)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter", "n", "f")
        await wait_for(pilot, lambda: on(app, FinishWarningDialog), what="finish warning")
        await pilot.press("a")
        await wait_for(pilot, lambda: summary_drawn(app, "domain"), what="summary drawn")
        await pilot.press("x")
        await pilot.press("ctrl+u")
        await paste(pilot, "export.json")
        await pilot.press("enter")
        await wait_for(pilot, lambda: Path("export.json").exists(), what="export file")
    data = json.loads(Path("export.json").read_text())
    assert [d["domain"] for d in data["external_domains"]] == ["trusted.example"]


async def test_command_palette_lists_the_step_actions(bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Add", "Edit", "Remove", "Validate", "Back"} <= set(titles)
        assert "Next" not in titles, "a disabled action is not offered"
        assert "Quit" in titles
