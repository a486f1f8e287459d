"""What every wizard step shares: the App's state, the header/footer frame, no-blink in tests."""

from __future__ import annotations

from textual.screen import Screen

from connectwiz.tui.state import WizardState


class WizardScreen(Screen[None]):
    """One step of the wizard. Subclasses refresh themselves from ``state`` in ``redraw``."""

    @property
    def state(self) -> WizardState:
        return self.app.state  # type: ignore[attr-defined,no-any-return]

    def on_mount(self) -> None:
        if not getattr(self.app, "blink", True):
            for widget in self.query("Input, TextArea"):
                widget.cursor_blink = False  # type: ignore[attr-defined]

    def on_screen_resume(self) -> None:
        # Sent when the screen is first shown and whenever a dialog or a later step closes
        # (they edit the state): one place to draw the state as it is now.
        self.redraw()

    def redraw(self) -> None:
        self.refresh_bindings()
