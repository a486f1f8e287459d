"""`export --format postfix`: how bundle policies map to Postfix tables, what is refused with a
warning, and (when Postfix is installed) that Postfix itself reads the files as intended."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectwiz.bundle.postfix import (
    CLIENT_TLS,
    FILES,
    MAIN_CF,
    SENDER_TLS,
    TLS_POLICY,
    export_postfix,
)
from connectwiz.cli import main
from connectwiz.policy.model import (
    Applies,
    BasedOn,
    DeliveryDefinition,
    DeliveryOption,
    DeliveryPolicy,
    EncryptionMode,
    InboundRoute,
    PolicyModel,
    ReceiptOption,
    ReceiptPolicy,
    Scope,
    Validity,
)

STRICT = DeliveryDefinition("Strict", DeliveryOption.ENFORCED, EncryptionMode.STRICT, "1.2")
RELAXED = DeliveryDefinition("Relaxed", DeliveryOption.ENFORCED, EncryptionMode.RELAXED, "1.3")
OPPORTUNISTIC = DeliveryDefinition("Opportunistic", DeliveryOption.OPPORTUNISTIC, min_tls="1.0")
NONE = DeliveryDefinition("None", DeliveryOption.NONE)
DEFINITIONS = (STRICT, RELAXED, OPPORTUNISTIC, NONE)


def to(*domains: str) -> Scope:
    return Scope(Applies.DOMAIN, domains)


def delivery(narrative: str, definition: DeliveryDefinition, to_scope: Scope, **kw) -> \
        DeliveryPolicy:
    return DeliveryPolicy(narrative, definition.name, to=to_scope, **kw)


def model(*policies: DeliveryPolicy, receipt: tuple[ReceiptPolicy, ...] = ()) -> PolicyModel:
    return PolicyModel(delivery_definitions=DEFINITIONS, delivery_policies=policies,
                       receipt_policies=receipt)


def table(text: str) -> dict[str, str]:
    """The table's entries (comments dropped): key -> value."""
    rows = [line.split("\t", 1) for line in text.splitlines() if line and line[0] != "#"]
    return dict(rows)


def setting(main_cf: str, name: str) -> str:
    return [line.split(" = ", 1)[1] for line in main_cf.splitlines()
            if line.startswith(f"{name} = ")][-1]


def test_each_delivery_option_maps_to_its_postfix_level():
    out = export_postfix(model(
        delivery("bank strict", STRICT, to("bank.example")),
        delivery("shop relaxed", RELAXED, to("shop.example")),
        delivery("news opportunistic", OPPORTUNISTIC, to("news.example")),
        delivery("legacy none", NONE, to("legacy.example")),
    ))
    assert table(out.files[TLS_POLICY]) == {
        "bank.example": "verify match=hostname protocols=>=TLSv1.2 ciphers=high",
        "shop.example": "encrypt protocols=>=TLSv1.3 ciphers=high",
        "news.example": "may protocols=>=TLSv1",
        "legacy.example": "none",
    }
    assert out.warnings == ()


def test_every_line_names_the_policy_it_comes_from():
    out = export_postfix(model(delivery("Bank & co", STRICT, to("bank.example", "b2.example"))))
    lines = out.files[TLS_POLICY].splitlines()
    for key in ("bank.example", "b2.example"):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{key}\t"))
        comments = [line for line in lines[:at] if line.startswith(f"# {key}:")]
        assert comments == [f"# {key}: from delivery policy 1 'Bank & co', definition 'Strict'"]


def test_override_wins_then_the_earlier_policy():
    out = export_postfix(model(
        delivery("first", RELAXED, to("a.example", "b.example")),
        delivery("second", STRICT, to("a.example")),
        delivery("forced", NONE, to("b.example"), validity=Validity(override=True)),
    ))
    entries = table(out.files[TLS_POLICY])
    assert entries["a.example"].startswith("encrypt")  # same specificity: bundle order
    assert entries["b.example"] == "none"  # the override
    assert "# b.example: from delivery policy 3 'forced', definition 'None' (wins over " \
           "delivery policy 1 'first'" in out.files[TLS_POLICY]


def test_default_policy_goes_to_main_cf():
    out = export_postfix(model(
        delivery("everyone", OPPORTUNISTIC, Scope()),
        delivery("external", RELAXED, Scope(Applies.EXTERNAL)),
    ))
    main_cf = out.files[MAIN_CF]
    assert setting(main_cf, "smtp_tls_security_level") == "encrypt"  # external is more specific
    assert setting(main_cf, "smtp_tls_mandatory_protocols") == ">=TLSv1.3"
    assert "# default from delivery policy 2 'external'" in main_cf
    assert table(out.files[TLS_POLICY]) == {}


