"""Step 2: external domains. Add a batch, validate one or all, remove, then Finish."""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static

from connectwiz.errors import UserError
from connectwiz.policy.domains import display_domain
from connectwiz.policy.model import (
    EncryptionMode,
    ExternalDomain,
    LastValidation,
    ValidationStatus,
)
from connectwiz.probe import Target
from connectwiz.tui.components.dialogs import ConfirmDialog
from connectwiz.tui.components.domain_dialog import DomainValidateDialog
from connectwiz.tui.components.finish_warning import FinishWarningDialog
from connectwiz.tui.deciding import TlsDecided, decided_by
from connectwiz.tui.labels import MUTED, TESTING, domain_verdict, mode_label, shown_domain, when
from connectwiz.tui.list_table import Cells, ListTable, sync_rows, update_row
from connectwiz.tui.probing import ProbeFinished, ProbeRunner, TargetValidated
from connectwiz.tui.screens.add_domains import AddDomainsScreen
from connectwiz.tui.screens.base import WizardScreen
from connectwiz.tui.screens.finish import FinishScreen
from connectwiz.tui.state import NULL_MX, too_strict
from connectwiz.tui.widgets import key_of

COLUMNS = ("domain", "mode", "status", "at")


# Cells shared by many rows; a DataTable never changes its cells, and neither may we.
_TESTING = TESTING.copy()


@lru_cache(maxsize=16)
def _mode_cell(mode: EncryptionMode | None, strict_only: bool) -> Text:
    if strict_only:  # strict checks would refuse this partner's servers
        return Text(f"{mode_label(mode)} ⚠", style="bold yellow")
    return Text(mode_label(mode))


@lru_cache(maxsize=16)
def _verdict_cell(status: ValidationStatus | None) -> Text:
    return domain_verdict(status)


@lru_cache(maxsize=1024)
def _when_cell(last: LastValidation | None) -> Text:
    return Text(when(last), style=MUTED)


