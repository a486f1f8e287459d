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

    def open_mail_flow(self, focus: str | None = None) -> None:
        """The Mail flow step (from Start, and from a domain's row), on the relay's spool."""
        from connectwiz.relay.spool import default_spool
        from connectwiz.tui.screens.mailflow import MailFlowScreen

        spool = self.app.spool or default_spool()  # type: ignore[attr-defined]
        self.app.push_screen(MailFlowScreen(spool, focus))

    def redecide(self, name: str) -> None:
        """The bundle's policy for ``name`` changed: who decides its TLS is looked up again
        (when it was known: only real validations look it up)."""
        if self.state.decisions.pop(name, None) is not None:
            self.app.decide({name: self.state.email_for(name)})  # type: ignore[attr-defined]

    def on_screen_resume(self) -> None:
        # Sent when the screen is first shown and whenever a dialog or a later step closes
        # (they edit the state): one place to draw the state as it is now.
        self.redraw()

    def redraw(self) -> None:
        self.refresh_bindings()
