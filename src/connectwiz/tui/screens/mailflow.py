"""Mail flow: what the relay did with mail to each partner domain, from its message log.

Reached from Start (m) and from a row of External domains (m, opening on that domain). The
log is read in a worker thread (100,000 messages take seconds) while the screen stays live;
refreshing reads only what changed. Actions: validate the domain again, enforce it Relaxed
(saving the bundle, after the same warning as Finish), retry its deferred mail now (the
running relay's control socket, as ``connectwiz queue flush --domain``, relay/control.py).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Header, Static

from connectwiz.errors import UserError
from connectwiz.policy.model import EncryptionMode
from connectwiz.relay.mailflow import DomainFlow, FlowScanner
from connectwiz.tui.deciding import TlsDecided, decided_by
from connectwiz.tui.labels import MUTED, mode_label, pretty_path, shown_domain
from connectwiz.tui.list_table import Cells, ListTable, sync_rows
from connectwiz.tui.screens.base import WizardScreen
from connectwiz.tui.widgets import key_of

COLUMNS = ("domain", "day", "week", "failure")
_SHOWN_DEFERRED = 2  # the detail pane has six lines at 80x24
_LINE = 76


def _one_line(text: str) -> str:
    return text if len(text) <= _LINE else text[:_LINE - 1] + "…"


def _counts(c: dict[str, int]) -> Text:
    text = Text(f"{c['delivered']:>4}", style="green" if c["delivered"] else MUTED)
    text.append(f" {c['deferred']:>3}", style="yellow" if c["deferred"] else MUTED)
    text.append(f" {c['bounced']:>3}", style="red" if c["bounced"] else MUTED)
    return text


def _cells(flow: DomainFlow) -> Cells:
    failure = Text(flow.last_failure.partition(":")[0] or "-",
                   style="yellow" if flow.last_failure else MUTED)
    return (shown_domain(flow.domain), _counts(flow.day), _counts(flow.week), failure)


class MailFlowScreen(WizardScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("v", "validate", "Validate", id="validate"),
        Binding("r", "relaxed", "Relaxed", id="relaxed"),
        Binding("t", "retry", "Retry now", id="retry"),
        Binding("g", "reload", "Refresh", id="reload"),
        Binding("b,escape", "back", "Back", id="back"),
    ]

    def __init__(self, spool: Path, focus: str | None = None) -> None:
        super().__init__()
        self.scanner = FlowScanner(spool)
        self.focus_domain = focus
        self.flows: list[DomainFlow] = []
        self.shown: dict[str, Cells] = {}
        self.loading = False
        self.progress = ""
        self.error = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Mail flow · what the relay did with mail to each domain",
                     classes="step-title")
        yield Static("Recipients delivered / deferred / bounced in the last 24 hours and "
                     "7 days, from the relay's message log.", classes="explain")
        yield ListTable(id="flow", cursor_type="row", zebra_stripes=True)
        yield Static(id="detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one(DataTable)
        for label, key in zip(("Domain", "24 h", "7 days", "Last TLS failure"), COLUMNS,
                              strict=True):
            table.add_column(label, key=key)
        self.action_reload()

    # -- reading the log (a worker thread) -------------------------------------------------

    def action_reload(self) -> None:
        if not self.loading:
            self.loading, self.error = True, ""
            self._update_detail()
            self._scan()

    @work(thread=True, exclusive=True, group="mailflow", exit_on_error=False)
    def _scan(self) -> None:
        def progress(done: int, total: int) -> None:
            self.app.call_from_thread(self._progress, f"{done:,} of {total:,}")

        try:
            flows = self.scanner.scan(self.state.clock(), progress)
        except (UserError, OSError) as exc:
            self.app.call_from_thread(self._failed, str(exc))
            return
        internal = {d.lower() for d in self.state.model.organisation.internal_domains}
        shown = sorted((f for d, f in flows.items() if d not in internal),
                       key=lambda f: f.domain)
        self.app.call_from_thread(self._loaded, shown)

    def _progress(self, text: str) -> None:
        self.progress = text
        self._update_detail()

    def _failed(self, error: str) -> None:
        self.loading, self.error = False, error
        self._update_detail()
        self.refresh_bindings()

    def _loaded(self, flows: list[DomainFlow]) -> None:
        self.loading, self.flows = False, flows
        table = self.query_one(ListTable)
        cursor = table.cursor_row
        # A refresh redraws only the rows that changed: thousands of domains stay quick.
        sync_rows(table, COLUMNS, [(f.domain, _cells(f)) for f in flows], self.shown)
        if self.focus_domain is not None:
            names = [f.domain for f in flows]
            if self.focus_domain in names:
                cursor = names.index(self.focus_domain)
            self.focus_domain = None
        if flows:
            table.move_cursor(row=min(max(cursor, 0), len(flows) - 1))
        self._update_detail()
        self.refresh_bindings()

    # -- the highlighted domain ------------------------------------------------------------

    def selected(self) -> DomainFlow | None:
        row = self.query_one(DataTable).cursor_row
        return self.flows[row] if self.flows and 0 <= row < len(self.flows) else None

    @on(DataTable.RowHighlighted)
    def _update_detail(self) -> None:
        flow = self.selected()
        if self.error:
            text = Text(self.error, style="red")
        elif self.loading:
            text = Text(f"Reading the message log… {self.progress}")
        elif flow is None:
            text = Text(f"No mail to partner domains in the last 7 days in "
                        f"{pretty_path(self.scanner.log_dir)}.", style=MUTED)
        else:
            text = self._describe(flow)
        self.query_one("#detail", Static).update(text)
        self.refresh_bindings()

    def _describe(self, flow: DomainFlow) -> Text:
        domain = self.state.domain(flow.domain)
        text = Text(shown_domain(flow.domain), style="bold")
        if domain is None:
            text.append(": not in the bundle (the relay's default delivery policy)", style=MUTED)
        else:
            text.append(f": Enforced TLS, {mode_label(domain.encryption_mode)}")
            view = self.state.decisions.get(flow.domain)
            if view is not None:  # known once validated (v) in this session
                text.append("\n").append_text(decided_by(view))
        if flow.last_failure:
            text.append(f"\nLast TLS failure {flow.last_failure_at[:16].replace('T', ' ')}: ")
            text.append(flow.last_failure, style="yellow")
        if flow.deferred:
            count = len(flow.deferred)
            text.append(f"\nDeferred ({count}{'; the oldest' if count > _SHOWN_DEFERRED else ''}), "
                        f"{key_of(self, 'retry')} retries now:", style="bold")
            for item in flow.deferred[:_SHOWN_DEFERRED]:
                line = (f"  {item.id}  {item.received_at[:16].replace('T', ' ')}  "
                        f"{item.attempts} tries  {item.reason}")
                text.append("\n" + _one_line(line), style="yellow")
        return text

    def redraw(self) -> None:
        # Back from a dialog (validate, the Finish warning): the state may say more now.
        self._update_detail()

    def on_tls_decided(self, message: TlsDecided) -> None:
        flow = self.selected()
        if flow is not None and flow.domain == message.domain:
            self._update_detail()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        flow = self.selected()
        if action == "back":
            return True
        if action == "reload":
            return not self.loading
        if flow is None or self.loading:
            return False
        if action == "relaxed":
            domain = self.state.domain(flow.domain)
            return domain is not None and domain.encryption_mode is EncryptionMode.STRICT
        if action == "retry":
            return bool(flow.deferred)
        return True

    # -- actions ---------------------------------------------------------------------------

    def action_validate(self) -> None:
        from connectwiz.tui.components.domain_dialog import DomainValidateDialog

        flow = self.selected()
        if flow is not None:
            self.app.push_screen(DomainValidateDialog(flow.domain))

    def action_relaxed(self) -> None:
        """Enforce Relaxed and save, after the warning Finish gives (the relay reads the
        saved bundle: this is a Finish for one domain)."""
        from connectwiz.tui.components.finish_warning import FinishWarningDialog

        flow = self.selected()
        domain = self.state.domain(flow.domain) if flow else None
        if domain is None or domain.encryption_mode is not EncryptionMode.STRICT:
            return
        name = domain.domain
        self.state.set_domain_mode(name, EncryptionMode.RELAXED)
        self.redecide(name)
        risks = self.state.risks()

        def done(anyway: bool | None) -> None:
            if anyway:
                self._save(name)
            else:
                self.state.set_domain_mode(name, EncryptionMode.STRICT)
                self.redecide(name)
                self._update_detail()

        if risks.empty:
            self._save(name)
        else:
            self.app.push_screen(FinishWarningDialog(risks), done)

    @work(exclusive=True, group="save", exit_on_error=False)
    async def _save(self, name: str) -> None:
        try:
            await asyncio.to_thread(self.state.save)
        except (UserError, OSError) as exc:
            self.notify(f"Could not write {self.state.path}: {exc}", severity="error",
                        timeout=10)
            return
        self.notify(f"{shown_domain(name)} is enforced Relaxed; saved to {self.state.path}. "
                    "The relay applies it when it reloads (SIGHUP).")
        self._update_detail()

    def action_retry(self) -> None:
        flow = self.selected()
        if flow is not None and flow.deferred:
            self._retry(flow.domain)

    @work(thread=True, exclusive=True, group="retry", exit_on_error=False)
    def _retry(self, domain: str) -> None:
        from connectwiz.relay import control, queuectl

        spool = self.scanner.log_dir.parent
        try:
            reply = control.request(spool, {"op": "flush", "domain": domain},
                                     socket.gethostname())
        except (UserError, OSError) as exc:
            self.app.call_from_thread(self.notify, f"Retry failed: {exc}", severity="error",
                                      timeout=10)
            return
        done = sum(1 for r in reply["results"] if r["result"].startswith(queuectl.DONE))
        where = ("the relay is retrying them now" if reply["relay"] == "running"
                 else "the relay is not running: they are tried when it starts")
        self.app.call_from_thread(
            self.notify, f"{shown_domain(domain)}: {done} message(s) queued again; {where}.")
        self.app.call_from_thread(self.action_reload)

    def action_back(self) -> None:
        self.app.pop_screen()