class DomainsScreen(ProbeRunner, WizardScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "add", "Add", id="add"),
        Binding("v", "validate", "Validate", id="validate"),
        # "All" next to "v Validate" keeps Quit in the footer at 80 columns; the command
        # palette shows the tooltip.
        Binding("V,shift+v", "validate_all", "All", id="validate_all",
                tooltip="Validate all"),
        Binding("d,delete", "remove", "Remove", id="remove"),
        Binding("r", "mode('relaxed')", "Relaxed", id="relaxed"),
        Binding("r", "mode('strict')", "Strict", id="strict"),
        Binding("f", "finish", "Finish", id="finish"),
        # Not in the footer (Quit must stay in it at 80 columns); the palette lists it.
        Binding("m", "mail_flow", "Mail flow", id="mail_flow", show=False),
        Binding("b,escape", "back", "Back", id="back"),
        # Back is off while a test runs: Esc then reaches Cancel.
        Binding("escape", "cancel_probe", "Cancel", id="cancel_probe"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.init_probe()
        self.saving = False  # the bundle is being written: nothing may change it meanwhile
        self.shown: dict[str, Cells] = {}
        self.offered: tuple[bool | None, ...] = ()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Step 2 of 3 · External domains", classes="step-title")
        yield Static("Mail to these domains is delivered with Enforced TLS in the Mode shown "
                     "(Strict or Relaxed); mail from them is received with Enforced TLS.",
                     classes="explain")
        yield ListTable(id="domains", cursor_type="row", zebra_stripes=True)
        yield ProgressBar(id="progress", show_eta=False)
        yield Static(id="detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label, key in zip(("Domain", "Mode", "Status", "Validated"), COLUMNS, strict=True):
            table.add_column(label, key=key)
        self.query_one(ProgressBar).display = False

    def redraw(self) -> None:
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        domains = self.state.model.external_domains
        # Keyed by name: rows are found again when results arrive.
        status = self.state.domain_status
        sync_rows(table, COLUMNS, [(d.domain, self._row(d, status(d))) for d in domains],
                  self.shown)
        if domains and table.cursor_row != min(cursor, len(domains) - 1):
            table.move_cursor(row=min(cursor, len(domains) - 1))
        self._update_detail()
        super().redraw()

    def _row(self, domain: ExternalDomain, status: ValidationStatus | None) -> Cells:
        """One row, from the domain and its verdict looked up once. With 10,000 domains every
        microsecond counts: the name is a plain string and the other cells are shared."""
        verdict = _TESTING if domain.domain in self.pending else _verdict_cell(status)
        return (shown_domain(domain.domain), _mode_cell(domain.encryption_mode,
                                                        too_strict(domain, status)),
                verdict, _when_cell(domain.last_validation))

    def _too_strict(self, domain: ExternalDomain) -> bool:
        return too_strict(domain, self.state.domain_status(domain))

    def selected(self) -> ExternalDomain | None:
        domains = self.state.model.external_domains
        row = self.query_one(DataTable).cursor_row
        return domains[row] if domains and 0 <= row < len(domains) else None

    @on(DataTable.RowHighlighted)
    def _update_detail(self) -> None:
        domains = self.state.model.external_domains
        domain = self.selected()
        if self.probing:
            text = Text(f"Validating… {len(self.pending)} to go. "
                        f"{key_of(self, 'cancel_probe')} cancels.")
        elif domain is None:
            text = Text(f"No external domains yet: add domains ({key_of(self, 'add')}).",
                        style="yellow")
        else:
            text = Text(f"{len(domains)} domain(s). {display_domain(domain.domain)}: ")
            reason = self.state.reason(domain)
            status = self.state.domain_status(domain)
            if status is None:
                text.append(f"not validated yet ({key_of(self, 'validate')}).", style=MUTED)
            else:
                text.append_text(domain_verdict(status, reason))
                if self._too_strict(domain):
                    text.append(f"\nStrict checks would refuse its servers: press "
                                f"{key_of(self, 'relaxed')} to enforce Relaxed.", style="yellow")
                elif NULL_MX in reason:
                    text.append(f"\nIt accepts no mail: remove it ({key_of(self, 'remove')}).",
                                style="yellow")
            view = self.state.decisions.get(domain.domain)
            if view is not None:
                text.append("\n").append_text(decided_by(view))
        self.query_one("#detail", Static).update(text)
        # Redrawing the footer on every cursor move is what scrolling would pay for; only the
        # Relaxed/Strict keys depend on the highlighted row.
        offered = (self.check_action("mode", ("relaxed",)), self.check_action("mode", ("strict",)),
                   self.probing, domain is None)
        if offered != self.offered:
            self.offered = offered
            self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.saving:
            return False
        domain = self.selected()
        if action == "cancel_probe":
            return self.probing
        if action == "mode":
            if domain is None:
                return False
            wanted = EncryptionMode(str(parameters[0]))
            if wanted is EncryptionMode.RELAXED:
                return self._too_strict(domain)
            return domain.encryption_mode is EncryptionMode.RELAXED
        if self.probing:  # only Cancel while a validation runs
            return False if action in ("add", "remove", "back") else None
        if action in ("validate", "validate_all", "remove") and domain is None:
            return None
        return True

    def action_add(self) -> None:
        self.app.push_screen(AddDomainsScreen())

    def action_validate(self) -> None:
        domain = self.selected()
        if domain is not None:
            self.app.push_screen(DomainValidateDialog(domain.domain))

    def action_validate_all(self) -> None:
        state = self.state
        domains = state.model.external_domains
        # Each domain is checked with its own address: the one last used, else postmaster@.
        self.start_probe({d.domain: Target.domain(d.domain) for d in domains},
                         {d.domain: state.email_for(d.domain) for d in domains})
        self.redraw()

    def action_remove(self) -> None:
        domain = self.selected()
        if domain is None:
            return
        name = domain.domain

        def done(yes: bool | None) -> None:
            if yes:
                self.state.remove_domain(name)
                self.redraw()
                self.notify(f"Removed {display_domain(name)} (saved at Finish)")

        self.app.push_screen(ConfirmDialog(
            f"Remove {display_domain(name)}? Its TLS policies go with it.", "Remove", "Keep"),
            done)

    def action_mode(self, mode: str) -> None:
        domain = self.selected()
        if domain is not None:
            self.state.set_domain_mode(domain.domain, EncryptionMode(mode))
            self.redecide(domain.domain)
            self.redraw()

    def action_mail_flow(self) -> None:
        domain = self.selected()
        self.open_mail_flow(domain.domain if domain else None)

    def action_cancel_probe(self) -> None:
        self.cancel_probe()

    def on_target_validated(self, message: TargetValidated) -> None:
        name = str(message.key)
        self.settle(name)
        self.state.record_domain(name, message.result)
        domain = self.state.domain(name)
        if domain is not None and name in self.shown:
            update_row(self.query_one(DataTable), COLUMNS, name,
                       self._row(domain, self.state.domain_status(domain)), self.shown)
        self._update_detail()

    def on_probe_finished(self, message: ProbeFinished) -> None:
        self.redraw()

    def on_tls_decided(self, message: TlsDecided) -> None:
        domain = self.selected()
        if domain is not None and domain.domain == message.domain:
            self._update_detail()

    def action_finish(self) -> None:
        risks = self.state.risks()
        if risks.empty:
            self._save_and_finish()
            return

        def done(anyway: bool | None) -> None:
            if anyway:
                self._save_and_finish()

        self.app.push_screen(FinishWarningDialog(risks), done)

    @work(exclusive=True, group="save", exit_on_error=False)
    async def _save_and_finish(self) -> None:
        # Serialising, checking and fsyncing a big bundle takes about a second: off the loop.
        self.saving = True
        self.refresh_bindings()
        try:
            await asyncio.to_thread(self.state.save)
        except (UserError, OSError) as exc:  # BundleError is a UserError
            self.notify(f"Could not write {self.state.path}: {exc}", severity="error",
                        timeout=10)
            return
        finally:
            self.saving = False
            self.refresh_bindings()
        self.app.push_screen(FinishScreen())

    def action_back(self) -> None:
        self.app.pop_screen()
