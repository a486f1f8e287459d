"""Wizard responsiveness: command to first frame, and the domain list for big bundles.

    .venv/bin/python benchmarks/tui.py [--sizes 1000,10000] [--first-frame-only]

* first frame: wall time from starting `connectwiz wizard` and `connectwiz demo` (a fresh
  interpreter running the real command, the App headless) until the Start screen has been
  drawn; the demo includes starting the lab;
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
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import importlib.abc, importlib.util, sys, time

async def first_frame(pilot):
    await pilot.pause()
    print(time.time(), flush=True)
    pilot.app.exit()

class Headless(importlib.abc.MetaPathFinder):
    # The real command runs; only the App runs headless, and the terminal check is off.
    def find_spec(self, name, path, target=None):
        if name not in ("connectwiz.tui.app", "connectwiz.commands.wizard"):
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        sys.meta_path.insert(0, self)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            if name == "connectwiz.commands.wizard":
                module.require_terminal = lambda: None
            else:
                run = module.WizardApp.run
                module.WizardApp.run = lambda app: run(app, headless=True, size=(80, 24),
                                                       auto_pilot=first_frame)

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Headless())
from connectwiz.cli import main
main(sys.argv[1:])
"""



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


def first_frame(argv: list[str], runs: int = 5) -> tuple[list[float], list[float]]:
    """Wall time from starting `python -m connectwiz ARGV` to its first frame, and the CPU
    time the whole run took (steadier than wall time on a loaded machine)."""
    times, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        proc = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True,
                              text=True, cwd=ROOT, check=True)
        times.append(float(proc.stdout.strip().splitlines()[-1]) - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return times, cpu


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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.toml"
        write_bundle(small, 5)
        for label, argv in (("wizard (5 domains)", ["wizard", "--bundle", str(small)]),
                            ("demo", ["demo"])):
            frames, cpu = first_frame(argv)
            print(f"command to first frame, {label}: best {min(frames) * 1000:.0f} ms, "
                  f"median {sorted(frames)[len(frames) // 2] * 1000:.0f} ms over "
                  f"{len(frames)} runs; CPU for the run (to exit) best "
                  f"{min(cpu) * 1000:.0f} ms")
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
