"""The wizard App: owns the state, shows one screen per step, reports probe failures."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from connectwiz.bundle import Bundle
from connectwiz.errors import UserError
from connectwiz.policy.model import PolicyModel
from connectwiz.probe.options import NetworkOptions
from connectwiz.tui.screens.start import PreparingScreen, StartScreen
from connectwiz.tui.state import Clock, WizardState, utc_now

if TYPE_CHECKING:
    from connectwiz.tui.probing import ProbeFinished


class WizardApp(App[None]):
    CSS_PATH = "wizard.tcss"
    TITLE = "connectwiz"
    SUB_TITLE = "Set up your TLS policies"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
    ]

    def __init__(self, state: WizardState | Callable[[], WizardState], *,
                 blink: bool = True, spool: Path | None = None) -> None:
        """``state``, or a function that prepares it (in a thread, while the first frame is
        drawn: the demo starts its lab there). A UserError it raises ends the app and is
        kept in ``failure`` for the command to report. ``spool``: the relay's, whose
        message log the Mail flow step reads (default: the per-user one)."""
        super().__init__()
        self.spool = spool
        self.prepare = state if callable(state) else None
        if isinstance(state, WizardState):
            self.state = state
        self.failure: UserError | None = None
        self.blink = blink  # snapshot tests turn the cursor blink off for stable pictures
        self.asking_quit = False

    def on_mount(self) -> None:
        if self.prepare is None:
            self.push_screen(StartScreen())
        else:
            self.push_screen(PreparingScreen())
            self._prepare_state()

    @work(thread=True)  # anything but the errors below is a bug: it ends the app loudly
    def _prepare_state(self) -> None:
        assert self.prepare is not None
        try:
            state = self.prepare()
        except (UserError, OSError) as exc:
            failure = exc if isinstance(exc, UserError) else UserError(
                f"could not start: {exc.strerror or exc}")
            self.call_from_thread(self._failed, failure)
            return
        self.call_from_thread(self._prepared, state)

    def _prepared(self, state: WizardState) -> None:
        self.state = state
        self.switch_screen(StartScreen())

    def _failed(self, failure: UserError) -> None:
        self.failure = failure
        self.exit()

    async def action_quit(self) -> None:
        if not hasattr(self, "state") or not self.state.unsaved():  # or still preparing
            self.exit()
            return

        def done(yes: bool | None) -> None:
            self.asking_quit = False
            if yes:
                self.exit()

        if not self.asking_quit:  # Ctrl+Q works over any dialog, but asks only once
            from connectwiz.tui.components.dialogs import ConfirmDialog

            self.asking_quit = True
            self.push_screen(ConfirmDialog(
                "You have changes that are not saved (Finish saves them). Quit anyway?",
                "Quit", "Stay"), done)

    def on_probe_finished(self, message: ProbeFinished) -> None:
        """The one place a failed or cancelled probe is reported: a message, never a crash."""
        if message.state is WorkerState.ERROR:
            error = message.error
            detail = (str(error) or type(error).__name__) if error else "unknown error"
            self.notify(f"Validation failed: {detail}", severity="error", timeout=10)
        elif message.state is WorkerState.CANCELLED:
            self.notify("Validation cancelled", severity="warning")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # A failed look-up is reported, never a crash; the verdicts shown stay as they are.
        if event.worker.group == "decide" and event.state is WorkerState.ERROR:
            error = event.worker.error
            self.notify(f"Could not tell who decides TLS: {error or type(error).__name__}",
                        severity="warning", timeout=10)

    @work(group="decide", exit_on_error=False)
    async def decide(self, recipients: Mapping[str, str]) -> None:
        """Find who decides TLS for these domains (recipient address by domain), off the
        screen's way; each answer is kept in the state and announced to the screen on top."""
        from connectwiz.tui.deciding import TlsDecided, decide

        async for domain, view in decide(self.state, recipients):
            if self.state.domain(domain) is not None:  # not removed meanwhile
                self.state.decisions[domain] = view
                self.screen.post_message(TlsDecided(domain))

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """The palette lists what the current step can do, alongside Textual's own commands.
        Only the wizard's bindings (they all have an id) are listed: Textual's own ones
        (Copy selected text) and Quit are among its commands already."""
        seen: set[tuple[str, int]] = set()  # a binding with two keys (n, Esc) is one command
        for key, active in screen.active_bindings.items():
            binding = active.binding
            if (binding.id in (None, "quit") or not binding.description
                    or not active.enabled or (binding.action, id(active.node)) in seen):
                continue
            seen.add((binding.action, id(active.node)))
            yield SystemCommand(binding.tooltip or binding.description,
                                f"Key: {binding.key_display or key}",
                                partial(self.run_action, binding.action, active.node))
        yield from super().get_system_commands(screen)


def make_state(bundle_path: Path, options: NetworkOptions, *, clock: Clock | None = None,
               hint: str | Callable[[PolicyModel], str] = "",
               scratch: bool = False) -> WizardState:
    """The wizard's state over ``bundle_path`` (created at Finish if missing). Raises
    BundleError. ``scratch``: the bundle is deleted when the wizard exits (the demo's)."""
    bundle = Bundle.load_or_new(Path(bundle_path))
    return WizardState(bundle, options, clock=clock or utc_now, hint=hint, scratch=scratch)


def make_app(bundle_path: Path, options: NetworkOptions, *, clock: Clock | None = None,
             hint: str | Callable[[PolicyModel], str] = "", scratch: bool = False,
             blink: bool = True, spool: Path | None = None) -> WizardApp:
    """The wizard on ``bundle_path`` (see make_state). Raises BundleError."""
    return WizardApp(make_state(bundle_path, options, clock=clock, hint=hint, scratch=scratch),
                     blink=blink, spool=spool)
