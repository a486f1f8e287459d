"""Step 1: the inbound routes. Validate tests every route; Next waits until all support TLS."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static

from connectwiz.errors import UserError
from connectwiz.probe import Target
from connectwiz.tui.components.dialogs import ConfirmDialog, EmailDialog, RouteDialog
from connectwiz.tui.labels import TESTING, route_verdict
from connectwiz.tui.probing import ProbeFinished, ProbeRunner, TargetValidated
from connectwiz.tui.screens.base import WizardScreen
from connectwiz.tui.screens.domains import DomainsScreen
from connectwiz.tui.state import RouteKey
from connectwiz.tui.widgets import key_of


def _row_key(key: RouteKey) -> str:
    return f"{key[0]}:{key[1]}"


class RoutesScreen(ProbeRunner, WizardScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "add", "Add", id="add"),
        Binding("e", "edit", "Edit", id="edit"),
        Binding("d,delete", "remove", "Remove", id="remove"),
        Binding("v", "validate", "Validate", id="validate"),
        Binding("n", "next", "Next", id="next"),
        Binding("b,escape", "back", "Back", id="back"),
        # Back is off while a test runs: Esc then reaches Cancel.
        Binding("escape", "cancel_probe", "Cancel", id="cancel_probe"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.init_probe()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Step 1 of 3 · Validate inbound routes", classes="step-title")
        yield Static("Your internal mail servers must accept mail over TLS before partner "
                     "domains can be enforced. Validate tests each one.", classes="explain")
        yield DataTable(id="routes", cursor_type="row", zebra_stripes=True)
        yield ProgressBar(id="progress", show_eta=False)
        yield Static(id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("Route", key="route")
        table.add_column("Port", key="port")
        table.add_column("Status", key="status")
        self.query_one(ProgressBar).display = False

    def redraw(self) -> None:
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        for route in self.state.model.inbound_routes:
            key = (route.host, route.port)
            table.add_row(route.host, str(route.port), self._verdict(key),
                          key=_row_key(key))
        if self.state.model.inbound_routes:
            table.move_cursor(row=min(cursor, table.row_count - 1))
        self._update_status()
        super().redraw()

    def _verdict(self, key: RouteKey) -> Text:
        if key in self.pending:
            return TESTING.copy()
        route = self.state.route(key)
        if route is None:
            return Text("")
        result = self.state.route_results.get(key)
        reason = result.reason if result else (
            route.last_validation.reason if route.last_validation else "")
        return route_verdict(self.state.route_status(route), reason)

    @on(DataTable.RowHighlighted)
    def _update_status(self) -> None:
        """The highlighted route's whole verdict (the table may cut it), then what to do next."""
        state = self.state
        routes = state.model.inbound_routes
        blocking = state.routes_blocking()
        key = self.selected()
        text = Text()
        if key is not None and not self.probing:
            text.append(f"{_row_key(key)}: ")
            text.append_text(self._verdict(key))
            text.append("\n")
        if self.probing:
            text.append(f"Testing {len(self.pending)} route(s)… "
                        f"{key_of(self, 'cancel_probe')} cancels.")
        elif not routes:
            text.append(f"Add your internal mail servers ({key_of(self, 'add')}), then "
                        f"validate them ({key_of(self, 'validate')}).", style="yellow")
        elif any(state.route_status(r) is None for r in blocking):
            text.append(f"Validate ({key_of(self, 'validate')}) tests every route. Next needs "
                        "all of them to support TLS.", style="yellow")
        elif blocking:
            first = blocking[0]
            text.append(f"{len(routes) - len(blocking)} of {len(routes)} routes support TLS. "
                        f"Fix ({key_of(self, 'edit')}) or remove ({key_of(self, 'remove')}) "
                        f"{first.host}:{first.port} to go on.", style="yellow")
        else:
            text.append(f"Every route supports TLS. Next: external domains "
                        f"({key_of(self, 'next')}).", style="green")
        self.query_one("#status", Static).update(text)

    def selected(self) -> RouteKey | None:
        table = self.query_one(DataTable)
        routes = self.state.model.inbound_routes
        if not routes or not 0 <= table.cursor_row < len(routes):
            return None
        route = routes[table.cursor_row]
        return (route.host, route.port)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_probe":
            return self.probing
        if action == "next":
            return True if self.state.routes_ready() and not self.probing else None
        if action in ("edit", "remove", "add", "back"):
            if self.probing:  # the list must not change under a running validation
                return False
            if action in ("add", "back"):
                return True
            return True if self.state.model.inbound_routes else None
        if action == "validate":
            return True if self.state.model.inbound_routes and not self.probing else None
        return True

    def action_add(self) -> None:
        def done(result: tuple[str, int] | None) -> None:
            if result is None:
                return
            if self.state.route(result) is not None:
                self.notify(f"{result[0]}:{result[1]} is already a route", severity="warning")
                return
            try:
                self.state.add_route(*result)
            except UserError as exc:
                self.notify(str(exc), severity="error")
            self.redraw()

        self.app.push_screen(RouteDialog("Add an inbound route",
                                         default_port=self.state.options.smtp_port), done)

    def action_edit(self) -> None:
        key = self.selected()
        if key is None:
            return

        def done(result: tuple[str, int] | None) -> None:
            if result is None or result == key:
                return
            if self.state.route(result) is not None:
                self.notify(f"{result[0]}:{result[1]} is already a route", severity="warning")
                return
            try:
                self.state.update_route(key, *result)
            except UserError as exc:
                self.notify(str(exc), severity="error")
            self.redraw()

        self.app.push_screen(RouteDialog("Edit the inbound route", _row_key(key),
                                         default_port=self.state.options.smtp_port), done)

    def action_remove(self) -> None:
        key = self.selected()
        if key is None:
            return

        def done(yes: bool | None) -> None:
            if yes:
                self.state.remove_route(key)
                self.redraw()

        self.app.push_screen(ConfirmDialog(f"Remove the route {_row_key(key)}?", "Remove",
                                           "Keep"), done)

    def action_validate(self) -> None:
        def done(email: str | None) -> None:
            if email is None:
                return
            self.state.route_email = email
            targets = {(r.host, r.port): Target.route(r.host, r.port)
                       for r in self.state.model.inbound_routes}
            self.start_probe(targets, email)
            self.redraw()

        self.app.push_screen(EmailDialog(
            "Validate inbound routes",
            "An address at one of your internal domains, used to test that each route "
            "accepts it. No e-mail is sent.",
            self.state.route_email or self._default_email(), ok="Test",
            domains=self.state.model.organisation.internal_domains), done)

    def _default_email(self) -> str:
        domains = self.state.model.organisation.internal_domains
        return f"postmaster@{domains[0]}" if domains else ""

    def action_cancel_probe(self) -> None:
        self.cancel_probe()

    def on_target_validated(self, message: TargetValidated) -> None:
        key = message.key
        assert isinstance(key, tuple)
        self.settle(key)
        self.state.record_route(key, message.result)
        if self.state.route(key) is not None:
            self.query_one(DataTable).update_cell(_row_key(key), "status", self._verdict(key),
                                                  update_width=True)
        self._update_status()
        self.refresh_bindings()

    def on_probe_finished(self, message: ProbeFinished) -> None:
        self.redraw()

    def action_next(self) -> None:
        self.app.push_screen(DomainsScreen())

    def action_back(self) -> None:
        self.app.pop_screen()
