"""Where the bundle lives when no --bundle is given."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_bundle_path(arg: str | None) -> Path:
    """``--bundle``, else ``$CONNECTWIZ_BUNDLE``, else ``$XDG_CONFIG_HOME/connectwiz/bundle.toml``
    (``~/.config`` when XDG_CONFIG_HOME is unset or empty)."""
    if arg:
        return Path(arg).expanduser()
    env = os.environ.get("CONNECTWIZ_BUNDLE")
    if env:
        return Path(env).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config).expanduser() / "connectwiz" / "bundle.toml"