def test_strict_checks_the_mx_host_name_with_sni_as_the_relay_does():
    """The relay verifies the chain and the MX host name DNS gave, sending that name as SNI:
    Postfix's verify + match=hostname, smtp_tls_servername = hostname. (secure's default
    match, nexthop:dot-nexthop, would defer every partner hosted in another domain.)"""
    out = export_postfix(model(delivery("everyone strict", STRICT, Scope()),
                               delivery("bank strict", STRICT, to("bank.example"))))
    main_cf = out.files[MAIN_CF]
    assert table(out.files[TLS_POLICY])["bank.example"] == \
        "verify match=hostname protocols=>=TLSv1.2 ciphers=high"
    assert setting(main_cf, "smtp_tls_security_level") == "verify"
    assert setting(main_cf, "smtp_tls_verify_cert_match") == "hostname"
    assert setting(main_cf, "smtp_tls_servername") == "hostname"
    assert "bank.example" not in main_cf and ":.bank.example" not in out.files[TLS_POLICY]


def test_without_policies_the_default_is_opportunistic():
    main_cf = export_postfix(PolicyModel()).files[MAIN_CF]
    assert setting(main_cf, "smtp_tls_security_level") == "may"
    assert setting(main_cf, "smtp_tls_policy_maps") == \
        "texthash:${config_directory}/connectwiz/tls_policy"


@pytest.mark.parametrize(("policy", "words"), [
    (delivery("from legal", STRICT, to("x.example"),
              from_=Scope(Applies.INDIVIDUAL, ("legal@corp.example",))),
     "Emails From is individual"),
    (delivery("to a person", STRICT, Scope(Applies.INDIVIDUAL, ("ceo@x.example",))),
     "not per address"),
    (delivery("to a group", STRICT, Scope(Applies.ADDRESS_GROUP, ("partners",))),
     "Emails To is address_group"),
    (delivery("dated", STRICT, to("x.example"),
              validity=Validity(start=datetime(2026, 1, 1, tzinfo=UTC))),
     "date range"),
    (delivery("from a subnet", STRICT, to("x.example"),
              validity=Validity(source_ips=(ipaddress.ip_network("10.1.0.0/16"),))),
     "source-IP"),
    (DeliveryPolicy("missing", "No such definition", to=to("x.example")), "does not exist"),
])
def test_unmappable_delivery_policies_are_refused_with_a_warning(policy, words):
    out = export_postfix(model(policy))
    assert len(out.warnings) == 1 and words in out.warnings[0]
    assert f"'{policy.narrative}' not exported" in out.warnings[0]
    assert f"# NOT EXPORTED: delivery policy 1 '{policy.narrative}'" in out.files[TLS_POLICY]
    assert table(out.files[TLS_POLICY]) == {}


def test_disabled_policy_is_skipped_quietly_with_a_comment():
    out = export_postfix(model(delivery("off", STRICT, to("x.example"),
                                        validity=Validity(enabled=False))))
    assert out.warnings == () and table(out.files[TLS_POLICY]) == {}
    assert "# skipped delivery policy 1 'off': disabled" in out.files[TLS_POLICY]


def test_bidirectional_exports_the_forward_direction_and_warns():
    out = export_postfix(model(delivery("both ways", STRICT, to("x.example"),
                                        validity=Validity(bidirectional=True))))
    assert "x.example" in table(out.files[TLS_POLICY])
    assert len(out.warnings) == 1 and "Bi-Directional" in out.warnings[0]


def receipt(narrative: str, option: ReceiptOption, from_: Scope, **kw) -> ReceiptPolicy:
    return ReceiptPolicy(narrative, option, from_=from_, to=Scope(Applies.INTERNAL), **kw)


def test_receipt_policies_by_sender_and_by_client():
    out = export_postfix(model(receipt=(
        receipt("partners", ReceiptOption.ENFORCED, to("bank.example", "shop.example")),
        receipt("one person", ReceiptOption.ENFORCED,
                Scope(Applies.INDIVIDUAL, ("ceo@news.example",))),
        receipt("shop relaxed", ReceiptOption.OPPORTUNISTIC, to("shop.example")),
        receipt("branch office", ReceiptOption.ENFORCED, Scope(),
                validity=Validity(source_ips=(ipaddress.ip_network("192.0.2.0/24"),))),
    )))
    assert table(out.files[SENDER_TLS]) == {
        "bank.example": "reject_plaintext_session",
        "shop.example": "reject_plaintext_session",  # the strictest wins, as in the relay
        "ceo@news.example": "reject_plaintext_session",
    }
    assert table(out.files[CLIENT_TLS]) == {"192.0.2.0/24": "reject_plaintext_session"}
    assert "# shop.example: from receipt policy 1 'partners' (wins over receipt policy 3 " \
           "'shop relaxed')" in out.files[SENDER_TLS]
    main_cf = out.files[MAIN_CF]
    assert setting(main_cf, "smtpd_sender_restrictions") == \
        "check_sender_access texthash:${config_directory}/connectwiz/sender_tls"
    assert setting(main_cf, "smtpd_client_restrictions") == \
        "check_client_access cidr:${config_directory}/connectwiz/client_tls.cidr"
    assert setting(main_cf, "plaintext_reject_code") == "530"


