"""Directory-driven scopes against a real OpenLDAP (tests/slapd.py): address groups (nested,
alongside the bundle's own groups) and address attributes, read into a cache that selection
uses without querying the directory per message; refreshes; failures; explain; bundle
errors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectwiz.bundle import Bundle
from connectwiz.bundle.errors import BundleError
from connectwiz.cli import main as cli_main
from connectwiz.directory.ldap import DirectoryCache, DirectoryError
from connectwiz.policy.explain import explain
from connectwiz.policy.select import MessageContext, PolicyIndex
from tests.slapd import ADMIN, PASSWORD, SUFFIX, Slapd, running_slapd

pytestmark = [pytest.mark.network, pytest.mark.peer]

PEOPLE = f"""\
dn: ou=People,{SUFFIX}
objectClass: organizationalUnit
ou: People

dn: ou=Groups,{SUFFIX}
objectClass: organizationalUnit
ou: Groups

dn: uid=ann,ou=People,{SUFFIX}
objectClass: inetOrgPerson
uid: ann
cn: Ann
sn: A
mail: Ann@Corp.Example
departmentNumber: Finance

dn: uid=bob,ou=People,{SUFFIX}
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: B
mail: bob@corp.example
departmentNumber: Sales

dn: uid=cat,ou=People,{SUFFIX}
objectClass: inetOrgPerson
uid: cat
cn: Cat
sn: C
mail: cat@corp.example

dn: cn=Finance Team,ou=Groups,{SUFFIX}
objectClass: groupOfNames
cn: Finance Team
member: uid=ann,ou=People,{SUFFIX}

dn: cn=Managers,ou=Groups,{SUFFIX}
objectClass: groupOfNames
cn: Managers
member: cn=Finance Team,ou=Groups,{SUFFIX}
member: cn=Managers,ou=Groups,{SUFFIX}
member: uid=cat,ou=People,{SUFFIX}
"""

BUNDLE = """\
schema_version = 1

[organisation]
internal_domains = ["corp.example"]
address_groups = {{ Board = ["dora@corp.example"] }}

[directory]
url = "{url}"
base_dn = "{suffix}"
bind_dn = "{admin}"
password_env = "CONNECTWIZ_TEST_LDAP_PASSWORD"
attributes = ["departmentNumber"]

[[delivery_definitions]]
name = "Enforced"
option = "enforced"

[[delivery_policies]]
narrative = "Finance sends enforced"
definition = "Enforced"
from = {{ applies = "address_group", specifically = ["finance team"] }}

[[delivery_policies]]
narrative = "Sales sends enforced"
definition = "Enforced"
from = {{ applies = "address_attribute", specifically = ["departmentnumber=sales"] }}

