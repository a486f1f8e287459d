"""Finish writes the bundle in a thread: the screen keeps running meanwhile, with its actions
disabled so nothing changes the bundle half-way through the write."""

from __future__ import annotations

import threading
from pathlib import Path

from connectwiz.bundle import Bundle
from connectwiz.policy.model import EncryptionMode, LastValidation, ValidationStatus
from connectwiz.tui.screens.domains import DomainsScreen
from connectwiz.tui.screens.finish import FinishScreen
from tests.tui.helpers import NOW, ROUTES, Setup, summary_drawn, wait_for, wizard


async def test_finish_saves_without_blocking_the_screen(bundle_path: Path) -> None:
    setup = Setup(route_modes={key: EncryptionMode.STRICT for key in ROUTES},
                  domains=["trusted.example"])
    app = wizard(setup.write(bundle_path))
    release, entered = threading.Event(), threading.Event()
    async with app.run_test(size=(100, 30)) as pilot:
        real_save = app.state.save

        def slow_save() -> None:
            entered.set()
            assert release.wait(10), "the test never released the save"
            real_save()

        app.state.save = slow_save  # type: ignore[method-assign]
        await pilot.press("enter", "n")
        await wait_for(pilot, lambda: isinstance(app.screen, DomainsScreen), what="domains")
        screen = app.screen
        assert isinstance(screen, DomainsScreen)
        # validated Strict, so Finish saves without the warning dialog
        app.state.bundle.record_domain_validation(
            "trusted.example", LastValidation(ValidationStatus.STRICT, NOW, "ok"))
        await pilot.press("f")
        await wait_for(pilot, entered.is_set, what="save started")
        # The save is parked in its thread, yet the app still processes events:
        await pilot.pause()
        assert screen.saving
        assert screen.check_action("add", ()) is False
        assert screen.check_action("remove", ()) is False
        assert not isinstance(app.screen, FinishScreen)
        release.set()
        await wait_for(pilot, lambda: summary_drawn(app, "1 domain"), what="summary drawn")
        assert not screen.saving
    domains = [d.domain for d in Bundle.load(bundle_path).model.external_domains]
    assert domains == ["trusted.example"]
