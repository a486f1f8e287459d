"""What a newcomer gets for a wrong command line: a help hint naming the right command,
`list`/`show` when no action is given, a mistyped bundle folder refused, the wizard refusing
to run without a terminal, and a README whose command block matches the parser."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from connectwiz.cli import build_parser, main

README = Path(__file__).resolve().parents[2] / "README.md"


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(("argv", "hint"), [
    (["bogus"], "(see connectwiz --help)"),
    (["validate", "--bogus"], "(see connectwiz validate --help)"),
    (["domains", "list", "--bogus"], "(see connectwiz domains --help)"),
    (["org", "frob"], "(see connectwiz org --help)"),
])
def test_errors_name_the_help_of_the_command_used(
        capsys: pytest.CaptureFixture[str], argv: list[str], hint: str) -> None:
    err = usage_error(capsys, *argv)
    assert err.rstrip().endswith(hint), err
    assert "connectwiz connectwiz" not in err


def test_domains_routes_and_org_without_an_action_list_and_show(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = str(tmp_path / "b.toml")
    assert main(["domains", "add", "--bundle", bundle, "partner.example"]) == 0
    assert main(["routes", "add", "--bundle", bundle, "mail.corp.example"]) == 0
    capsys.readouterr()
    assert main(["domains", "--bundle", bundle]) == 0
    assert "partner.example" in capsys.readouterr().out
    assert main(["routes", "--bundle", bundle]) == 0
    assert "mail.corp.example" in capsys.readouterr().out
    assert main(["org", "--bundle", bundle]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv", [
    ["domains", "add", "partner.example"],
    ["routes", "add", "mail.corp.example"],
    ["org", "set", "--internal-domain", "corp.example"],
])
def test_a_bundle_in_a_missing_folder_is_refused_and_nothing_is_created(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    bundle = tmp_path / "nope" / "dir" / "b.toml"
    assert main([*argv, "--bundle", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err == f"connectwiz: {bundle}: folder {bundle.parent} does not exist\n"
    assert not (tmp_path / "nope").exists()


def test_the_default_bundle_folder_is_still_created(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CONNECTWIZ_BUNDLE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert main(["domains", "add", "partner.example"]) == 0
    assert (tmp_path / "config" / "connectwiz" / "bundle.toml").exists()


@pytest.mark.parametrize("command", ["wizard", "demo"])
def test_the_wizard_without_a_terminal_says_so_and_exits_2(
        tmp_path: Path, command: str) -> None:
    argv = [command, "--bundle", str(tmp_path / "b.toml")]
    proc = subprocess.run([sys.executable, "-m", "connectwiz", *argv],
                          capture_output=True, text=True, timeout=60, input="")
    assert proc.returncode == 2
    assert proc.stdout == "", "no escape codes"
    assert proc.stderr == ("connectwiz: the wizard needs a terminal; use `domains`, `routes`, "
                           "`validate` for scripts\n")
    assert not (tmp_path / "b.toml").exists()


def test_readme_command_block_offers_every_export_format() -> None:
    export = next(a for a in build_parser()._actions if a.dest == "command").choices["export"]
    formats = next(a for a in export._actions if a.dest == "format").choices
    line = next(x for x in README.read_text().splitlines()
                if x.startswith("connectwiz export [--format"))
    shown = re.search(r"--format ([a-z|]+)", line)
    assert shown is not None and shown[1].split("|") == list(formats)
