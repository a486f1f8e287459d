"""What every wizard step shares: the App's state, redraw on show, no blink in tests."""

from __future__ import annotations

from textual.screen import Screen

from connectwiz.tui.state import WizardState
from connectwiz.tui.widgets import no_blink


class WizardScreen(Screen[None]):
    """One step of the wizard. Subclasses refresh themselves from ``state`` in ``redraw``."""

    @property
    def state(self) -> WizardState:
        return self.app.state  # type: ignore[attr-defined,no-any-return]

    def on_mount(self) -> None:
        no_blink(self)

    def on_screen_resume(self) -> None:
        # Sent when the screen is first shown and whenever a dialog or a later step closes
        # (they edit the state): one place to draw the state as it is now.
        self.redraw()

    def redraw(self) -> None:
        self.refresh_bindings()
