"""`connectwiz export`: the bundle as TOML (the validated file as is) or JSON (schema v1 shape,
date-times as ISO 8601 strings), on stdout or atomically into a file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from connectwiz.bundle import Bundle, resolve_bundle_path
from connectwiz.bundle.store import write_atomic
from connectwiz.errors import UserError


def run(args: argparse.Namespace) -> int:
    if args.format == "postfix":
        raise UserError("export --format postfix is not yet supported (use toml or json)")
    bundle = Bundle.load(resolve_bundle_path(args.bundle))
    if args.format == "json":
        text = json.dumps(bundle.to_json(), indent=2, ensure_ascii=False) + "\n"
    else:
        text = bundle.to_toml()
    if not args.output or args.output == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.output).expanduser()
    if out.is_dir():
        raise UserError(f"-o {out}: is a directory")
    if not out.parent.is_dir():
        raise UserError(f"-o {out}: folder {out.parent} does not exist")
    try:
        write_atomic(out, text.encode("utf-8"), 0o644)
    except OSError as exc:
        raise UserError(f"-o {out}: cannot write: {exc.strerror}") from None
    return 0
