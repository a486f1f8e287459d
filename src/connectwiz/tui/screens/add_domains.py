"""Add External Domains: paste one per line (up to 50), Continue to review, Add to confirm."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Footer, Header, Static

from connectwiz.policy.domains import (
    MAX_BATCH,
    BatchLine,
    Rejection,
    display_domain,
    parse_domain_batch,
)
from connectwiz.tui.editors import TextArea
from connectwiz.tui.labels import BAD, GOOD
from connectwiz.tui.screens.base import WizardScreen
from connectwiz.tui.widgets import key_of


class AddDomainsScreen(WizardScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "continue", "Continue", id="continue"),
        Binding("a", "add", "Add", id="add"),
        # When Add is dimmed, `a` reaches this one instead: it says why nothing was added.
        Binding("a", "add_blocked", id="add_blocked", show=False),
        Binding("d,delete", "remove", "Remove line", id="remove"),
        Binding("e", "edit", "Edit text", id="edit"),
        Binding("escape", "cancel", "Cancel", id="cancel"),
    ]

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.initial = text
        self.reviewing = False
        self.lines: list[BatchLine] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Add External Domains", classes="step-title")
        with Vertical(id="edit-pane"):
            yield Static(f"One domain per line, up to {MAX_BATCH} at a time. "
                         f"{key_of(self, 'continue')} continues.", classes="explain")
            yield TextArea(self.initial, id="batch", show_line_numbers=True)
            with Horizontal(classes="buttons"):
                yield Button("Continue", id="continue", variant="primary")
                yield Button("Cancel", id="cancel")
        with Vertical(id="review-pane"):
            yield Static(id="summary", classes="explain")
            yield DataTable(id="review", cursor_type="row")
            with Horizontal(classes="buttons"):
                yield Button("Add", id="add", variant="success")
                yield Button("Edit text", id="edit")
                yield Button("Cancel", id="cancel-review")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#review", DataTable)
        table.add_column("Line", key="line")
        table.add_column("Entered", key="text")
        table.add_column("Result", key="result")

    def redraw(self) -> None:
        self.query_one("#edit-pane").display = not self.reviewing
        self.query_one("#review-pane").display = self.reviewing
        if self.reviewing:
            self._fill_review()
        super().redraw()

    @property
    def text_area(self) -> TextArea:
        return self.query_one("#batch", TextArea)

    def _parse(self) -> None:
        model = self.state.model
        existing = {d.domain for d in model.external_domains}
        internal = set(model.organisation.internal_domains)
        self.lines = [
            replace(line, domain=None, rejection=Rejection.INVALID,
                    reason="is one of your internal domains")
            if line.domain in internal else line
            for line in parse_domain_batch(self.text_area.text, existing)
        ]

    def _fill_review(self) -> None:
        table = self.query_one("#review", DataTable)
        cursor = table.cursor_row
        table.clear()
        for line in self.lines:
            if line.accepted:
                assert line.domain is not None
                result = Text(f"✔ will add {display_domain(line.domain)}", style=GOOD)
            else:
                result = Text(f"✖ {line.rejection}: {line.reason}", style=BAD)
            table.add_row(str(line.line_no), line.text.strip(), result, key=str(line.line_no))
        if self.lines:
            table.move_cursor(row=min(cursor, len(self.lines) - 1))
        accepted = sum(1 for line in self.lines if line.accepted)
        rejected = len(self.lines) - accepted
        summary = Text(f"{accepted} domain(s) to add")
        if rejected:
            summary.append(f", {rejected} line(s) with errors: remove them "
                           f"({key_of(self, 'remove')}) or edit the text "
                           f"({key_of(self, 'edit')}) before adding.", style="yellow")
        elif not accepted:
            summary.append(f": nothing to add. Edit the text ({key_of(self, 'edit')}).",
                           style="yellow")
        self.query_one("#summary", Static).update(summary)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "continue":
            return not self.reviewing
        if action in ("remove", "edit"):
            return self.reviewing
        if action == "add":
            if not self.reviewing:
                return False
            return True if self._ready() else None
        if action == "add_blocked":
            return self.reviewing and not self._ready()
        return True

    def _ready(self) -> bool:
        return bool(self.lines) and all(line.accepted for line in self.lines)

    def action_add_blocked(self) -> None:
        rejected = sum(1 for line in self.lines if not line.accepted)
        why = (f"{rejected} line(s) have errors: remove them ({key_of(self, 'remove')}) "
               f"or edit the text ({key_of(self, 'edit')}) first." if rejected else
               f"Nothing to add: edit the text ({key_of(self, 'edit')}).")
        self.notify(why, severity="warning")

    @on(Button.Pressed, "#continue")
    def action_continue(self) -> None:
        self._parse()
        if not self.lines:
            self.notify("Enter at least one domain, one per line.", severity="warning")
            return
        self.reviewing = True
        self.redraw()
        self.query_one("#review", DataTable).focus()

    @on(Button.Pressed, "#edit")
    def action_edit(self) -> None:
        self.reviewing = False
        self.redraw()
        self.text_area.focus()

    def action_remove(self) -> None:
        """Drop the highlighted line from the text and check the batch again."""
        row = self.query_one("#review", DataTable).cursor_row
        if not 0 <= row < len(self.lines):
            return
        raw = self.text_area.text.splitlines()
        del raw[self.lines[row].line_no - 1]
        self.text_area.load_text("\n".join(raw))
        self._parse()
        self.redraw()

    @on(Button.Pressed, "#add")
    def action_add(self) -> None:
        if self.check_action("add", ()) is not True:  # the Add button, pressed anyway
            self.action_add_blocked()
            return
        domains = [line.domain for line in self.lines if line.domain is not None]
        self.state.add_domains(domains)
        self.app.pop_screen()
        self.notify(f"Added {len(domains)} domain(s); Validate checks their TLS (saved at "
                    "Finish).")

    @on(Button.Pressed, "#cancel, #cancel-review")
    def action_cancel(self) -> None:
        self.app.pop_screen()
