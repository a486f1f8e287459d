"""`connectwiz explain` says whether Secure Messaging applies and why; relay and secure
command options are checked before anything runs."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path

import pytest

from connectwiz.cli import build_parser, main
from connectwiz.commands.relay import settings_from
from connectwiz.errors import UserError
from connectwiz.probe.options import NetworkOptions
from tests.portal.conftest import READER, hold, mime
from tests.secure.test_bundle import V2


@pytest.fixture
def bundle(tmp_path: Path) -> str:
    path = tmp_path / "bundle.toml"
    path.write_text(V2)
    return str(path)


def explain(bundle: str, capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["explain", "--bundle", bundle, "--from", "alice@corp.example", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_explain_json_policy_path(bundle: str, capsys) -> None:
    code, out, _ = explain(bundle, capsys, "--to", "teller@bank.example", "--json")
    secure = json.loads(out)["secure"]
    assert code == 0 and secure["applies"] is True
    assert secure["definition"] == "Confidential 7d" and secure["route"] == "portal"
    assert "secure policy #1 'Bank mail'" in secure["reason"]
    assert secure["reasons"][0]["source"] == "policy"


def test_explain_text_trigger_path_from_subject(bundle: str, capsys) -> None:
    code, out, _ = explain(bundle, capsys, "--to", "ops@other.example",
                           "--subject", "Confidential: Q3")
    assert code == 0
    assert "Secure Messaging: applies, 'External Recipients' (portal)" in out
    assert "content trigger #1 'Confidential content' matched (subject contains" in out


def test_explain_client_header_and_bypass(bundle: str, capsys) -> None:
    header = "X-Connectwiz-Secure: Forever"
    _, out, _ = explain(bundle, capsys, "--to", "ops@other.example", "--header", header, "--json")
    assert json.loads(out)["secure"]["definition"] == "Forever"
    _, out, _ = explain(bundle, capsys, "--to", "cpa@audit.example", "--header", header)
    assert "Secure Messaging: does not apply" in out
    assert "bypass policy #1 'Auditors exempt' disables Secure Messaging" in out


def test_explain_internal_recipient_gets_the_banner(bundle: str, capsys) -> None:
    _, out, _ = explain(bundle, capsys, "--to", "bob@corp.example", "--body",
                        "the account number is", "--json")
    secure = json.loads(out)["secure"]
    assert secure["route"] == "banner" and "banner" in secure["why"]


def test_explain_nothing_applies(bundle: str, capsys) -> None:
    _, out, _ = explain(bundle, capsys, "--to", "ops@other.example")
    assert "Secure Messaging: does not apply" in out


def test_explain_bad_header_option_is_a_one_line_error(bundle: str, capsys) -> None:
    code, _, err = explain(bundle, capsys, "--to", "ops@other.example", "--header", "nocolon")
    assert code == 2 and err.strip() == "connectwiz: --header: 'nocolon' is not 'Name: value'"


def _relay_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["relay", "--hostname", "relay.test", *argv])


def test_portal_url_option_reaches_the_settings() -> None:
    settings = settings_from(_relay_args("--portal-url", "https://mail.corp.example/s"),
                             NetworkOptions())
    assert settings.secure_portal_url == "https://mail.corp.example/s"
    default = settings_from(_relay_args(), NetworkOptions())
    assert default.secure_portal_url == "https://relay.test/secure"


@pytest.mark.parametrize("url", ["mail.corp.example/secure", "https://x y"])
def test_bad_portal_url_is_refused(url: str) -> None:
    with pytest.raises(UserError, match="--portal-url"):
        settings_from(_relay_args("--portal-url", url), NetworkOptions())


@pytest.mark.parametrize(("argv", "problem"), [
    (["extend", "ABC"], "needs --days"),
    (["show"], "needs the ID"),
    (["list", "ABC"], "takes no ID"),
    (["show", "../etc"], "not a held message id"),
    (["unlock", "ABC", "--days", "3"], "--days is only for secure extend"),
    (["unlock"], "needs the ID"),
])
def test_secure_command_usage_errors(tmp_path: Path, capsys, argv: list[str],
                                     problem: str) -> None:
    (tmp_path / "secure").mkdir()
    code = main(["secure", *argv, "--spool", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and problem in err and len(err.strip().splitlines()) == 1


def test_secure_list_on_an_empty_spool(tmp_path: Path, capsys) -> None:
    assert main(["secure", "list", "--spool", str(tmp_path)]) == 0
    assert "no held messages" in capsys.readouterr().out


def test_a_damaged_record_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "secure" / "ABC").mkdir(parents=True)
    (tmp_path / "secure" / "ABC" / "record.json").write_text("{not json")
    assert main(["secure", "list", "--spool", str(tmp_path)]) == 2
    assert "damaged" in capsys.readouterr().err


def test_secure_show_names_a_locked_link_and_unlock_or_extend_unlocks_it(tmp_path: Path, capsys,
                                                               monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    spool = tmp_path / "spool"
    held, _ = hold(spool, mime("lock"), expires_in=timedelta(days=3))
    record_path = spool / "secure" / held / "record.json"
    record = json.loads(record_path.read_text())
    record["limit_at"] = "2999-01-01T00:00:00Z"
    record["recipients"][0].update(wrong_codes=9, locked_at="2026-12-01T10:00:00Z")
    record_path.write_text(json.dumps(record))
    assert main(["secure", "show", held, "--spool", str(spool)]) == 0
    out = capsys.readouterr().out
    assert f"Recipient   {READER}" in out
    assert "locked 2026-12-01T10:00:00Z after 9 wrong codes; secure unlock" in out
    expires = record["expires_at"]
    assert main(["secure", "unlock", held, "--spool", str(spool), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    [slot] = shown["recipients"]
    assert slot["locked_at"] is None and slot["wrong_codes"] == 0
    assert shown["expires_at"] == expires  # unlocking does not extend
    # extend unlocks too.
    record = json.loads(record_path.read_text())
    record["recipients"][0].update(wrong_codes=9, locked_at="2026-12-01T10:00:00Z")
    record_path.write_text(json.dumps(record))
    assert main(["secure", "extend", held, "--days", "1", "--spool", str(spool), "--json"]) == 0
    [slot] = json.loads(capsys.readouterr().out)["recipients"]
    assert slot["locked_at"] is None and slot["wrong_codes"] == 0
