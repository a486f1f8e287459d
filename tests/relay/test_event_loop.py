"""Which event loop ``connectwiz relay`` runs on."""

from __future__ import annotations

import sys

import pytest

from connectwiz.commands.relay import event_loop_factory


def test_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop has no wheel for this platform")
    assert event_loop_factory() is uvloop.new_event_loop


def test_asyncio_is_the_fallback_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError
    assert event_loop_factory() is None  # asyncio.Runner then makes asyncio's own loop