[[delivery_policies]]
narrative = "Board and managers"
definition = "Enforced"
from = {{ applies = "address_group", specifically = ["Board", "Managers"] }}
"""


@pytest.fixture
def slapd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Slapd]:
    monkeypatch.setenv("CONNECTWIZ_TEST_LDAP_PASSWORD", PASSWORD)
    with running_slapd(tmp_path / "slapd") as server:
        server.add(PEOPLE)
        yield server


def load(tmp_path: Path, text: str) -> Bundle:
    path = tmp_path / "connectwiz.toml"
    path.write_text(text)
    return Bundle.load(path)


def bundle(tmp_path: Path, slapd: Slapd) -> Bundle:
    return load(tmp_path, BUNDLE.format(url=slapd.url, suffix=SUFFIX, admin=ADMIN))


def ctx(sender: str) -> MessageContext:
    return MessageContext(sender, None, "partner@bank.example", None, datetime.now(UTC))


def winner(index: PolicyIndex, sender: str) -> str | None:
    policy = index.delivery(ctx(sender)).policy
    return policy.narrative if policy else None


def test_cache_reads_groups_nested_and_attributes(tmp_path: Path, slapd: Slapd) -> None:
    directory = DirectoryCache(bundle(tmp_path, slapd).model.directory)
    snapshot = directory.refresh()
    assert snapshot.members("FINANCE TEAM") == {"ann@corp.example"}  # names: any case
    # Nested groups expand; the group that lists itself does not loop.
    assert snapshot.members("Managers") == {"ann@corp.example", "cat@corp.example"}
    assert snapshot.has("bob@corp.example", "departmentNumber", "SALES")
    assert not snapshot.has("cat@corp.example", "departmentNumber", "Sales")


def test_selection_uses_directory_groups_attributes_and_bundle_groups(
        tmp_path: Path, slapd: Slapd) -> None:
    model = bundle(tmp_path, slapd).model
    directory = DirectoryCache(model.directory)
    directory.refresh()
    index = PolicyIndex(model, directory)
    assert winner(index, "ann@corp.example") == "Finance sends enforced"
    assert winner(index, "bob@corp.example") == "Sales sends enforced"
    assert winner(index, "cat@corp.example") == "Board and managers"  # directory, nested
    assert winner(index, "dora@corp.example") == "Board and managers"  # the bundle's group
    assert winner(index, "eve@corp.example") is None
    assert winner(PolicyIndex(model), "ann@corp.example") is None  # no directory: no match


def test_explain_says_which_group_or_attribute_matched(tmp_path: Path, slapd: Slapd) -> None:
    model = bundle(tmp_path, slapd).model
    directory = DirectoryCache(model.directory)
    directory.refresh()
    ann = explain(model, ctx("ann@corp.example"), directory=directory)
    assert "<ann@corp.example> is in directory group 'finance team'" in ann.delivery.reason
    # Ann also matches #3 through Managers (nested); it loses on bundle order and says why.
    lost = ann.to_json()["delivery"]["candidates"][1]
    assert lost["matched"] == "<ann@corp.example> is in directory group 'Managers'"
    bob = explain(model, ctx("bob@corp.example"), directory=directory)
    assert ("<bob@corp.example> has directory attribute departmentNumber=sales"
            in bob.render_text())
    dora = explain(model, ctx("dora@corp.example"), directory=directory)
    assert "<dora@corp.example> is in bundle group 'Board'" in dora.delivery.reason


def test_cli_explain_reads_the_directory(tmp_path: Path, slapd: Slapd, capsys) -> None:
    path = bundle(tmp_path, slapd).path
    assert cli_main(["explain", "--bundle", str(path), "--from", "cat@corp.example",
                     "--to", "partner@bank.example"]) == 0
    out = capsys.readouterr().out
    assert "'Board and managers' applies" in out
    assert "<cat@corp.example> is in directory group 'Managers'" in out


def test_refresh_changes_membership_without_rebuilding_the_index(tmp_path: Path,
                                                                 slapd: Slapd) -> None:
    model = bundle(tmp_path, slapd).model
    directory = DirectoryCache(model.directory)
    directory.refresh()
    index = PolicyIndex(model, directory)
    slapd.modify(f"dn: cn=Finance Team,ou=Groups,{SUFFIX}\nchangetype: modify\n"
                 f"add: member\nmember: uid=bob,ou=People,{SUFFIX}\n")
    # Selection reads the cache, never the directory: the change shows after a refresh.
    assert winner(index, "bob@corp.example") == "Sales sends enforced"
    directory.refresh()
    assert winner(index, "bob@corp.example") == "Finance sends enforced"


def test_failed_refresh_keeps_the_last_snapshot(tmp_path: Path, slapd: Slapd) -> None:
    model = bundle(tmp_path, slapd).model
    directory = DirectoryCache(model.directory)
    good = directory.refresh()
    slapd.process.terminate()
    slapd.process.wait(timeout=10)
    with pytest.raises(DirectoryError) as info:
        directory.refresh()
    assert slapd.url in str(info.value) and "\n" not in str(info.value)
    assert directory.snapshot is good
    assert winner(PolicyIndex(model, directory), "ann@corp.example") == "Finance sends enforced"


def test_wrong_password_and_missing_variable_are_one_line_errors(
        tmp_path: Path, slapd: Slapd, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = DirectoryCache(bundle(tmp_path, slapd).model.directory)
    monkeypatch.setenv("CONNECTWIZ_TEST_LDAP_PASSWORD", "wrong")
    with pytest.raises(DirectoryError, match="invalidCredentials"):
        directory.refresh()
    monkeypatch.delenv("CONNECTWIZ_TEST_LDAP_PASSWORD")
    with pytest.raises(DirectoryError, match=r"CONNECTWIZ_TEST_LDAP_PASSWORD .* is not set"):
        directory.refresh()
    assert directory.snapshot.loaded_at is None


def test_directory_section_round_trips(tmp_path: Path, slapd: Slapd) -> None:
    model = bundle(tmp_path, slapd).model
    Bundle.from_model(model, tmp_path / "copy.toml").save()
    assert Bundle.load(tmp_path / "copy.toml").model == model
    assert os.environ["CONNECTWIZ_TEST_LDAP_PASSWORD"] not in (tmp_path / "copy.toml").read_text()


@pytest.mark.parametrize(("old", "new", "key", "problem"), [
    ('url = "{url}"', 'url = "http://x"', "directory.url", "ldap:// or ldaps://"),
    ('"departmentnumber=sales"', '"title=boss"', "delivery_policies[1].from.specifically[0]",
     "not in directory.attributes"),
    ('"departmentnumber=sales"', '"sales"', "delivery_policies[1].from.specifically[0]",
     "not attribute=value"),
    ('attributes = ["departmentNumber"]', 'refresh_seconds = 1', "directory.refresh_seconds",
     "at least 10"),
])
def test_bad_directory_settings_get_clear_errors(tmp_path: Path, old: str, new: str, key: str,
                                                 problem: str) -> None:
    assert old in BUNDLE
    text = BUNDLE.replace(old, new, 1).format(url="ldap://127.0.0.1:1", suffix=SUFFIX,
                                              admin=ADMIN)
    with pytest.raises(BundleError) as info:
        load(tmp_path, text)
    assert info.value.key == key and problem in str(info.value)


def test_without_a_directory_unknown_groups_and_attributes_are_refused(tmp_path: Path) -> None:
    text = BUNDLE.format(url="x", suffix=SUFFIX, admin=ADMIN)
    text = text[:text.index("[directory]")] + text[text.index("[[delivery_definitions]]"):]
    with pytest.raises(BundleError) as info:
        load(tmp_path, text)
    assert info.value.key == "delivery_policies[0].from.specifically[0]"
    assert "unknown address group 'finance team'" in str(info.value)
    text = text.replace('["finance team"]', '["Board"]')
    with pytest.raises(BundleError) as info:
        load(tmp_path, text)
    assert "needs a [directory] section" in str(info.value)
