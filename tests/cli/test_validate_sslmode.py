"""`validate --ssl-mode`: does each host negotiate TLS at a delivery SSL Mode (the relay's own
delivery context, against lab servers)?"""

from __future__ import annotations

import json

import pytest

from connectwiz.cli import main

pytestmark = pytest.mark.network

RSAKX = "rsakx-validate.sslmode.example"  # TLS 1.2 with RSA key exchange and CBC only


@pytest.fixture(scope="module")
def rsakx(lab) -> str:
    lab.add_sink([RSAKX], "rsakx")
    return RSAKX


def test_a_host_negotiating_at_the_level_passes(lab_cli_args, rsakx, capsys) -> None:
    assert main(["validate", *lab_cli_args, "--ssl-mode", "strong", rsakx]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"✔ {rsakx}: Supports TLS")
    assert out[1].startswith(f"    ✔ SSL Mode strong: {rsakx} [")
    assert "negotiates TLSv1.2 AES" in out[1]


def test_a_host_below_the_level_fails_and_exits_1(lab_cli_args, rsakx, capsys) -> None:
    assert main(["validate", *lab_cli_args, "--ssl-mode", "very_strong", rsakx]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"✔ {rsakx}: Supports TLS")  # TLS yes, but not at this level
    assert out[1].startswith(f"    ✖ SSL Mode very_strong: {rsakx} [")
    assert "no TLS session at this level" in out[1]


def test_legacy_reaches_a_tls10_server_and_json_says_so(lab_cli_args, capsys) -> None:
    main(["validate", "--json", *lab_cli_args, "--ssl-mode", "legacy", "tls10.example"])
    [data] = json.loads(capsys.readouterr().out)
    level = data["ssl_mode"]
    assert level["level"] == "legacy" and level["ok"] is True
    assert level["hosts"][0]["tls_version"] == "TLSv1"


def test_an_unknown_level_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--ssl-mode", "strongest", "x.example"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'strongest'" in capsys.readouterr().err
