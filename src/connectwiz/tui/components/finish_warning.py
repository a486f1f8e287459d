"""Asked before Finish saves a bundle that enforces TLS with domains whose mail would bounce."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Label, Static

from connectwiz.tui.components.dialogs import Dialog
from connectwiz.tui.labels import shown_names
from connectwiz.tui.state import Risks
from connectwiz.tui.widgets import key_of


class FinishWarningDialog(Dialog[bool]):
    """Lists the risky domains by group with what happens and how to fix it. True: save anyway."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Go back", id="go_back"),
        Binding("a", "anyway", "Finish anyway", id="anyway"),
    ]

    def __init__(self, risks: Risks) -> None:
        super().__init__()
        self.risks = risks

    def body(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("Some domains will not get your mail", classes="title")
            with VerticalScroll(id="risk-list"):  # the title and buttons stay in view
                yield Static(self.explain(), id="risks")
            with Horizontal(classes="buttons"):
                yield Button("Go back", id="back", variant="primary")
                yield Button("Finish anyway", id="anyway", variant="error")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#back", Button).focus()  # Enter goes back: saving is the risky choice

    def explain(self) -> Text:
        remove, validate = self._key("remove"), self._key("validate")
        relaxed, validate_all = self._key("relaxed"), self._key("validate_all")
        risks = self.risks
        text = Text("Every domain in the bundle gets Enforced TLS: mail to it is only sent "
                    "over TLS that passes its checks, else it waits in the queue and then "
                    "bounces.")
        for domains, what, consequence, fix in (
            (risks.unsupported, "Do not support TLS",
             "mail to them will be deferred, then bounced",
             f"remove it ({remove}) until the partner offers STARTTLS"),
            (risks.no_mail, "Accept no mail (null MX)",
             "they say they accept no mail: mail to them will be bounced",
             f"remove it ({remove}): there is nothing to enforce"),
            (risks.failed, "Could not be validated",
             "if they lack TLS, mail to them will be deferred, then bounced",
             f"validate it again ({validate}) or remove it ({remove})"),
            (risks.not_validated, "Never validated",
             "if they lack TLS, mail to them will be deferred, then bounced",
             f"validate it ({validate}; {validate_all} validates all) or remove it ({remove})"),
            (risks.too_strict, "Only pass Relaxed checks but are enforced Strict",
             "Strict checks fail: mail to them will be deferred, then bounced",
             f"press {relaxed} on its row to enforce Relaxed"),
        ):
            if domains:
                text.append(f"\n\n{what} ({len(domains)}): ", style="bold")
                text.append(shown_names(domains))
                text.append(f"\n  {consequence[0].upper()}{consequence[1:]}.")
                text.append(f"\n  Fix: {fix}.", style="yellow")
        return text

    def _key(self, binding_id: str) -> str:
        """The fix's key on the step below, else (opened from Mail flow) the key on the
        External domains step, which is where the fixes are made."""
        try:
            return key_of(self, binding_id)
        except KeyError:
            from connectwiz.tui.screens.domains import DomainsScreen

            for binding in Binding.make_bindings(DomainsScreen.BINDINGS):
                if binding.id == binding_id:
                    return f"{self.app.get_key_display(binding)} on External domains"
            raise

    def action_cancel(self) -> None:
        self.dismiss(False)

    def action_anyway(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "anyway")
