"""`connectwiz explain` end to end: a bundle file on disk, cli.main, stdout/stderr, exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectwiz.cli import main

BUNDLE = """\
schema_version = 1

[organisation]
internal_domains = ["example.com"]

[organisation.address_groups]
board = ["ceo@example.com"]

[[delivery_definitions]]
name = "Enforced TLS - Strict"
option = "enforced"
encryption_mode = "strict"
min_tls = "1.2"

[[delivery_definitions]]
name = "No TLS"
option = "none"

[[delivery_policies]]
narrative = "Enforced TLS to partner"
definition = "Enforced TLS - Strict"
to = { applies = "domain", specifically = ["partner.example"] }

[[delivery_policies]]
narrative = "Board: no TLS (paused)"
definition = "No TLS"
from = { based_on = "header", applies = "address_group", specifically = ["board"] }
to = { applies = "domain", specifically = ["partner.example"] }
enabled = false

[[delivery_policies]]
narrative = "Everyone"
definition = "Enforced TLS - Strict"

[[delivery_policies]]
narrative = "Branch office only"
definition = "No TLS"
to = { applies = "domain", specifically = ["partner.example"] }
override = true
source_ips = ["192.0.2.0/24", "2001:db8::/32"]
start = 2026-01-01T00:00:00Z
end = 2027-01-01T00:00:00Z

[[receipt_policies]]
narrative = "Enforced TLS from partner"
option = "enforced"
from = { applies = "domain", specifically = ["partner.example"] }
to = { applies = "internal" }
"""


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "bundle.toml"
    path.write_text(BUNDLE, encoding="utf-8")
    return path


def _explain(capsys, bundle: Path, *args: str) -> tuple[int, str, str]:
    code = main(["explain", "--bundle", str(bundle), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_output_names_winner_definition_and_losers(capsys, bundle):
    code, out, err = _explain(capsys, bundle, "--from", "ceo@example.com",
                              "--to", "Bob@Partner.Example", "--at", "2026-06-01T12:00:00Z")
    assert code == 0 and err == ""
    assert "Delivery: Enforced TLS - Strict (enforced, strict, TLS 1.2+, SSL Mode strong)" in out
    assert "#1 'Enforced TLS to partner' applies" in out
    assert "#2 'Board: no TLS (paused)': disabled" in out
    assert "#3 'Everyone': lost - less specific" in out
    assert "#4 'Branch office only': source IP not in range" in out
    assert "Receipt: opportunistic" in out


def test_json_output(capsys, bundle):
    code, out, _ = _explain(capsys, bundle, "--from", "alice@example.com", "--to",
                            "bob@partner.example", "--ip", "192.0.2.9", "--at", "2026-06-01",
                            "--json")
    assert code == 0
    data = json.loads(out)
    assert data["message"]["at"] == "2026-06-01T00:00:00+00:00"  # naive --at means UTC
    assert data["message"]["client_ip"] == "192.0.2.9"
    delivery = data["delivery"]
    assert delivery["policy"] == {"position": 4, "narrative": "Branch office only"}
    assert delivery["default"] is False
    assert delivery["definition"]["option"] == "none"
    assert "Policy Override" in delivery["reason"]
    outcomes = {c["position"]: c["outcome"] for c in delivery["candidates"]}
    assert outcomes == {4: "applies", 1: "lost", 3: "lost"}  # #2 is for the board only
    assert data["receipt"]["default"] is True and data["receipt"]["option"] == "opportunistic"


def test_override_outside_its_date_range_does_not_apply(capsys, bundle):
    code, out, _ = _explain(capsys, bundle, "--from", "alice@example.com", "--to",
                            "bob@partner.example", "--ip", "2001:db8::1", "--at",
                            "2027-01-01T00:00:00+00:00", "--json")
    assert code == 0
    delivery = json.loads(out)["delivery"]
    assert delivery["policy"]["narrative"] == "Enforced TLS to partner"
    (branch,) = [c for c in delivery["candidates"] if c["position"] == 4]
    assert branch["outcome"] == "expired"


def test_receipt_from_partner_to_internal(capsys, bundle):
    code, out, _ = _explain(capsys, bundle, "--from", "bob@partner.example",
                            "--to", "alice@sales.example.com", "--json")
    assert code == 0
    receipt = json.loads(out)["receipt"]
    assert receipt["option"] == "enforced"
    assert receipt["policy"]["narrative"] == "Enforced TLS from partner"


def test_header_from_is_used_by_header_based_scopes(capsys, bundle):
    code, out, _ = _explain(capsys, bundle, "--from", "bounce@mailer.example",
                            "--header-from", "CEO@example.com", "--to", "bob@partner.example",
                            "--json")
    assert code == 0
    delivery = json.loads(out)["delivery"]
    (board,) = [c for c in delivery["candidates"] if c["position"] == 2]
    assert board["outcome"] == "disabled" and board["sender"] == "ceo@example.com"


def test_null_sender_is_accepted(capsys, bundle):
    code, out, _ = _explain(capsys, bundle, "--from", "<>", "--to", "bob@partner.example",
                            "--json")
    assert code == 0
    assert json.loads(out)["message"]["envelope_from"] == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "alice", "--to", "bob@partner.example"], "--from: 'alice' is not a valid"),
        (["--from", "a@example.com", "--to", "bob@"], "--to: 'bob@' is not a valid"),
        (["--from", "a@example.com", "--to", "b@partner.example", "--header-from", "x y@z"],
         "--header-from:"),
        (["--from", "a@example.com", "--to", "b@partner.example", "--ip", "300.1.1.1"],
         "--ip: '300.1.1.1' is not an IPv4 or IPv6 address"),
        (["--from", "a@example.com", "--to", "b@partner.example", "--at", "next tuesday"],
         "--at: 'next tuesday' is not an ISO 8601"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, bundle, args, message):
    code, out, err = _explain(capsys, bundle, *args)
    assert code == 2 and out == ""
    assert err.startswith(f"connectwiz: {message}")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_bundle_is_one_line_exit_2(capsys, tmp_path):
    code, out, err = _explain(capsys, tmp_path / "nope.toml", "--from", "a@example.com",
                              "--to", "b@partner.example")
    assert code == 2 and out == ""
    assert "nope.toml" in err and err.count("\n") == 1


# -- --published: which of bundle / MTA-STS / DANE decides TLS (the lab publishes) ----------

PUBLISHED_BUNDLE = """\
schema_version = 1

