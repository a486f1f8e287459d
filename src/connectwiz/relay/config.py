"""The service configuration file: relay and portal options in TOML, beside the bundle.

``service.toml`` in the bundle's folder (or ``--config FILE``) holds a ``[relay]`` and a
``[portal]`` table whose keys are the commands' long options with ``_`` for ``-``::

    [relay]
    listen = "0.0.0.0:25"
    spool = "/var/lib/connectwiz/spool"
    max_size = 20480000

The keys and their types come from the command-line parser itself, so every option is a
key and a new option needs no change here. Values become the parser's defaults before the
command line is parsed again, so an option given on the command line overrides the file.
Errors name the file, the line, the key and, for a misspelt key, the closest one.
``connectwiz queue`` reads the ``[relay]`` table for the spool and host name it shares
(each command names its table in cli.py: ``config_section``).
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomli

from connectwiz.bundle.errors import BundleError
from connectwiz.bundle.locate import Locator
from connectwiz.bundle.paths import resolve_bundle_path
from connectwiz.errors import UserError
from connectwiz.probe.options import parse_host_port

CONFIG_NAME = "service.toml"
SECTIONS = ("relay", "portal")  # each checked against the command of that name
# Options that make no sense in the file: where the file is, and one-shot actions.
_NOT_KEYS = frozenset({"bundle", "config", "check", "help"})
_ADDRESS_KEYS = {"listen": 0, "relay": 2525, "metrics": 9100}
_FILE_KEYS = ("tls_cert", "tls_key", "ca_file")
_TOMLLIB_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


class ConfigError(BundleError):
    """Same one-line shape as the bundle's errors: ``FILE:LINE: KEY: PROBLEM``."""


def config_path(explicit: str | None, bundle: str | None) -> tuple[Path, bool]:
    """The file to read and whether it must exist (given with ``--config``)."""
    if explicit:
        return Path(explicit).expanduser(), True
    return resolve_bundle_path(bundle).parent / CONFIG_NAME, False


def _key_kinds(parser: argparse.ArgumentParser) -> dict[str, type]:
    kinds: dict[str, type] = {}
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        if not action.option_strings or action.dest in _NOT_KEYS:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            kinds[action.dest] = bool
        elif isinstance(action, argparse._StoreAction):
            kinds[action.dest] = action.type if action.type in (int, float) else str  # type: ignore[assignment]
    return kinds


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_value(key: str, kind: type, value: Any) -> Any:
    """The value as the option would hold it, or ValueError saying what is wrong."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if kind in (int, float):
        ok = isinstance(value, int) or (kind is float and isinstance(value, float))
        if isinstance(value, bool) or not ok:
            raise ValueError("expected an integer" if kind is int else "expected a number")
        if value <= 0:
            raise ValueError("must be positive")
        return kind(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    if key in _ADDRESS_KEYS and not value.endswith(":0"):
        try:
            parse_host_port(value, _ADDRESS_KEYS[key])
        except UserError as exc:
            raise ValueError(str(exc)) from None
    if key in _FILE_KEYS and not Path(value).expanduser().is_file():
        raise ValueError(f"no such file: {value}")
    return value


def load_config(path: Path, parsers: dict[str, argparse.ArgumentParser]
                ) -> dict[str, dict[str, Any]]:
    """``{section: {dest: value}}`` checked against each section's parser."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=source) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=source) from None
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        m = _TOMLLIB_POS.search(str(exc))
        problem = str(exc)[: m.start()] if m else str(exc)
        raise ConfigError(f"not valid TOML: {problem}", file=source,
                          line=int(m[1]) if m else None) from None
    where = Locator(text)
    out: dict[str, dict[str, Any]] = {}
    for section, table in data.items():
        if section not in parsers:
            raise ConfigError(f"unknown table{_suggest(section, list(parsers))}; "
                              f"expected {' or '.join(f'[{s}]' for s in parsers)}",
                              file=source, line=where.line_of([section]), key=section)
        if not isinstance(table, dict):
            raise ConfigError("expected a table", file=source, line=where.line_of([section]),
                              key=section)
        kinds = _key_kinds(parsers[section])
        values: dict[str, Any] = {}
        for key, value in table.items():
            line = where.line_of([section, key])
            dotted = f"{section}.{key}"
            dest = key.replace("-", "_")
            if dest not in kinds:
                raise ConfigError(f"unknown option{_suggest(dest, list(kinds))}",
                                  file=source, line=line, key=dotted)
            try:
                values[dest] = _check_value(dest, kinds[dest], value)
            except ValueError as exc:
                raise ConfigError(str(exc), file=source, line=line, key=dotted) from None
        out[section] = values
    return out


def apply_config(parser: argparse.ArgumentParser, commands: dict[str, argparse.ArgumentParser],
                 argv: list[str], args: argparse.Namespace) -> argparse.Namespace:
    """Parse ``argv`` again with the config file's values as defaults, so the command line
    wins (for the commands whose parser sets ``config_section``)."""
    section = args.config_section  # set by the parser (cli.py); queue reads [relay]
    path, required = config_path(getattr(args, "config", None), getattr(args, "bundle", None))
    if not path.is_file():
        if required:
            raise ConfigError("no such file", file=str(path))
        return args
    config = load_config(path, {s: commands[s] for s in SECTIONS})
    command = commands[args.command]
    known = _key_kinds(command)
    command.set_defaults(**{k: v for k, v in config.get(section, {}).items() if k in known})
    args = parser.parse_args(argv)
    args.config_file = str(path)
    return args