def test_receipt_from_everyone_goes_into_main_cf():
    out = export_postfix(model(receipt=(receipt("all", ReceiptOption.ENFORCED, Scope()),)))
    assert setting(out.files[MAIN_CF], "smtpd_sender_restrictions").endswith(
        ", reject_plaintext_session")


def test_tls12_ncsc_exports_tls_required_and_warns():
    out = export_postfix(model(receipt=(
        receipt("ncsc", ReceiptOption.TLS12_NCSC, to("gov.example")),)))
    assert table(out.files[SENDER_TLS]) == {"gov.example": "reject_plaintext_session"}
    assert len(out.warnings) == 1 and "approved ciphers" in out.warnings[0]


@pytest.mark.parametrize(("policy", "words"), [
    (receipt("header", ReceiptOption.ENFORCED,
             Scope(Applies.DOMAIN, ("x.example",), BasedOn.HEADER)), "header From"),
    (receipt("group", ReceiptOption.ENFORCED, Scope(Applies.ADDRESS_GROUP, ("g",))),
     "address_group"),
    (receipt("both", ReceiptOption.ENFORCED, to("x.example"),
             validity=Validity(source_ips=(ipaddress.ip_network("10.0.0.0/8"),))),
     "sender scope with source IPs"),
    (receipt("dated", ReceiptOption.ENFORCED, to("x.example"),
             validity=Validity(end=datetime(2027, 1, 1, tzinfo=UTC))), "date range"),
])
def test_unmappable_receipt_policies_are_refused_with_a_warning(policy, words):
    out = export_postfix(model(receipt=(policy,)))
    assert len(out.warnings) == 1 and words in out.warnings[0]
    assert table(out.files[SENDER_TLS]) == {} and table(out.files[CLIENT_TLS]) == {}
    target = CLIENT_TLS if policy.validity.source_ips else SENDER_TLS
    assert "# NOT EXPORTED: receipt policy 1" in out.files[target]


# --- the command -------------------------------------------------------------------------------


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "bundle.toml"
    assert main(["domains", "add", "--bundle", str(path), "bank.example"]) == 0
    assert main(["domains", "add", "--bundle", str(path), "--relaxed", "shop.example"]) == 0
    return path


