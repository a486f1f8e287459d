"""Where the bundle lives when no --bundle is given."""

from __future__ import annotations

import os
from pathlib import Path

from connectwiz.bundle.errors import BundleError


def resolve_bundle_path(arg: str | None) -> Path:
    """``--bundle``, else ``$CONNECTWIZ_BUNDLE``, else ``$XDG_CONFIG_HOME/connectwiz/bundle.toml``
    (``~/.config`` when XDG_CONFIG_HOME is unset or empty).

    A path the user gave must be in a folder that exists: a mistyped folder is refused (as
    ``export -o`` does) instead of being created on the first save. The default path's
    folder is created when needed."""
    given = arg or os.environ.get("CONNECTWIZ_BUNDLE")
    if given:
        path = Path(given).expanduser()
        if not path.parent.is_dir():
            raise BundleError(f"folder {path.parent} does not exist", file=str(path))
        return path
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config).expanduser() / "connectwiz" / "bundle.toml"
