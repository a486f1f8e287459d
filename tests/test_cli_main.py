"""The command-line dispatcher: exit codes and one-line errors (DESIGN.md "Command line")."""

import argparse
import sys
import types

import pytest

from connectwiz import __version__
from connectwiz.cli import build_parser, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"connectwiz {__version__}"


def test_bad_usage_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explain", "--from", "a@b.example"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--to" in err and "Traceback" not in err


def test_unknown_subcommand_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


@pytest.mark.parametrize(("argv", "bundle"), [([], None), (["--bundle", "x.toml"], "x.toml")])
def test_wizard_is_the_default_subcommand(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], bundle: str | None
) -> None:
    seen: list[argparse.Namespace] = []
    wizard = types.ModuleType("connectwiz.commands.wizard")
    wizard.run = lambda args: seen.append(args) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "connectwiz.commands.wizard", wizard)
    assert main(argv) == 0
    [args] = seen
    assert args.command == "wizard" and args.bundle == bundle


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "--nameserver", "127.0.0.1:5353", "--smtp-port", "2525", "--timeout", "3",
         "--concurrency", "5", "--ca-file", "ca.pem", "trusted.example"],
        ["relay", "--bundle", "b.toml", "--listen", "127.0.0.1:2525", "--nameserver", "127.0.0.1"],
        ["wizard", "--nameserver", "127.0.0.1:53"],
    ],
)
def test_network_options_accepted_where_the_network_is_used(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.nameserver.startswith("127.0.0.1")
