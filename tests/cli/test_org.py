"""`connectwiz org show|set`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectwiz.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_set_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = str(tmp_path / "b.toml")
    code, out, _ = run(capsys, "org", "set", "--bundle", b, "--internal-domain", "Acme.Example",
                       "--internal-domain", "acme-group.example",
                       "--authorized-outbound", "10.0.0.0/8")
    assert code == 0
    assert out.splitlines()[0] == "internal domains:     acme.example, acme-group.example"
    # giving only one list leaves the other as it is
    run(capsys, "org", "set", "--bundle", b, "--authorized-outbound", "192.0.2.0/24",
        "--authorized-outbound", "2001:db8::/32")
    code, out, _ = run(capsys, "org", "show", "--json", "--bundle", b)
    assert json.loads(out) == {"internal_domains": ["acme.example", "acme-group.example"],
                               "authorized_outbound": ["192.0.2.0/24", "2001:db8::/32"],
                               "address_groups": {}}


@pytest.mark.parametrize(("argv", "words"), [
    (["--authorized-outbound", "10.0.0.1/8"], "host bits set; did you mean '10.0.0.0/8'?"),
    (["--authorized-outbound", "10.0.0.0/33"], "not an IPv4 or IPv6 network"),
    (["--internal-domain", "http://acme.example"], "looks like a URL"),
    ([], "give --internal-domain and/or --authorized-outbound"),
])
def test_bad_input_is_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    b = tmp_path / "b.toml"
    code, out, err = run(capsys, "org", "set", "--bundle", str(b), *argv)
    assert (code, out) == (2, "")
    assert words in err and err.count("\n") == 1
    assert not b.exists()


def test_show_missing_bundle_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "org", "show", "--bundle", str(tmp_path / "none.toml"))
    assert code == 2 and "no such file" in err
