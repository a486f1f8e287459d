"""The Finish summary names domains as every other screen does: U-labels, not punycode."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Static

from connectwiz.policy.model import EncryptionMode
from connectwiz.tui.components.finish_warning import FinishWarningDialog
from tests.tui.helpers import ROUTES, Setup, summary_drawn, wait_for, wizard


async def test_summary_and_warning_show_international_names_decoded(bundle_path: Path) -> None:
    setup = Setup(route_modes={key: EncryptionMode.STRICT for key in ROUTES})
    app = wizard(setup.write(bundle_path))
    async with app.run_test(size=(100, 30)) as pilot:
        app.state.add_domains(["xn--bcher-kva.example"])  # stored as the A-label
        await pilot.press("enter", "n", "f")
        await wait_for(pilot, lambda: isinstance(app.screen, FinishWarningDialog),
                       what="finish warning")
        assert "Never validated (1): bücher.example" in str(
            app.screen.query_one("#risks", Static).render())
        await pilot.press("a")
        await wait_for(pilot, lambda: summary_drawn(app, "1 domain"), what="summary drawn")
        for selector in ("#warnings", "#changes"):
            shown = str(app.screen.query_one(selector, Static).render())
            assert "(1): bücher.example" in shown and "xn--" not in shown
