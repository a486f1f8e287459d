"""What a mail admin hit driving the wizard at 80x24: Finish warning about domains whose mail
would bounce, hints naming the real keys, Quit in every footer, no stray scrollbar, whole
verdicts under the tables, Validate all checking each domain's own address."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import DataTable, Static
from textual.widgets._footer import FooterKey

from connectwiz.lab import LabHandle
from connectwiz.policy.model import EncryptionMode
from connectwiz.probe.options import NetworkOptions
from connectwiz.tui import WizardApp
from connectwiz.tui.components.dialogs import ConfirmDialog, OrgDialog
from connectwiz.tui.components.finish_warning import FinishWarningDialog
from connectwiz.tui.probing import TargetValidated
from connectwiz.tui.screens.add_domains import AddDomainsScreen
from connectwiz.tui.screens.domains import DomainsScreen
from connectwiz.tui.screens.routes import RoutesScreen
from connectwiz.tui.state import Risks
from connectwiz.tui.widgets import key_of
from tests.tui.helpers import (
    DOMAIN_RESULTS,
    ROUTE_RESULTS,
    ROUTES,
    Setup,
    certificate,
    domain_result,
    host_result,
    route_result,
    summary_drawn,
    wait_for,
    wizard,
)

SIZE = (80, 24)
ALL_STRICT = {key: EncryptionMode.STRICT for key in ROUTES}
DOMAINS = ["trusted.example", "selfsigned.example", "nostarttls.example", "nullmx.example",
           "new.example"]


async def feed(pilot: Pilot[Any], results: dict[Any, Any]) -> None:
    for key, result in results.items():
        pilot.app.screen.post_message(TargetValidated(key, result))
    await pilot.pause()


def text_of(app: WizardApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def footer(app: WizardApp) -> dict[str, FooterKey]:
    return {key.description: key for key in app.screen.query(FooterKey)}


async def to_domains(pilot: Pilot[Any], app: WizardApp, results: bool = True) -> DomainsScreen:
    await pilot.press("enter", "n")
    await wait_for(pilot, lambda: isinstance(app.screen, DomainsScreen), what="domains step")
    if results:
        await feed(pilot, DOMAIN_RESULTS)
    screen = app.screen
    assert isinstance(screen, DomainsScreen)
    return screen


# 1. Finish warns before saving domains whose mail would be deferred, then bounced ------

async def test_finish_lists_risky_domains_by_group_and_go_back_saves_nothing(
        bundle_path: Path) -> None:
    before = Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path).read_text()
    app = wizard(bundle_path)
    async with app.run_test(size=SIZE) as pilot:
        await to_domains(pilot, app)
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, FinishWarningDialog),
                       what="finish warning")
        assert app.screen.risks == Risks(
            unsupported=("nostarttls.example",), no_mail=("nullmx.example",),
            not_validated=("new.example",), too_strict=("selfsigned.example",))
        shown = text_of(app, "#risks")
        for line in ("Do not support TLS (1): nostarttls.example",
                     "Accept no mail (null MX) (1): nullmx.example",
                     "Never validated (1): new.example",
                     "enforced Strict (1): selfsigned.example",
                     "deferred, then bounced", "remove it (d)", "press r on its row",
                     "there is nothing to enforce", "validate it (v;"):
            assert line in shown
        await pilot.press("enter")  # the default button is Go back
        await wait_for(pilot, lambda: isinstance(app.screen, DomainsScreen), what="back")
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, FinishWarningDialog),
                       what="finish warning again")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, DomainsScreen), what="back")
    assert bundle_path.read_text() == before, "Go back writes nothing"


async def test_finish_anyway_saves_and_the_summary_warns(bundle_path: Path) -> None:
    before = Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path).read_text()
    app = wizard(bundle_path)
    async with app.run_test(size=SIZE) as pilot:
        await to_domains(pilot, app)
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, FinishWarningDialog),
                       what="finish warning")
        await pilot.press("a")
        # Drawn, not only pushed: the save runs in a thread, the summary fills in on mount.
        await wait_for(pilot, lambda: summary_drawn(app, "domains"), what="summary drawn")
        assert app.screen.query_one("#warnings").display
        warnings = text_of(app, "#warnings")
        assert "Not supporting TLS (1): nostarttls.example" in warnings
        assert "Strict, but only Relaxed passes (1): selfsigned.example" in warnings
    assert bundle_path.read_text() != before


async def test_finish_without_risks_saves_at_once_without_warnings(bundle_path: Path) -> None:
    Setup(route_modes=ALL_STRICT, domains=["trusted.example", "selfsigned.example"]
          ).write(bundle_path)
    app = wizard(bundle_path)
    async with app.run_test(size=SIZE) as pilot:
        await to_domains(pilot, app)
        await pilot.press("down", "r")  # selfsigned.example: enforce Relaxed, as it passes
        assert app.state.risks().empty
        await pilot.press("f")
        await wait_for(pilot, lambda: summary_drawn(app, "2 domains"), what="summary drawn")
        assert not app.screen.query_one("#warnings").display


async def test_relaxed_only_row_under_strict_is_marked_and_offers_r(bundle_path: Path) -> None:
    Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path)
    app = wizard(bundle_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await to_domains(pilot, app)
        table = screen.query_one(DataTable)
        await pilot.press("down")  # selfsigned.example
        assert str(table.get_cell("selfsigned.example", "mode")) == "Strict ⚠"
        assert str(table.get_cell("trusted.example", "mode")) == "Strict"
        assert "press r to enforce Relaxed" in text_of(app, "#detail")
        assert "r" in {k.key for k in footer(app).values()}
        await pilot.press("up")  # trusted.example: nothing to relax, no r in the footer
        assert "press r" not in text_of(app, "#detail")
        assert "r" not in {k.key for k in footer(app).values()}
        await pilot.press("down", "r")
        assert str(table.get_cell("selfsigned.example", "mode")) == "Relaxed"
        assert app.state.risks().too_strict == ()


# 2. Hints name the keys that are bound -------------------------------------------------

class _Rebound(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("k,ctrl+k", "thing", "Thing", id="thing")]

    def compose(self) -> ComposeResult:
        yield Static()


async def test_key_of_reads_the_binding(bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT).write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(_Rebound())
        assert key_of(app.screen, "thing") == "k"
        assert key_of(app.screen, "quit") == "^q"  # found on the App
        with pytest.raises(KeyError):
            key_of(app.screen, "nothing")
        app.pop_screen()
        await pilot.press("enter", "n", "a")
        assert isinstance(app.screen, AddDomainsScreen)
        assert key_of(app.screen, "continue") == "^s"


async def test_route_hints_use_the_bound_keys(bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        assert "Validate (v) tests every route" in text_of(app, "#status")
        await feed(pilot, ROUTE_RESULTS)
        assert "Fix (e) or remove (d)" in text_of(app, "#status")


async def test_domain_hints_use_the_bound_keys(bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        screen = await to_domains(pilot, app)
        screen.query_one(DataTable).move_cursor(row=DOMAINS.index("new.example"))
        await pilot.pause()
        assert "not validated yet (v)" in text_of(app, "#detail")
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, AddDomainsScreen), what="add")
        assert "^s continues" in text_of(app, ".explain")
        await pilot.press(*"not a domain", "ctrl+s")
        assert "remove them (d) or edit the text (e)" in text_of(app, "#summary")


LONG = ("TLSv1.3, certificate is self-signed (CN=legacy.corp.example, issuer "
        "CN=legacy.corp.example, not trusted by the system store)")


def long_route_results() -> dict[Any, Any]:
    results = dict(ROUTE_RESULTS)
    results[ROUTES[1]] = route_result(
        *ROUTES[1], "relaxed", LONG,
        certificate("legacy.corp.example", trusted=False, self_signed=True))
    return results


# 3. No stray scrollbar glyph after a validation -------------------------------------

async def test_a_long_verdict_leaves_no_horizontal_scrollbar(bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await feed(pilot, long_route_results())
        table = app.screen.query_one(DataTable)
        assert table.virtual_size.width > table.size.width, "the verdict is wider than 80"
        assert not table.show_horizontal_scrollbar


# 4. Quit in every footer, readable at 80 columns ------------------------------------

async def test_quit_is_in_the_footer_of_every_screen_within_80_columns(
        bundle_path: Path) -> None:
    Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path)
    app = wizard(bundle_path)
    seen: list[str] = []

    def check() -> None:
        keys = footer(app)
        assert "Quit" in keys, f"no Quit on {type(app.screen).__name__}"
        quit_key = keys["Quit"]
        palette = [k for k in app.screen.query(FooterKey) if k.has_class("-command-palette")]
        right = palette[0].region.x if palette else SIZE[0]
        assert quit_key.region.width > 0 and quit_key.region.right <= right
        assert quit_key.key == "ctrl+q"
        seen.append(type(app.screen).__name__)

    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        check()  # Start
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, OrgDialog), what="org dialog")
        check()
        await pilot.press("escape", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RoutesScreen), what="routes")
        check()
        await pilot.press("n")
        await feed(pilot, DOMAIN_RESULTS)
        await pilot.press("down")  # the widest footer: Relaxed is offered too
        check()
        await pilot.press("a")
        check()
        await pilot.press("escape", "f")
        check()  # the Finish warning
        await pilot.press("a")
        await wait_for(pilot, lambda: summary_drawn(app, "domain"), what="summary drawn")
        check()
    assert seen == ["StartScreen", "OrgDialog", "RoutesScreen", "DomainsScreen",
                    "AddDomainsScreen", "FinishWarningDialog", "FinishScreen"]


async def test_ctrl_q_quits_from_a_dialog(bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await to_domains(pilot, app, results=False)
        await pilot.press("d")  # remove? (a dialog)
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="confirm")
        await pilot.press("ctrl+q")  # nothing unsaved yet: quits at once
        await wait_for(pilot, lambda: app.return_code is not None, what="exit")


async def test_ctrl_q_over_a_dialog_with_unsaved_changes_asks_once(bundle_path: Path) -> None:
    app = wizard(Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await to_domains(pilot, app)  # results are unsaved changes
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="confirm")
        depth = len(app.screen_stack)
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: len(app.screen_stack) == depth + 1, what="quit question")
        assert "Quit anyway?" in str(app.screen.query_one(".question", Static).render())
        await pilot.press("ctrl+q")
        assert len(app.screen_stack) == depth + 1, "asked only once"
        await pilot.press("y")
        await wait_for(pilot, lambda: app.return_code is not None, what="exit")


# 6. The whole verdict of the highlighted row under the table --------------------------

async def test_highlighted_route_shows_its_whole_reason(bundle_path: Path) -> None:
    app = wizard(Setup().write(bundle_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await feed(pilot, long_route_results())
        await pilot.press("down")
        status = app.screen.query_one("#status", Static)
        assert f"legacy.corp.example:25: ✔ Relaxed ({LONG})" in str(status.render())
        assert status.size.height >= 3, "the reason wraps instead of being cut"


async def test_highlighted_domain_shows_its_whole_reason(bundle_path: Path) -> None:
    Setup(route_modes=ALL_STRICT, domains=DOMAINS).write(bundle_path)
    app = wizard(bundle_path)
    async with app.run_test(size=SIZE) as pilot:
        await to_domains(pilot, app)
        long = domain_result("nullmx.example", "error", LONG,
                             host_result("mx.nullmx.example", "127.0.0.9", "error", LONG))
        await feed(pilot, {"nullmx.example": long})
        await pilot.press("down", "down", "down")
        assert f"✖ Could not validate: {LONG}" in text_of(app, "#detail")


# 5. Validate all checks each domain's own address (real lab) ------------------------

@pytest.mark.network
async def test_validate_all_checks_each_domains_remembered_address(
        bundle_path: Path, lab: LabHandle, lab_network_options: NetworkOptions) -> None:
    good = lab.routes[:1]
    Setup(routes=good, route_modes={good[0]: EncryptionMode.STRICT},
          domains=["trusted.example", "rejectrcpt.example"]).write(bundle_path)
    app = wizard(bundle_path, lab_network_options)
    address = "validate-all-polish@trusted.example"
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("enter", "n")
        assert isinstance(app.screen, DomainsScreen)
        app.state.domain_emails["trusted.example"] = address  # as the dialog remembers it
        await pilot.press("V")
        await wait_for(pilot, lambda: len(app.state.domain_results) == 2
                       and not app.screen.probing, what="domain verdicts")
    trusted = app.state.domain_results["trusted.example"]
    rejecting = app.state.domain_results["rejectrcpt.example"]
    assert all(h.rcpt is not None and h.rcpt.code == 250 for h in trusted.hosts)
    assert all(h.rcpt is not None and h.rcpt.code == 550 for h in rejecting.hosts)
    commands = [c for s in lab.sessions for c in s.commands]
    assert f"RCPT TO:<{address}>" in commands
    assert "RCPT TO:<postmaster@rejectrcpt.example>" in commands

