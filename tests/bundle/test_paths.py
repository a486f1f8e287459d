"""Where the bundle lives: --bundle, else $CONNECTWIZ_BUNDLE, else the XDG config path."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectwiz.bundle import resolve_bundle_path


def test_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONNECTWIZ_BUNDLE", str(tmp_path / "env.toml"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert resolve_bundle_path(str(tmp_path / "arg.toml")) == tmp_path / "arg.toml"
    assert resolve_bundle_path(None) == tmp_path / "env.toml"
    monkeypatch.delenv("CONNECTWIZ_BUNDLE")
    assert resolve_bundle_path(None) == tmp_path / "xdg" / "connectwiz" / "bundle.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_bundle_path(None) == tmp_path / "home" / ".config" / "connectwiz" / "bundle.toml"
