"""Running validations from a screen without blocking it.

A screen mixes in ProbeRunner, calls ``start_probe`` with targets keyed by what the screen
shows (a route's (host, port), a domain name), and gets one ``TargetValidated`` message per
target as results arrive. Tests feed results through the same message, so the pictures
they take come from the code path a real probe uses.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

from textual import work
from textual.message import Message
from textual.screen import Screen
from textual.widgets import ProgressBar
from textual.worker import Worker, WorkerState

from connectwiz.probe import Target
from connectwiz.probe.results import TargetResult

PROBE_GROUP = "probe"


@dataclass
class TargetValidated(Message):
    """One target's verdict; ``key`` is what the screen listed (route key or domain)."""

    key: Hashable
    result: TargetResult


@dataclass
class ProbeFinished(Message):
    """The run ended (done, failed or cancelled). The screen redraws; the message then
    bubbles to the App, the one place that reports failures and cancellations."""

    state: WorkerState
    error: BaseException | None = None


class ProbeRunner(Screen):
    """A screen that validates targets in a worker, shows progress and can cancel the run."""

    def init_probe(self) -> None:
        self.pending: set[Hashable] = set()
        self.probe_worker: Worker[None] | None = None

    @property
    def probing(self) -> bool:
        running = self.probe_worker is not None and self.probe_worker.is_running
        return running or bool(self.pending)

    def start_probe(self, targets: dict[Hashable, Target],
                    email: str | Mapping[Hashable, str] | None) -> None:
        """Validate ``targets``; ``email`` is one RCPT address for all, or one per key."""
        self.show_pending(targets)
        self.probe_worker = self._run_probe(dict(targets), email)
        self.refresh_bindings()

    def show_pending(self, keys: Iterable[Hashable]) -> None:
        """Mark these rows as being tested and reset the progress bar (if the screen has one)."""
        self.pending = set(keys)
        for bar in self.query(ProgressBar):
            bar.update(total=len(self.pending), progress=0)
            bar.display = True

    def settle(self, key: Hashable) -> None:
        """One result is in: the row is no longer pending and the bar moves on."""
        self.pending.discard(key)
        for bar in self.query(ProgressBar):
            bar.advance(1)

    def cancel_probe(self) -> None:
        if self.probe_worker is not None:
            self.probe_worker.cancel()

    @work(exclusive=True, exit_on_error=False, group=PROBE_GROUP)
    async def _run_probe(self, targets: dict[Hashable, Target],
                         email: str | Mapping[Hashable, str] | None) -> None:
        options = self.app.state.options  # type: ignore[attr-defined]
        label_to_key = {t.label(options.smtp_port): k for k, t in targets.items()}
        emails = email if not isinstance(email, Mapping) else {
            targets[k]: address for k, address in email.items() if k in targets}

        def progress(result: TargetResult) -> None:
            key = label_to_key.get(result.target)
            if key is not None:
                self.post_message(TargetValidated(key, result))

        from connectwiz.probe.batch import validate_targets  # heavy: loaded on first use

        await validate_targets(list(targets.values()), options, email=emails, progress=progress)
        # Then who decides TLS for the domains (bundle, MTA-STS, DANE): the App's worker, so
        # the answer outlives a dialog closed meanwhile.
        recipients: dict[str, str] = {}
        for key, target in targets.items():
            if target.kind == "domain":
                address = emails.get(target) if isinstance(emails, Mapping) else emails
                recipients[str(key)] = address or f"postmaster@{target.name}"
        if recipients:
            self.app.decide(recipients)  # type: ignore[attr-defined]

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # Worker.StateChanged does not bubble; ProbeFinished does, up to the App.
        if event.worker is self.probe_worker and event.state in (
            WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED
        ):
            self.pending.clear()
            for bar in self.query(ProgressBar):
                bar.display = False
            self.post_message(ProbeFinished(event.state, event.worker.error))