def test_command_writes_the_files(bundle, tmp_path, capsys):
    capsys.readouterr()
    out_dir = tmp_path / "postfix"
    assert main(["export", "--bundle", str(bundle), "--format", "postfix", "-o",
                 str(out_dir)]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(FILES)
    entries = table((out_dir / TLS_POLICY).read_text())
    assert entries["bank.example"].startswith("verify match=hostname")
    assert entries["shop.example"].startswith("encrypt")
    assert f"# Generated by connectwiz from {bundle}" in (out_dir / MAIN_CF).read_text()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("argv", [[], ["-o", "-"]])
def test_command_needs_a_folder(bundle, capsys, argv):
    assert main(["export", "--bundle", str(bundle), "--format", "postfix", *argv]) == 2
    assert "give -o DIR" in capsys.readouterr().err


def test_command_refuses_a_file_as_folder(bundle, capsys):
    assert main(["export", "--bundle", str(bundle), "--format", "postfix", "-o",
                 str(bundle)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert "bank.example" in bundle.read_text()  # the bundle is untouched


def test_command_prints_warnings(tmp_path, capsys):
    path = tmp_path / "bundle.toml"
    path.write_text('schema_version = 1\n\n[[delivery_definitions]]\nname = "S"\n'
                    'option = "enforced"\n\n[[delivery_policies]]\nnarrative = "dated"\n'
                    'definition = "S"\nstart = 2026-01-01T00:00:00Z\n'
                    'to = { applies = "domain", specifically = ["x.example"] }\n')
    assert main(["export", "--bundle", str(path), "--format", "postfix", "-o",
                 str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "connectwiz: warning: delivery policy 1 'dated' not exported" in err


# --- Postfix reads what we wrote ---------------------------------------------------------------

POSTMAP = shutil.which("postmap") or ("/usr/sbin/postmap" if Path("/usr/sbin/postmap").exists()
                                      else None)


@pytest.mark.peer
@pytest.mark.skipif(POSTMAP is None, reason="Postfix is not installed (no postmap)")
def test_postfix_looks_up_the_tables_as_intended(tmp_path):
    out = export_postfix(model(
        delivery("bank", STRICT, to("bank.example")),
        receipt=(receipt("partners", ReceiptOption.ENFORCED, to("bank.example")),
                 receipt("office", ReceiptOption.ENFORCED, Scope(), validity=Validity(
                     source_ips=(ipaddress.ip_network("192.0.2.0/24"),)))),
    ))
    for name, text in out.files.items():
        (tmp_path / name).write_text(text)

    def query(key: str, table_spec: str) -> str:
        done = subprocess.run([POSTMAP, "-q", key, table_spec], capture_output=True, text=True,
                              timeout=30, check=False)
        return done.stdout.strip()

    assert query("bank.example", f"texthash:{tmp_path / TLS_POLICY}") == \
        "verify match=hostname protocols=>=TLSv1.2 ciphers=high"
    assert query("other.example", f"texthash:{tmp_path / TLS_POLICY}") == ""
    assert query("bank.example", f"texthash:{tmp_path / SENDER_TLS}") == \
        "reject_plaintext_session"
    assert query("192.0.2.77", f"cidr:{tmp_path / CLIENT_TLS}") == "reject_plaintext_session"
    assert query("198.51.100.1", f"cidr:{tmp_path / CLIENT_TLS}") == ""


def test_inbound_routes_are_keyed_by_their_next_hop():
    out = export_postfix(PolicyModel(inbound_routes=(
        InboundRoute("mail.corp.example", 25, EncryptionMode.STRICT),
        InboundRoute("legacy.corp.example", 2525, EncryptionMode.RELAXED),
        InboundRoute("10.0.0.5", 25, EncryptionMode.STRICT),
        InboundRoute("new.corp.example", 25, None),
    )))
    assert table(out.files[TLS_POLICY]) == {
        "[mail.corp.example]:25": "secure match=mail.corp.example protocols=>=TLSv1.2",
        "[legacy.corp.example]:2525": "encrypt protocols=>=TLSv1.2",
        # Postfix matches an explicit address against the certificate's IP subjectAltNames
        # (tests/differential proves it with posttls-finger and a real Postfix).
        "[10.0.0.5]:25": "secure match=10.0.0.5 protocols=>=TLSv1.2",
    }
    assert out.warnings == ()
    assert "# skipped inbound route new.corp.example:25: not validated yet" in \
        out.files[TLS_POLICY]


# -- published policies: DANE and the MTA-STS resolver (docs/relay.md) ---------------------


def test_dane_makes_opportunistic_the_dane_level_with_dnssec_lookups():
    out = export_postfix(model(delivery("o", OPPORTUNISTIC, to("o.example")),
                               delivery("s", STRICT, to("s.example"))), dane=True)
    entries = table(out.files[TLS_POLICY])
    assert entries["o.example"] == "dane protocols=>=TLSv1"
    assert entries["s.example"].startswith("verify ")  # the bundle's Enforced TLS stays
    main_cf = out.files[MAIN_CF]
    assert setting(main_cf, "smtp_tls_security_level") == "dane"
    assert setting(main_cf, "smtp_dns_support_level") == "dnssec"


def test_without_dane_no_dnssec_setting_is_written():
    main_cf = export_postfix(PolicyModel()).files[MAIN_CF]
    assert "smtp_dns_support_level" not in main_cf


def test_mta_sts_chains_the_resolver_after_the_bundle_table():
    out = export_postfix(model(delivery("o", OPPORTUNISTIC, to("o.example")),
                               delivery("n", NONE, to("n.example")),
                               delivery("s", STRICT, to("s.example"))),
                         mta_sts="inet:127.0.0.1:8461")
    assert setting(out.files[MAIN_CF], "smtp_tls_policy_maps") == (
        "texthash:${config_directory}/connectwiz/tls_policy, "
        "socketmap:inet:127.0.0.1:8461:postfix")
    entries = table(out.files[TLS_POLICY])
    # Bundle Enforced TLS and No TLS answer first; opportunistic is left for MTA-STS to raise.
    assert entries["n.example"] == "none" and entries["s.example"].startswith("verify ")
    assert "o.example" not in entries
    assert "left to the default level so MTA-STS can raise it" in out.files[TLS_POLICY]


def test_dane_and_mta_sts_options_need_the_postfix_format(tmp_path, capsys):
    path = tmp_path / "b.toml"
    assert main(["org", "set", "--bundle", str(path), "--internal-domain", "corp.example"]) == 0
    assert main(["export", "--bundle", str(path), "--dane"]) == 2
    assert "--dane and --mta-sts go with --format postfix" in capsys.readouterr().err
