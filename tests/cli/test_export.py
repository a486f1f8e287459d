"""`connectwiz export --format toml|json|postfix [-o FILE]`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectwiz.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "b.toml"
    assert main(["domains", "add", "--bundle", str(path), "partner.example"]) == 0
    capsys.readouterr()
    return path


def test_toml_is_the_file_as_is(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "export", "--bundle", str(bundle), "--format", "toml")
    assert code == 0 and out == bundle.read_text(encoding="utf-8")


def test_json_to_a_file(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "out.json"
    code, out, _ = run(capsys, "export", "--bundle", str(bundle), "--format", "json",
                       "-o", str(out_file))
    assert (code, out) == (0, "")
    data = json.loads(out_file.read_text(encoding="utf-8"))
    assert data["schema_version"] == 1
    assert data["external_domains"][0]["domain"] == "partner.example"
    assert data["external_domains"][0]["added"].endswith("Z")
    assert data["delivery_policies"][0]["to"]["specifically"] == ["partner.example"]


@pytest.mark.parametrize(("argv", "words"), [
    (["--format", "postfix"], "give -o DIR"),
    (["--format", "json", "-o", "/nonexistent-dir/x.json"], "does not exist"),
])
def test_failures(bundle: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                  words: str) -> None:
    code, out, err = run(capsys, "export", "--bundle", str(bundle), *argv)
    assert (code, out) == (2, "")
    assert words in err and err.count("\n") == 1


def test_missing_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "export", "--bundle", str(tmp_path / "none.toml"))
    assert code == 2 and "no such file" in err
