"""`connectwiz policies`: policies and definitions edited one at a time, with the bundle's
error quality, atomic saves and the hand-written rest of the file left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectwiz.bundle import Bundle
from connectwiz.cli import main
from tests.bundle.conftest import HAND_WRITTEN


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def bundle(tmp_path: Path) -> str:
    path = tmp_path / "bundle.toml"
    path.write_text(HAND_WRITTEN, encoding="utf-8")
    return str(path)


def test_list_numbers_every_kind(bundle, capsys) -> None:
    code, out, _ = run(capsys, "policies", "list", "--bundle", bundle)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("delivery\t#1\tLegal to anyone\tLegal TLS 1.3; from "
                               "address_group legal to everyone")
    assert "receipt\t#1\tEnforced TLS from partners\tenforced" in out
    assert "definition\t#1\tLegal TLS 1.3\tenforced strict min_tls=1.3" in out
    code, out, _ = run(capsys, "policies", "list", "definition", "--json", "--bundle", bundle)
    assert [d["name"] for d in json.loads(out)["definition"]] == [
        "Legal TLS 1.3", "Enforced TLS - Strict"]


def test_add_disable_remove_keep_the_comments(bundle, capsys) -> None:
    code, out, _ = run(capsys, "policies", "add", "delivery", "--bundle", bundle,
                       "narrative=Old bank", "definition=Old servers",
                       'to={ applies = "domain", specifically = ["oldbank.example"] }')
    assert code == 2  # the definition does not exist yet: nothing is written
    assert Path(bundle).read_text() == HAND_WRITTEN
    assert run(capsys, "policies", "add", "definition", "--bundle", bundle, "name=Old servers",
               "option=enforced", "encryption_mode=relaxed", "ssl_mode=legacy",
               "min_tls=1.0")[0] == 0
    code, out, _ = run(capsys, "policies", "add", "delivery", "--bundle", bundle,
                       "narrative=Old bank", "definition=Old servers",
                       'to={ applies = "domain", specifically = ["oldbank.example"] }')
    assert (code, out) == (0, "added delivery policy #3 'Old bank'\n")
    assert run(capsys, "policies", "disable", "delivery", "Old bank", "--bundle", bundle)[0] == 0
    model = Bundle.load(bundle).model
    policy = model.delivery_policies[2]
    assert policy.definition == "Old servers" and policy.validity.enabled is False
    text = Path(bundle).read_text()
    assert text.startswith(HAND_WRITTEN.split("[[delivery_definitions]]")[0])
    assert "# Hand-written: legal mail never leaves without TLS 1.3." in text

    code, _, err = run(capsys, "policies", "remove", "definition", "Old servers",
                       "--bundle", bundle)
    assert code == 2 and err == ("connectwiz: delivery definition 'Old servers' is used by "
                                 "delivery policy #3 'Old bank': remove or change those first\n")
    assert run(capsys, "policies", "remove", "delivery", "#3", "--bundle", bundle)[0] == 0
    assert run(capsys, "policies", "remove", "definition", "Old servers", "--bundle",
               bundle)[0] == 0
    assert Path(bundle).read_text() == HAND_WRITTEN


@pytest.mark.parametrize(("argv", "message"), [
    (["add", "definition", "name=X", "option=enforced", "ssl_mode=strng"],
     "policies add definition: delivery_definitions[2].ssl_mode: 'strng' is not valid "
     "(did you mean 'strong'?); the bundle is unchanged"),
    (["add", "receipt", "narrative=R", "colour=red"],
     "policies add receipt: receipt_policies[1].colour: unknown key 'colour' (expected one "
     "of: narrative, option, from, to, enabled, start, end, override, bidirectional, "
     "source_ips, managed, client_certificate); the bundle is unchanged"),
    (["add", "receipt", "option=enforced"], "policies add receipt: give narrative=..."),
    (["add", "delivery", "narrative"], "'narrative': give KEY=VALUE (e.g. narrative=\"Bank\")"),
    (["remove", "delivery", "Enforced TLS to partners"],
     "delivery policy 'Enforced TLS to partners' is managed by connectwiz for the external "
     "domains: remove those with `connectwiz domains remove`"),
    (["remove", "delivery", "Legal to anybody"],
     "no delivery policy is named 'Legal to anybody' (there are: 'Legal to anyone', "
     "'Enforced TLS to partners')"),
    (["disable", "receipt", "#7"],
     "there is no receipt policy #7 (the bundle has 1; see `connectwiz policies list "
     "receipt`)"),
    (["disable", "definition", "Legal TLS 1.3"],
     "a delivery definition has no enabled switch: enable or disable the policies that use it"),
    (["show", "delivery"], "policies show: give one NAME (or #NUMBER)"),
    (["show"], "policies show: give a kind (delivery, receipt, secure, bypass, definition, "
               "secure-definition)"),
])
def test_bad_requests_are_one_line_and_change_nothing(bundle, capsys, argv, message) -> None:
    code, out, err = run(capsys, "policies", *argv, "--bundle", bundle)
    assert (code, out, err) == (2, "", f"connectwiz: {message}\n")
    assert Path(bundle).read_text() == HAND_WRITTEN
    assert not Path(bundle + ".bak").exists()


def test_a_narrative_used_twice_is_chosen_by_number(bundle, capsys) -> None:
    for _ in range(2):
        run(capsys, "policies", "add", "receipt", "--bundle", bundle, "narrative=Twice")
    code, _, err = run(capsys, "policies", "disable", "receipt", "Twice", "--bundle", bundle)
    assert code == 2 and "2 receipt policy entries are named 'Twice': give its number " \
        "(#2 or #3)" in err
    assert run(capsys, "policies", "disable", "receipt", "#3", "--bundle", bundle)[0] == 0
    assert [p.validity.enabled for p in Bundle.load(bundle).model.receipt_policies] == [
        True, True, False]


def test_a_secure_policy_makes_the_bundle_schema_v2(bundle, capsys) -> None:
    code, out, _ = run(capsys, "policies", "add", "secure", "--bundle", bundle,
                       "narrative=Legal is secure", "definition=External Recipients",
                       'from={ applies = "address_group", specifically = ["legal"] }')
    assert code == 0
    assert "schema_version = 2" in Path(bundle).read_text()
    code, out, _ = run(capsys, "policies", "show", "secure", "Legal is secure", "--bundle",
                       bundle)
    assert out.startswith('[[secure_policies]]\nnarrative = "Legal is secure"\n'
                          'definition = "External Recipients"\n')
