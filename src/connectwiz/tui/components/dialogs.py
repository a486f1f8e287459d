"""Small modal dialogs: confirm, e-mail prompt, route edit, organisation, export path."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path
from typing import ClassVar, TypeVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Label, Static

from connectwiz.errors import UserError
from connectwiz.policy.domains import InvalidDomain, normalize_domain
from connectwiz.probe import Target
from connectwiz.probe.options import parse_host_port
from connectwiz.tui.editors import Input
from connectwiz.tui.state import email_problem
from connectwiz.tui.widgets import no_blink

R = TypeVar("R")


class Dialog(ModalScreen[R]):
    """A centred box; Escape cancels (dismisses with None)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="cancel"),
        # A modal screen hides the App's bindings: Quit is bound again for every dialog.
        Binding("ctrl+q", "app.quit", "Quit", id="quit", priority=True),
    ]

    def compose(self) -> ComposeResult:
        yield from self.body()
        yield Footer(compact=True)  # the dialog's keys, like every step's

    def body(self) -> ComposeResult:
        raise NotImplementedError

    def on_mount(self) -> None:
        no_blink(self)

    @on(Input.Changed)
    def _edited(self) -> None:
        self.error("")  # an error about the old text is not about the new one

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()  # the Cancel button does what Escape does

    def error(self, message: str) -> None:
        for widget in self.query(".error").results(Static):
            widget.update(message)


class ConfirmDialog(Dialog[bool]):
    """A yes/no question (frogmouth-style): Y confirms, N or Escape declines."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", id="yes"),
        Binding("n,escape", "answer(False)", "No", id="no"),
    ]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no
        # The footer names the answers as the buttons do (y Remove, esc Keep). This edits
        # the instance's own BindingsMap (a Textual 8.2.8 internal; tests/tui/test_keys.py
        # checks the footer).
        labels = {"yes": yes, "no": no}
        bindings = self._bindings.key_to_bindings
        for key, found in bindings.items():
            bindings[key] = [replace(b, description=labels.get(b.id or "", b.description))
                             for b in found]

    def body(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button(self.yes, id="yes", variant="error")
                yield Button(self.no, id="no")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class EmailDialog(Dialog[str | None]):
    """Asks the address to test with; checked here, before any probe starts."""

    def __init__(self, title: str, explain: str, default: str = "", ok: str = "Test",
                 domains: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.title_text, self.explain, self.default, self.ok = title, explain, default, ok
        self.domains = domains  # when given, the address must be at one of them

    def body(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="title")
            yield Static(self.explain, classes="explain")
            yield Input(self.default, placeholder="name@example.com", id="email")
            yield Static("", classes="error")
            with Horizontal(classes="buttons"):
                yield Button(self.ok, id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _submit(self) -> None:
        text = self.query_one("#email", Input).value.strip()
        problem = email_problem(text, self.domains)
        if problem:
            self.error(problem)
        else:
            self.dismiss(text)


class RouteDialog(Dialog[tuple[str, int] | None]):
    """Add or edit an inbound route: HOST or HOST:PORT."""

    def __init__(self, title: str, current: str = "", default_port: int = 25) -> None:
        super().__init__()
        self.title_text, self.current, self.default_port = title, current, default_port

    def body(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="title")
            yield Static(f"Internal mail server as HOST or HOST:PORT (port {self.default_port} "
                         "when none is given).", classes="explain")
            yield Input(self.current, placeholder="mail.example.com:25", id="route")
            yield Static("", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Save", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _submit(self) -> None:
        try:
            host, port = parse_host_port(self.query_one("#route", Input).value, self.default_port)
            target = Target.route(host, port)
        except UserError as exc:
            self.error(str(exc))
            return
        self.dismiss((target.name, port))


class OrgDialog(Dialog[tuple[list[str], list[str]] | None]):
    """Internal domains and the networks allowed to relay out, comma separated."""

    def __init__(self, domains: list[str], networks: list[str]) -> None:
        super().__init__()
        self.domains, self.networks = domains, networks

    def body(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Organisation", classes="title")
            yield Static("Internal domains (comma separated)", classes="explain")
            yield Input(", ".join(self.domains), placeholder="example.com", id="domains")
            yield Static("Networks allowed to relay out (CIDR, comma separated)",
                         classes="explain")
            yield Input(", ".join(self.networks), placeholder="10.0.0.0/8", id="networks")
            yield Static("", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Save", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _submit(self) -> None:
        def items(widget_id: str) -> list[str]:
            text = self.query_one(widget_id, Input).value
            return [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]

        try:
            domains = [normalize_domain(d) for d in items("#domains")]
        except InvalidDomain as exc:
            self.error(f"internal domain {exc.text!r} {exc.reason}")
            return
        try:
            networks = [str(ipaddress.ip_network(n, strict=False)) for n in items("#networks")]
        except ValueError as exc:
            self.error(f"network: {exc}")
            return
        self.dismiss((domains, networks))


class ExportDialog(Dialog[tuple[Path, str] | None]):
    """Where to write the bundle; a .json name writes the JSON form, anything else TOML."""

    def __init__(self, default: Path) -> None:
        super().__init__()
        self.default = default

    def body(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Export the bundle", classes="title")
            yield Static("File to write (a name ending in .json writes JSON, else TOML).",
                         classes="explain")
            yield Input(str(self.default), id="path")
            yield Static("", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Export", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _submit(self) -> None:
        text = self.query_one("#path", Input).value.strip()
        if not text:
            self.error("enter a file name")
            return
        path = Path(text).expanduser()
        if path.is_dir():
            self.error(f"{path} is a directory; add a file name")
            return
        if not path.parent.is_dir():
            self.error(f"folder {path.parent} does not exist")
            return
        self.dismiss((path, "json" if path.suffix.lower() == ".json" else "toml"))
