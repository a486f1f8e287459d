"""Start: which bundle, and what it holds. Start goes on to the routes; O edits the organisation."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Footer, Header, Static

from connectwiz.bundle.policies import counts as policy_counts
from connectwiz.errors import UserError
from connectwiz.policy.model import ValidationStatus
from connectwiz.tui.components.dialogs import OrgDialog
from connectwiz.tui.labels import GOOD, MUTED, mode_label, pretty_path
from connectwiz.tui.screens.base import WizardScreen
from connectwiz.tui.screens.routes import RoutesScreen

_SHOWN_ROUTES = 4


class StartScreen(WizardScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter,s", "start", "Start", id="start"),
        Binding("o", "organisation", "Edit organisation", id="organisation"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="start"):
            yield Static("Start · what this bundle holds", classes="step-title")
            yield Static(id="bundle")
            yield Static(id="organisation")
            yield Static(id="routes")
            yield Static(id="domains")
            yield Static(id="policies")
            yield Static(id="hint")
        yield Footer(compact=True)

    def redraw(self) -> None:
        state, model = self.state, self.state.model
        exists = state.path.exists()
        bundle = Text.assemble(("Bundle  ", "bold"), pretty_path(state.path))
        if not exists:
            bundle.append("  (new: nothing is written until Finish)", style=MUTED)
        self.query_one("#bundle", Static).update(bundle)

        org = model.organisation
        self.query_one("#organisation", Static).update(Text.assemble(
            ("Organisation\n", "bold"),
            "  Internal domains:      ", ", ".join(org.internal_domains) or "(none)", "\n",
            "  Allowed to relay out:  ",
            ", ".join(str(n) for n in org.authorized_outbound) or "(none)",
        ))

        routes = Text.assemble(("Inbound routes", "bold"), f" ({len(model.inbound_routes)})")
        for route in model.inbound_routes[:_SHOWN_ROUTES]:
            routes.append(f"\n  {route.host}:{route.port}  ")
            routes.append(mode_label(route.encryption_mode),
                          style=GOOD if route.encryption_mode else MUTED)
        if len(model.inbound_routes) > _SHOWN_ROUTES:
            routes.append(f"\n  … and {len(model.inbound_routes) - _SHOWN_ROUTES} more")
        if not model.inbound_routes:
            routes.append("\n  none yet: add your internal mail servers in the next step",
                          style=MUTED)
        self.query_one("#routes", Static).update(routes)

        counts = Counter(state.domain_status(d) for d in model.external_domains)
        parts = [f"{counts[s]} {label}" for s, label in (
            (ValidationStatus.STRICT, "strict"), (ValidationStatus.RELAXED, "relaxed"),
            (ValidationStatus.UNSUPPORTED, "not supporting TLS"),
            (ValidationStatus.ERROR, "failed validation"), (None, "not validated"),
        ) if counts[s]]
        domains = Text.assemble(("External domains", "bold"),
                                f" ({len(model.external_domains)})")
        domains.append("\n  " + (", ".join(parts) if parts else "none yet"),
                       style="" if parts else MUTED)
        self.query_one("#domains", Static).update(domains)

        n = policy_counts(model)
        self.query_one("#policies", Static).update(Text.assemble(
            ("Policies", "bold"), ("  (edit with: connectwiz policies)", MUTED), "\n",
            f"  {n['delivery']} delivery, {n['receipt']} receipt, {n['secure']} secure, "
            f"{n['bypass']} bypass; definitions: {n['definition']} delivery, "
            f"{n['secure-definition']} secure",
        ))

        hint = self.query_one("#hint", Static)
        hint.update(Text(state.hint, style="italic"))
        hint.display = bool(state.hint)
        super().redraw()

    def action_start(self) -> None:
        self.app.push_screen(RoutesScreen())

    def action_organisation(self) -> None:
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
