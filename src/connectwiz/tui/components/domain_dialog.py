"""Validate one external domain: ask an address there, probe, show the verdict with More/Less."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Collapsible, Label, Static

from connectwiz.policy.model import ValidationStatus
from connectwiz.probe import Target
from connectwiz.probe.results import TargetResult
from connectwiz.tui.components.dialogs import Dialog
from connectwiz.tui.deciding import TlsDecided, decided_by
from connectwiz.tui.editors import Input
from connectwiz.tui.labels import TESTING, domain_verdict, result_details
from connectwiz.tui.probing import ProbeFinished, ProbeRunner, TargetValidated
from connectwiz.tui.state import WizardState, email_problem, too_strict
from connectwiz.tui.widgets import key_of


class DomainValidateDialog(ProbeRunner, Dialog[None]):
    AUTO_FOCUS = "#email"  # not the scroll container: Enter and typing go to the address
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="cancel"),
        Binding("ctrl+t", "validate", "Validate", id="validate"),
    ]

    def __init__(self, domain: str) -> None:
        super().__init__()
        self.domain = domain
        self.init_probe()

    @property
    def state(self) -> WizardState:
        return self.app.state  # type: ignore[attr-defined,no-any-return]

    def body(self) -> ComposeResult:
        with VerticalScroll(classes="dialog wide"):
            yield Label(f"Validate {self.domain}", classes="title")
            yield Static("E-mail address at this domain. It is used for the test only: "
                         "no e-mail is sent.", classes="explain")
            yield Input(self.state.email_for(self.domain), id="email")
            yield Static("", classes="error")
            yield Static("", id="verdict")
            with Collapsible(title="More", id="more", collapsed=True):
                yield Static("", id="details")
            with Horizontal(classes="buttons"):
                yield Button("Validate", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#more").display = False
        result = self.state.domain_results.get(self.domain)
        if result is not None:
            self._show(result)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "validate" and self.probing:
            return None
        return True

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def action_validate(self) -> None:
        if self.probing:
            return
        email = self.query_one("#email", Input).value.strip()
        problem = email_problem(email, (self.domain,))
        if problem:
            self.error(problem)
            return
        self.error("")
        self.state.domain_emails[self.domain] = email
        self.query_one("#verdict", Static).update(TESTING)
        self.query_one("#more").display = False
        self.start_probe({self.domain: Target.domain(self.domain)}, email)

    def action_cancel(self) -> None:
        """Cancel stops a running test first; pressed again it closes the dialog."""
        if self.probing:
            self.cancel_probe()
        else:
            self.dismiss(None)

    def on_target_validated(self, message: TargetValidated) -> None:
        self.settle(self.domain)
        self.state.record_domain(self.domain, message.result)
        self._show(message.result)

    def on_probe_finished(self, message: ProbeFinished) -> None:
        # After a cancel or a failure, show the previous verdict again (or none).
        result = self.state.domain_results.get(self.domain)
        if result is not None:
            self._show(result)
        else:
            self.query_one("#verdict", Static).update("")
        self.refresh_bindings()

    def on_tls_decided(self, message: TlsDecided) -> None:
        result = self.state.domain_results.get(self.domain)
        if message.domain == self.domain and result is not None and not self.probing:
            self._show(result)

    def _show(self, result: TargetResult) -> None:
        status = ValidationStatus(result.status)
        verdict = domain_verdict(status, result.reason)
        domain = self.state.domain(self.domain)
        if domain is not None and too_strict(domain, status):
            verdict.append(f"\nStrict checks would refuse it: press {key_of(self, 'relaxed')} "
                           "on the list to enforce Relaxed.", style="yellow")
        if result.mta_sts is not None and result.mta_sts.warning:  # loud, not only in More
            verdict.append(f"\n⚠ {result.mta_sts.warning}", style="bold yellow")
        view = self.state.decisions.get(self.domain)
        if view is not None:
            # Not appended to the verdict: it would take on the verdict's colour.
            verdict = Text.assemble(verdict, "\n", decided_by(view))
        self.query_one("#verdict", Static).update(verdict)
        more = self.query_one("#more", Collapsible)
        self.query_one("#details", Static).update(result_details(result))
        more.display = True

    @on(Collapsible.Expanded)
    def _expanded(self, event: Collapsible.Expanded) -> None:
        event.collapsible.title = "Less"

    @on(Collapsible.Collapsed)
    def _collapsed(self, event: Collapsible.Collapsed) -> None:
        event.collapsible.title = "More"
