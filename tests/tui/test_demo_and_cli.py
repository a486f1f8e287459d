"""`connectwiz demo` pieces against the real lab, and the wizard command's error path."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connectwiz.bundle import Bundle
from connectwiz.commands.demo import DEMO_HINT, demo_options, seed_demo_bundle
from connectwiz.lab import LabHandle
from connectwiz.policy.model import ValidationStatus
from connectwiz.tui.screens.routes import RoutesScreen
from connectwiz.tui.screens.start import StartScreen
from tests.tui.helpers import validate_routes, wait_for, wizard


@pytest.mark.network
async def test_demo_bundle_shows_every_route_verdict(bundle_path: Path, lab: LabHandle) -> None:
    seed_demo_bundle(bundle_path, lab)
    model = Bundle.load(bundle_path).model
    assert [(r.host, r.port) for r in model.inbound_routes] == list(lab.routes)
    assert model.organisation.internal_domains == ("corp.example",)

    app = wizard(bundle_path, demo_options(lab), hint=DEMO_HINT)
    async with app.run_test(size=(100, 30)) as pilot:
        assert isinstance(app.screen, StartScreen)
        hint = str(app.screen.query_one("#hint").render())
        assert "trusted.example" in hint and "nullmx.example" in hint
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RoutesScreen), what="routes")
        await validate_routes(pilot, app)
        found = {key[0]: ValidationStatus(r.status) for key, r in app.state.route_results.items()}
    assert found == {name: ValidationStatus(route.expected)
                     for name, route in lab.expected_routes.items()}


def test_wizard_command_rejects_a_broken_bundle_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("schema_version = 1\n[organisation\n")
    proc = subprocess.run([sys.executable, "-m", "connectwiz", "wizard", "--bundle", str(broken)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("connectwiz: ")
    assert str(broken) in lines[0]
    assert broken.read_text() == "schema_version = 1\n[organisation\n"


@pytest.mark.network
def test_demo_command_runs_in_a_terminal_and_quits_cleanly() -> None:
    """`connectwiz demo` in a real pseudo-terminal: lab up, wizard drawn, Ctrl+Q, exit 0."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: become the command
        os.environ.update(TERM="xterm-256color", COLUMNS="80", LINES="24")
        os.execv(sys.executable, [sys.executable, "-m", "connectwiz", "demo"])
    screen = b""
    deadline = time.monotonic() + 60
    try:
        while b"Demo:" not in screen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                screen += os.read(fd, 65536)
        assert b"Demo:" in screen, "the Start screen with the demo hint was not drawn"
        os.write(fd, b"\x11")  # Ctrl+Q: nothing changed, so it quits without asking
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if select.select([fd], [], [], 0.5)[0]:
                with contextlib.suppress(OSError):  # the pty closes as the child exits
                    os.read(fd, 65536)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("connectwiz demo did not exit after Ctrl+Q")
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
