"""``connectwiz install-units``: systemd units, the service user and a starting service.toml."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from connectwiz.atomic import write_atomic
from connectwiz.errors import UserError
from connectwiz.units import files


def _executable(given: str | None) -> str:
    if given:
        path = Path(given)
    else:
        found = shutil.which("connectwiz")
        path = Path(found) if found else Path(sys.argv[0])
    path = path.resolve()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise UserError(f"{path}: not an executable connectwiz; give --executable PATH")
    return str(path)


def run(args: argparse.Namespace) -> int:
    prefix = Path(args.prefix).expanduser()
    if not prefix.is_dir():
        raise UserError(f"--prefix {prefix}: no such folder")
    executable = _executable(args.executable)
    for rel, text in files(executable).items():
        target = prefix / rel
        if rel.endswith("service.toml") and target.exists():
            print(f"kept      {target} (exists)")
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, text.encode(), 0o644)
        except OSError as exc:
            raise UserError(f"{target}: {exc.strerror or exc}") from None
        print(f"wrote     {target}")
    if prefix == Path("/"):
        print("\nnext: systemd-sysusers && systemctl daemon-reload\n"
              "      edit /etc/connectwiz/service.toml, then: connectwiz relay --check\n"
              "      systemctl enable --now connectwiz-relay connectwiz-portal")
    return 0
