"""Secure Messaging relay tests reuse the relay's fixtures: an in-process relay on an
ephemeral port, the shared lab as next hop (see tests/relay/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.relay.conftest import relays  # noqa: F401 - a fixture, used by name


@pytest.fixture(autouse=True)
def secure_key_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The relay's secure key defaults to $XDG_CONFIG_HOME: keep it in the test's folder."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"
