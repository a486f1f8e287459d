"""Fixtures for the wizard's tests.

Snapshots: pytest-textual-snapshot's ``snap_compare`` stores SVGs through syrupy; here they
go to the top-level ``snapshots/`` folder (one sub-folder per test file) instead of
``tests/**/__snapshots__``. Pictures are made stable by a fixed clock, no cursor blink, no
animations, a controlled environment and bundle paths shown relative to the working
directory (each test runs in its own temporary directory).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_textual_snapshot import SVGImageExtension
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.amber import AmberSnapshotExtension
from syrupy.location import PyTestLocation

SNAPSHOT_DIR = Path(__file__).resolve().parents[2] / "snapshots"


class TopLevelSVGExtension(SVGImageExtension):
    """The plugin's SVG extension, writing to snapshots/<test file>/<test name>.svg."""

    @classmethod
    def dirname(cls, *, test_location: PyTestLocation) -> str:
        return str(SNAPSHOT_DIR / test_location.basename)


class _TopLevelSnapshots(SnapshotAssertion):
    def use_extension(self, extension_class: Any = None) -> SnapshotAssertion:
        # snap_compare asks for SVGImageExtension; hand it the relocated subclass.
        if extension_class is SVGImageExtension:
            extension_class = TopLevelSVGExtension
        return super().use_extension(extension_class)


@pytest.fixture
def snapshot(request: pytest.FixtureRequest) -> SnapshotAssertion:
    return _TopLevelSnapshots(
        update_snapshots=request.config.option.update_snapshots,
        extension_class=AmberSnapshotExtension,
        test_location=PyTestLocation(request.node),
        session=request.session.config._syrupy,  # type: ignore[attr-defined]
    )


@pytest.fixture(autouse=True)
def wizard_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Same environment for every run: no NO_COLOR or CONNECTWIZ_* leaking in, cwd = tmp."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    for name in ("NAMESERVER", "SMTP_PORT", "CA_FILE", "TIMEOUT", "CONCURRENCY", "BUNDLE"):
        monkeypatch.delenv(f"CONNECTWIZ_{name}", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def bundle_path(wizard_env: Path) -> Iterator[Path]:
    yield wizard_env / "bundle.toml"
