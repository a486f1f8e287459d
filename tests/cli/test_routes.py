"""`connectwiz routes list|add|remove`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectwiz.bundle import Bundle
from connectwiz.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = str(tmp_path / "b.toml")
    code, out, err = run(capsys, "routes", "add", "--bundle", b, "MX1.acme.example",
                         "10.0.0.5:2525", "[2001:db8::5]:25")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["added mx1.acme.example:25", "added 10.0.0.5:2525",
                                "added [2001:db8::5]:25"]
    code, out, _ = run(capsys, "routes", "list", "--bundle", b)
    assert out.splitlines()[0].split("\t") == ["mx1.acme.example:25", "-", "not validated"]
    code, out, _ = run(capsys, "routes", "list", "--json", "--bundle", b)
    assert json.loads(out)[1] == {"host": "10.0.0.5", "port": 2525}
    code, out, err = run(capsys, "routes", "add", "--bundle", b, "mx1.acme.example:25")
    assert (code, out) == (0, "") and "already configured" in err
    code, out, _ = run(capsys, "routes", "remove", "--bundle", b, "10.0.0.5:2525")
    assert (code, out) == (0, "removed 10.0.0.5:2525\n")
    assert [(r.host, r.port) for r in Bundle.load(b).model.inbound_routes] == [
        ("mx1.acme.example", 25), ("2001:db8::5", 25)]


@pytest.mark.parametrize(("argv", "words"), [
    (["routes", "remove", "mx9.acme.example"], "not an inbound route"),
    (["routes", "add", "mx1.acme.example:99999"], "bad port"),
    (["routes", "add", "bad host"], "not an IP address or host name"),
    (["routes", "add"], "give at least one HOST[:PORT]"),
])
def test_failures_are_one_line_exit_2_and_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    b = tmp_path / "b.toml"
    run(capsys, "routes", "add", "--bundle", str(b), "mx1.acme.example")
    before = b.read_text(encoding="utf-8")
    code, out, err = run(capsys, *argv, "--bundle", str(b))
    assert (code, out) == (2, "")
    assert words in err and err.count("\n") == 1
    assert b.read_text(encoding="utf-8") == before
