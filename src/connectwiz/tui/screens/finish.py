"""Step 3: the summary, shown once the bundle is written. Edit goes back; Export writes a copy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Footer, Header, Static

from connectwiz.tui.components.dialogs import ExportDialog
from connectwiz.tui.labels import BAD, GOOD, MUTED, mode_label, pretty_path, shown_names
from connectwiz.tui.screens.base import WizardScreen


class FinishScreen(WizardScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("e", "edit", "Edit", id="edit"),
        Binding("x", "export", "Export", id="export"),
        # Not in the footer: the App's Ctrl+Q Quit is shown on every screen.
        Binding("q", "app.quit", "Quit", id="quit", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Step 3 of 3 · Summary", classes="step-title")
        with VerticalScroll(id="summary"):
            yield Static(id="policies")
            yield Static(id="warnings")
            yield Static(id="routes")
            yield Static(id="changes")
            yield Static(id="saved")
        yield Footer(compact=True)

    def redraw(self) -> None:
        state, model = self.state, self.state.model
        count = len(model.external_domains)
        self.query_one("#policies", Static).update(Text.assemble(
            ("External Domain TLS Policies\n", "bold"),
            (f"  {count} domain{'s' if count != 1 else ''}", GOOD if count else MUTED),
            " with Enforced TLS for delivery and receipt",
        ))

        self._warnings()
        routes = Text("Inbound routes\n", style="bold")
        for route in model.inbound_routes:
            routes.append(f"  {route.host}:{route.port}  ")
            routes.append(mode_label(route.encryption_mode),
                          style=GOOD if route.encryption_mode else BAD)
            routes.append("\n")
        if not model.inbound_routes:
            routes.append("  none\n", style=MUTED)
        self.query_one("#routes", Static).update(routes)

        changes = state.changes()
        text = Text("Changes since the bundle was opened\n", style="bold")
        if changes.empty:
            text.append("  none\n", style=MUTED)
        for label, items in (
            ("Domains added", changes.domains_added),
            ("Domains removed", changes.domains_removed),
            ("Routes added", tuple(f"{h}:{p}" for h, p in changes.routes_added)),
            ("Routes removed", tuple(f"{h}:{p}" for h, p in changes.routes_removed)),
            ("Encryption mode changed", changes.modes_changed),
        ):
            if items:
                text.append(f"  {label} ({len(items)}): {shown_names(items)}\n")
        self.query_one("#changes", Static).update(text)
        self.query_one("#saved", Static).update(
            Text.assemble(("Saved to ", "bold"), pretty_path(state.path)))
        super().redraw()

    def _warnings(self) -> None:
        """What was saved although mail to it would be deferred, then bounced."""
        risks = self.state.risks()
        text = Text("Warnings: mail to these may be deferred, then bounced\n", style="bold yellow")
        for label, items in (
            ("Not supporting TLS", risks.unsupported),
            ("Could not be validated", risks.failed),
            ("Never validated", risks.not_validated),
            ("Strict, but only Relaxed passes", risks.too_strict),
        ):
            if items:
                text.append(f"  {label} ({len(items)}): {shown_names(items)}\n")
        warnings = self.query_one("#warnings", Static)
        warnings.update(text)
        warnings.display = not risks.empty

    def action_edit(self) -> None:
        self.app.pop_screen()

    @work(exclusive=True, group="export", exit_on_error=False)
    async def _export(self, path: Path, fmt: str) -> None:
        try:  # a big bundle takes a moment to serialise and fsync: off the loop
            await asyncio.to_thread(self.state.export, path, fmt)
        except OSError as exc:
            self.notify(f"Could not write {path}: {exc.strerror or exc}", severity="error")
            return
        self.notify(f"Exported the bundle as {fmt.upper()} to {path}")

    def action_export(self) -> None:
        def done(choice: tuple[Path, str] | None) -> None:
            if choice is not None:
                self._export(*choice)

        default = Path(pretty_path(self.state.path.with_suffix(".json")))
        self.app.push_screen(ExportDialog(default), done)