[organisation]
internal_domains = ["corp.example"]

[[delivery_definitions]]
name = "No TLS"
option = "none"

[[delivery_policies]]
narrative = "Plaintext to trusted"
definition = "No TLS"
to = { applies = "domain", specifically = ["trusted.example"] }
"""


def _published(tmp_path: Path, lab_cli_args: list[str], capsys, *extra: str) -> dict:
    path = tmp_path / "b.toml"
    path.write_text(PUBLISHED_BUNDLE)
    assert main(["explain", "--bundle", str(path), *lab_cli_args, "--published", "--json",
                 "--from", "a@corp.example", *extra]) == 0
    return json.loads(capsys.readouterr().out)["published"]


@pytest.mark.network
def test_published_enforce_decides_where_the_bundle_is_opportunistic(
        tmp_path, lab_cli_args, capsys) -> None:
    published = _published(tmp_path, lab_cli_args, capsys, "--to", "b@sts-relaxed.example")
    assert published["mta_sts_mode"] == "enforce" and published["decided_by"] == ["mta-sts"]
    assert published["dane_checked"] is False and published["warnings"] == []


@pytest.mark.network
def test_bundle_no_tls_to_an_enforce_domain_is_allowed_with_a_warning(
        tmp_path, lab_cli_args, capsys) -> None:
    path = tmp_path / "b.toml"
    path.write_text(PUBLISHED_BUNDLE)
    assert main(["explain", "--bundle", str(path), *lab_cli_args, "--published",
                 "--from", "a@corp.example", "--to", "b@trusted.example"]) == 0
    out = capsys.readouterr().out
    assert "Published by trusted.example: MTA-STS enforce" in out
    assert "TLS decided by: bundle" in out
    assert "WARNING: trusted.example publishes MTA-STS enforce, but the bundle's No TLS wins" \
        in out


def test_no_tls_says_it_overrides_published_policies_without_looking(tmp_path, capsys) -> None:
    """Offline (no --published) explain cannot know what trusted.example publishes, but says
    that No TLS would win over an MTA-STS enforce policy, and how to check."""
    path = tmp_path / "b.toml"
    path.write_text(PUBLISHED_BUNDLE)
    assert main(["explain", "--bundle", str(path), "--from", "a@corp.example",
                 "--to", "b@trusted.example"]) == 0
    out = capsys.readouterr().out
    assert "Delivery: No TLS (none)" in out
    assert "No TLS wins over what the partner publishes, even MTA-STS enforce " \
           "(--published checks whether it does)" in out


@pytest.mark.network
def test_published_dane_decides_with_a_dnssec_resolver(tmp_path, lab_cli_args, capsys,
                                                       lab) -> None:
    host, port = lab.nameserver
    published = _published(tmp_path, lab_cli_args, capsys, "--to", "b@dane-bad.example",
                            "--dnssec-resolver", f"{host}:{port}")
    assert published["decided_by"] == ["dane"]
    assert published["hosts"][0]["policy_type"] == "tlsa"


@pytest.mark.network
def test_published_dane_decides_for_a_domain_without_mx(tmp_path, lab_cli_args, capsys,
                                                         lab) -> None:
    # RFC 7672 §2.2.2: the domain is its own MX; its validated TLSA records decide.
    host, port = lab.nameserver
    published = _published(tmp_path, lab_cli_args, capsys, "--to", "b@dane-nomx.example",
                           "--dnssec-resolver", f"{host}:{port}")
    assert published["decided_by"] == ["dane"]
    assert [(h["host"], h["policy_type"]) for h in published["hosts"]] == [
        ("dane-nomx.example", "tlsa")]
