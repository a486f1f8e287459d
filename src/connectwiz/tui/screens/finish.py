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
from connectwiz.tui.widgets import Listing, key_of


class FinishScreen(WizardScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("e,escape", "edit", "Edit", id="edit"),
        Binding("x", "export", "Export", id="export"),
        # Not in the footer: the App's Ctrl+Q Quit is shown on every screen.
        Binding("q", "app.quit", "Quit", id="quit", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Step 3 of 3 · Summary", classes="step-title")
        with VerticalScroll(id="summary"):
            # First: where it went (and, for the demo, that it will be gone) stays in view
            # when a long summary scrolls at 80x24.
            yield Static(id="saved")
            yield Static(id="policies")
            yield Listing(id="warnings")
            yield Listing(id="published")
            yield Listing(id="routes", aligned=True)
            yield Listing(id="changes")
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
        routes = model.inbound_routes
        self.query_one("#routes", Listing).show(
            Text("Inbound routes", style="bold"),
            [(f"{r.host}:{r.port}", Text(mode_label(r.encryption_mode),
                                         style=GOOD if r.encryption_mode else BAD))
             for r in routes],
            None if routes else Text("  none", style=MUTED))

        changes = state.changes()
        self.query_one("#changes", Listing).show(
            Text("Changes since the bundle was opened", style="bold"),
            [(f"{label} ({len(items)}):", shown_names(items)) for label, items in (
                ("Domains added", changes.domains_added),
                ("Domains removed", changes.domains_removed),
                ("Routes added", tuple(f"{h}:{p}" for h, p in changes.routes_added)),
                ("Routes removed", tuple(f"{h}:{p}" for h, p in changes.routes_removed)),
                ("Encryption mode changed", changes.modes_changed),
            ) if items],
            Text("  none", style=MUTED) if changes.empty else None)
        saved = Text.assemble(("Saved to ", "bold"), pretty_path(state.path))
        if state.scratch:
            saved.append(f"\n  a scratch copy, deleted when the demo ends: export it "
                         f"({key_of(self, 'export')}) to keep it", style="yellow")
        self.query_one("#saved", Static).update(saved)
        super().redraw()

    def _warnings(self) -> None:
        """What was saved although mail to it would be deferred, then bounced."""
        risks = self.state.risks()
        warnings = self.query_one("#warnings", Listing)
        warnings.show(
            Text("Warnings: mail to these may be deferred, then bounced", style="bold yellow"),
            [(f"{label} ({len(items)}):", shown_names(items)) for label, items in (
                ("Not supporting TLS", risks.unsupported),
                ("Accepting no mail (null MX): remove them", risks.no_mail),
                ("Could not be validated", risks.failed),
                ("Never validated", risks.not_validated),
                ("Strict, but only Relaxed passes", risks.too_strict),
            ) if items])
        warnings.display = not risks.empty
        # Where the bundle wins over a partner's MTA-STS enforce (tui.deciding, as explain).
        weakened = [("⚠", w) for v in self.state.decisions.values() for w in v.warnings()]
        published = self.query_one("#published", Listing)
        published.show(Text("Published MTA-STS enforce, overridden by the bundle",
                            style="bold yellow"), weakened)
        published.display = bool(weakened)

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

        # A scratch bundle's folder is deleted on exit: propose the working directory.
        where = Path.cwd() / "bundle.json" if self.state.scratch else self.state.path
        default = Path(pretty_path(where.with_suffix(".json")))
        self.app.push_screen(ExportDialog(default), done)
