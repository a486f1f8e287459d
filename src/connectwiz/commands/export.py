"""`connectwiz export`: the bundle as TOML (the validated file as is) or JSON (schema v1 shape,
date-times as ISO 8601 strings), on stdout or atomically into a file; or as Postfix tables and
a main.cf snippet, atomically into a folder (README: "When one relay is not enough")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from connectwiz.atomic import write_atomic
from connectwiz.bundle import Bundle, resolve_bundle_path
from connectwiz.bundle.postfix import export_postfix
from connectwiz.errors import UserError


def run(args: argparse.Namespace) -> int:
    if args.format != "postfix" and (args.dane or args.mta_sts):
        raise UserError("--dane and --mta-sts go with --format postfix")
    if args.format == "postfix" and (not args.output or args.output == "-"):
        raise UserError("export --format postfix writes several files: give -o DIR")
    bundle = Bundle.load(resolve_bundle_path(args.bundle))
    if args.format == "postfix":
        return _postfix(bundle, Path(args.output).expanduser(), args.dane, args.mta_sts)
    text = bundle.export_text(args.format)
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


def _postfix(bundle: Bundle, folder: Path, dane: bool, mta_sts: str | None) -> int:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"-o {folder}: not a folder")
    if not folder.parent.is_dir():
        raise UserError(f"-o {folder}: folder {folder.parent} does not exist")
    result = export_postfix(bundle.model, str(bundle.path or "the bundle"), dane=dane,
                            mta_sts=mta_sts)
    try:
        folder.mkdir(exist_ok=True)
        for name, text in result.files.items():
            write_atomic(folder / name, text.encode("utf-8"), 0o644)
    except OSError as exc:
        raise UserError(f"-o {folder}: cannot write: {exc.strerror}") from None
    for warning in result.warnings:
        print(f"connectwiz: warning: {warning}", file=sys.stderr)
    print(f"wrote {', '.join(result.files)} to {folder}", file=sys.stderr)
    return 0
