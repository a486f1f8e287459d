"""Start: which bundle, and what it holds. Start goes on to the routes; O edits the organisation."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from connectwiz.bundle.policies import counts as policy_counts
from connectwiz.errors import UserError
from connectwiz.policy.model import ValidationStatus
from connectwiz.tui.labels import GOOD, MUTED, mode_label, pretty_path
from connectwiz.tui.screens.base import WizardScreen
from connectwiz.tui.widgets import Listing

_SHOWN_ROUTES = 4


class PreparingScreen(Screen[None]):
    """Drawn while the App's state is prepared in a thread (the demo starts its lab)."""

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="start"):
            yield Static("Start · what this bundle holds", classes="step-title")
            yield Static("Starting the lab…", classes="explain")
        yield Footer(compact=True)


class StartScreen(WizardScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter,s", "start", "Start", id="start"),
        Binding("o", "organisation", "Edit organisation", id="organisation"),
        Binding("m", "mail_flow", "Mail flow", id="mail_flow"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="start"):
            yield Static("Start · what this bundle holds", classes="step-title")
            yield Static(id="bundle")
            yield Static(id="organisation")
            yield Listing(id="routes", aligned=True)
            yield Static(id="domains")
            yield Static(id="policies")
            yield Static(id="hint")
        yield Footer(compact=True)

    def redraw(self) -> None:
        state, model = self.state, self.state.model
        exists = state.path.exists()
        bundle = Text.assemble(("Bundle  ", "bold"), pretty_path(state.path))
        if state.scratch:
            # Short enough for the demo's /tmp/connectwiz-XXXXXXXX/bundle.toml at 80 columns.
            bundle.append("  (scratch: deleted on exit)", style=MUTED)
        elif not exists:
            bundle.append("  (new: nothing is written until Finish)", style=MUTED)
        self.query_one("#bundle", Static).update(bundle)

        org = model.organisation
        self.query_one("#organisation", Static).update(Text.assemble(
            ("Organisation\n", "bold"),
            "  Internal domains:      ", ", ".join(org.internal_domains) or "(none)", "\n",
            "  Allowed to relay out:  ",
            ", ".join(str(n) for n in org.authorized_outbound) or "(none)",
        ))

        routes = model.inbound_routes
        tail = Text()
        if len(routes) > _SHOWN_ROUTES:
            tail = Text(f"  … and {len(routes) - _SHOWN_ROUTES} more")
        elif not routes:
            tail = Text("  none yet: add your internal mail servers in the next step",
                        style=MUTED)
        self.query_one("#routes", Listing).show(
            Text.assemble(("Inbound routes", "bold"), f" ({len(routes)})"),
            [(f"{r.host}:{r.port}", Text(mode_label(r.encryption_mode),
                                         style=GOOD if r.encryption_mode else MUTED))
             for r in routes[:_SHOWN_ROUTES]], tail)

        counts = Counter(state.domain_status(d) for d in model.external_domains)
        # Short labels: all five fit one line at 80 columns.
        parts = [f"{counts[s]} {label}" for s, label in (
            (ValidationStatus.STRICT, "strict"), (ValidationStatus.RELAXED, "relaxed"),
            (ValidationStatus.UNSUPPORTED, "no TLS"),
            (ValidationStatus.ERROR, "validation failed"), (None, "not validated"),
        ) if counts[s]]
        domains = Text.assemble(("External domains", "bold"),
                                f" ({len(model.external_domains)})")
        domains.append("\n  " + (", ".join(parts) if parts else "none yet"),
                       style="" if parts else MUTED)
        self.query_one("#domains", Static).update(domains)

        n = policy_counts(model)
        # Two lines that do not wrap at 80 columns: the counts on the heading's line.
        self.query_one("#policies", Static).update(Text.assemble(
            ("Policies", "bold"),
            f"  {n['delivery']} delivery, {n['receipt']} receipt, {n['secure']} secure, "
            f"{n['bypass']} bypass\n",
            f"  definitions: {n['definition']} delivery, {n['secure-definition']} secure",
            ("  (edit with: connectwiz policies)", MUTED),
        ))

        hint = self.query_one("#hint", Static)
        text = state.hint_text()
        hint.update(Text(text, style="italic"))
        hint.display = bool(text)
        super().redraw()

    def action_start(self) -> None:
        # The later steps (and their dialogs) load here, not before the first frame.
        from connectwiz.tui.screens.routes import RoutesScreen

        self.app.push_screen(RoutesScreen())

    def action_mail_flow(self) -> None:
        self.open_mail_flow()

    def action_organisation(self) -> None:
        from connectwiz.tui.components.dialogs import OrgDialog

        org = self.state.model.organisation

        def done(result: tuple[list[str], list[str]] | None) -> None:
            if result is None:
                return
            try:
                self.state.bundle.set_organisation(
                    internal_domains=result[0], authorized_outbound=result[1])
            except UserError as exc:
                self.notify(str(exc), severity="error", timeout=10)
            self.redraw()

        self.app.push_screen(OrgDialog(list(org.internal_domains),
                                       [str(n) for n in org.authorized_outbound]), done)
