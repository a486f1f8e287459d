"""Wizard responsiveness: command to first frame, and the domain list for big bundles.

    .venv/bin/python benchmarks/tui.py [--sizes 1000,10000] [--first-frame-only]
        [--runs N] [--baseline-src DIR]

* first frame: wall time from starting `connectwiz wizard` and `connectwiz demo` in a
  pseudo-terminal until the first frame is on it, and until the Start screen is (the demo
  draws "Starting the lab…" first);
* domain list: time to open a bundle of N domains, go to the domain step and have the table
  filled and drawn, then the mean time per keypress while scrolling (page down, end, home,
  down), next to the same keys on the one-row route table: the difference is what the
  size of the list costs, the rest is the test driver's own round trip;
* verdicts: the mean time the domain step spends on each validation result as it arrives
  (recorded in the bundle, row redrawn), posted as the probe worker posts them; Validate
  all on N domains pays it N times on the event loop;
* finish: Finish anyway to the summary, which writes the bundle on the event loop.

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pty
import resource
import select
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

from textual.pilot import Pilot

ROOT = Path(__file__).resolve().parents[1]




def write_bundle(path: Path, n: int) -> None:
    """A bundle with one validated route and ``n`` validated external domains."""
    from connectwiz.bundle import Bundle
    from connectwiz.policy.model import EncryptionMode, LastValidation, ValidationStatus

    at = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    bundle = Bundle.load_or_new(path)
    bundle.set_organisation(internal_domains=["example.com"])
    bundle.add_route("mail.example.com", 25)
    bundle.record_route_validation("mail.example.com", 25,
                                   LastValidation(ValidationStatus.STRICT, at, "ok"),
                                   EncryptionMode.STRICT)
    names = [f"partner{i:06d}.example" for i in range(n)]
    bundle.add_domains(names, at=at)
    bundle.save()


FIRST_FRAME = b"Set up your TLS policies"  # the header: in every frame
START_SCREEN = b"Internal domains:"  # the Start screen's organisation block


def first_frame(argv: list[str], runs: int = 5
                ) -> tuple[list[float], list[float], list[float]]:
    """Run `python -m connectwiz ARGV` in a pseudo-terminal (80x24), as a user does: the
    wall time until its first frame is on the terminal and until the Start screen is, then
    Ctrl+Q; and the CPU time of the whole run (steadier than wall time on a loaded
    machine)."""
    times: list[float] = []
    shown: list[float] = []
    cpu: list[float] = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        pid, fd = pty.fork()
        if pid == 0:  # the child: become the command
            os.chdir(ROOT)
            os.environ.update(TERM="xterm-256color", COLUMNS="80", LINES="24")
            os.execv(sys.executable, [sys.executable, "-m", "connectwiz", *argv])
        screen, marks = b"", {}
        try:
            while len(marks) < 2 and time.monotonic() - start < 60:
                if select.select([fd], [], [], 0.5)[0]:
                    screen += os.read(fd, 65536)
                for name, marker in (("frame", FIRST_FRAME), ("start", START_SCREEN)):
                    if name not in marks and marker in screen:
                        marks[name] = time.monotonic() - start
            os.write(fd, b"\x11")  # Ctrl+Q: nothing changed, so it quits without asking
            while not os.waitpid(pid, os.WNOHANG)[0]:
                if select.select([fd], [], [], 0.5)[0]:
                    with contextlib.suppress(OSError):  # the pty closes as the child exits
                        os.read(fd, 65536)
        finally:
            os.close(fd)
        if len(marks) < 2:
            raise SystemExit(f"connectwiz {' '.join(argv)} did not draw its Start screen")
        times.append(marks["frame"])
        shown.append(marks["start"])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return times, shown, cpu


KEYS = ["pagedown"] * 20 + ["end", "home"] + ["down"] * 20


async def per_key(pilot: Pilot[Any]) -> float:
    start = time.perf_counter()
    for key in KEYS:
        await pilot.press(key)
        await pilot.pause()
    return (time.perf_counter() - start) / len(KEYS)


VERDICTS = 20  # results fed per size: enough for a mean, few enough for 10,000 domains


async def domain_list(bundle: Path, n: int) -> tuple[float, float, float, float, float, float]:
    from connectwiz.policy.model import ValidationStatus
    from connectwiz.probe.options import NetworkOptions
    from connectwiz.probe.results import TargetResult
    from connectwiz.tui import make_app
    from connectwiz.tui.probing import TargetValidated
    from connectwiz.tui.screens.domains import DomainsScreen
    from connectwiz.tui.screens.finish import FinishScreen

    start = time.perf_counter()
    app = make_app(bundle, NetworkOptions())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("enter")
        await pilot.pause()
        opened = time.perf_counter() - start
        baseline = await per_key(pilot)  # the same keys on the one-row route table
        shown = time.perf_counter()
        await pilot.press("n")
        while not (isinstance(app.screen, DomainsScreen)
                   and app.screen.query_one("DataTable").row_count == n):
            await pilot.pause(0.001)
        await pilot.pause()
        listed = time.perf_counter() - shown
        scrolling = await per_key(pilot)

        screen = app.screen
        names = [f"partner{i:06d}.example" for i in range(VERDICTS)]
        screen.show_pending(names)  # type: ignore[attr-defined]
        shown = time.perf_counter()
        for name in names:
            result = TargetResult(name, "domain", ValidationStatus.STRICT, "ok", 0, ())
            screen.post_message(TargetValidated(name, result))
        while len(app.state.domain_results) < VERDICTS:  # type: ignore[attr-defined]
            await pilot.pause(0.001)
        verdict = (time.perf_counter() - shown) / VERDICTS

        shown = time.perf_counter()
        await pilot.press("f", "a")  # most domains were never validated: Finish anyway
        while not isinstance(app.screen, FinishScreen):
            await pilot.pause(0.001)
        finish = time.perf_counter() - shown
    return opened, listed, scrolling, baseline, verdict, finish


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--first-frame-only", action="store_true",
                        help="only the command-to-first-frame figures")
    parser.add_argument("--runs", type=int, default=5, help="first-frame runs per command")
    parser.add_argument("--baseline-src", metavar="DIR", type=Path,
                        help="also time the commands of this src/ tree (e.g. an older commit "
                             "from `git archive`), alternating run by run with this one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.toml"
        write_bundle(small, 5)
        trees = {"": ROOT / "src"}
        if args.baseline_src:
            trees = {"baseline ": args.baseline_src.resolve(), "this tree ": ROOT / "src"}
        commands = {"wizard (5 domains)": ["wizard", "--bundle", str(small)], "demo": ["demo"]}
        figures: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for _ in range(args.runs):  # alternating, so both see the same machine load
            for tree, src in trees.items():
                os.environ["PYTHONPATH"] = str(src)
                for label, argv in commands.items():
                    run = first_frame(argv, runs=1)
                    figures.setdefault((tree, label), []).append(tuple(x[0] for x in run))
        for (tree, label), rows in figures.items():
            frames, shown, cpu = zip(*rows, strict=True)
            print(f"{tree}{label}: first frame median {median(frames) * 1000:.0f} ms "
                  f"(best {min(frames) * 1000:.0f}); Start screen drawn median "
                  f"{median(shown) * 1000:.0f} ms (best {min(shown) * 1000:.0f}); CPU per run "
                  f"median {median(cpu) * 1000:.0f} ms; {len(rows)} runs")
        if args.first_frame_only:
            return
        for n in (int(s) for s in args.sizes.split(",")):
            path = Path(tmp) / f"b{n}.toml"
            write_bundle(path, n)
            opened, listed, scrolling, baseline, verdict, finish = asyncio.run(
                domain_list(path, n))
            print(f"{n:>6} domains: open + Start screen {opened * 1000:.0f} ms, "
                  f"domain list filled and drawn {listed * 1000:.0f} ms, "
                  f"scrolling {scrolling * 1000:.0f} ms per key "
                  f"({baseline * 1000:.0f} ms per key on a one-row table), "
                  f"{verdict * 1000:.0f} ms per validation result "
                  f"({verdict * n:.0f} s for Validate all), "
                  f"Finish anyway to summary {finish * 1000:.0f} ms")


if __name__ == "__main__":
    main()
