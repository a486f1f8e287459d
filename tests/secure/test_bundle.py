"""Schema v2: Secure Messaging sections load, round-trip, survive edits; v1 bundles still load;
bad sections get one-line errors naming file, line and key."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectwiz.bundle import Bundle
from connectwiz.bundle.data import (
    model_data,
)
from connectwiz.bundle.errors import BundleError
from connectwiz.policy.model import (
    Applies,
    BypassOption,
    ConditionField,
    SecureCondition,
    TriggerMatch,
)

V2 = '''\
schema_version = 2

[organisation]
internal_domains = ["corp.example"]

[secure_messaging]
max_retention_days = 200

[[secure_definitions]]
name = "Confidential 7d"
description = "No print, 7-day expiry"
allow_print = false
allow_reply = true
allow_reply_all = false
expiry_days = 7
max_extension_days = 14
read_receipt = true
banner = "<b>Sent securely</b>"

[[secure_definitions]]
name = "Forever"
expiry_days = "never"
banner = ""

[[secure_policies]]
narrative = "Bank mail"
definition = "Confidential 7d"
to = { applies = "domain", specifically = ["bank.example"] }

[[secure_policies]]
narrative = "Quiet for partners"
take_no_action = true
to = { applies = "domain", specifically = ["partner.example"] }

[[secure_triggers]]
narrative = "Confidential content"
definition = "External Recipients"
match = "any"
conditions = [
  { subject_contains = "confidential" },
  { body_contains = "account number" },
  { header = "X-Classification", equals = "secret" },
]

[[secure_bypass]]
narrative = "Auditors exempt"
option = "disable"
to = { applies = "domain", specifically = ["audit.example"] }
'''


def load(text: str, tmp_path: Path) -> Bundle:
    path = tmp_path / "bundle.toml"
    path.write_text(text)
    return Bundle.load(path)


def error(text: str, tmp_path: Path) -> BundleError:
    with pytest.raises(BundleError) as info:
        load(text, tmp_path).model  # noqa: B018 - loading is the point
    return info.value


def test_v2_bundle_loads_every_section(tmp_path: Path) -> None:
    m = load(V2, tmp_path).model
    assert m.secure_settings.max_retention_days == 200
    conf, forever = m.secure_definitions
    assert (conf.allow_print, conf.allow_reply, conf.allow_reply_all) == (False, True, False)
    assert (conf.expiry_days, conf.max_extension_days, conf.read_receipt) == (7, 14, True)
    assert conf.banner == "<b>Sent securely</b>" and conf.description.startswith("No print")
    assert forever.expiry_days is None and forever.banner == ""
    bank, quiet = m.secure_policies
    assert bank.definition == "Confidential 7d" and bank.to.applies is Applies.DOMAIN
    assert quiet.definition is None
    [trig] = m.secure_triggers
    assert trig.match is TriggerMatch.ANY and trig.definition == "External Recipients"
    assert trig.conditions == (
        SecureCondition(ConditionField.SUBJECT, "confidential"),
        SecureCondition(ConditionField.BODY, "account number"),
        SecureCondition(ConditionField.HEADER, "secret", "X-Classification"),
    )
    [bypass] = m.secure_bypass
    assert bypass.option is BypassOption.DISABLE


def test_v2_round_trips_through_model_data(tmp_path: Path) -> None:
    m = load(V2, tmp_path).model
    again = Bundle.from_model(m, tmp_path / "copy.toml")
    again.save()
    text = (tmp_path / "copy.toml").read_text()
    assert "schema_version = 2" in text
    assert Bundle.load(tmp_path / "copy.toml").model == m


def test_a_bundle_without_secure_messaging_is_still_written_as_v1(tmp_path: Path) -> None:
    m = load("schema_version = 1\n[organisation]\ninternal_domains = ['corp.example']\n",
             tmp_path).model
    assert model_data(m)["schema_version"] == 1
    assert "secure_policies" not in model_data(m)


def test_v1_bundle_still_loads(tmp_path: Path) -> None:
    m = load("schema_version = 1\n[organisation]\ninternal_domains = ['corp.example']\n",
             tmp_path).model
    assert m.organisation.internal_domains == ("corp.example",)
    assert m.secure_policies == () and not m.uses_secure_messaging


def test_secure_sections_in_a_v1_bundle_are_refused(tmp_path: Path) -> None:
    exc = error(V2.replace("schema_version = 2", "schema_version = 1"), tmp_path)
    assert exc.key == "secure_messaging" and exc.line == 6
    assert "need schema_version = 2" in str(exc)


def test_edits_by_connectwiz_keep_the_secure_sections(tmp_path: Path) -> None:
    bundle = load(V2, tmp_path)
    before = bundle.model
    bundle.add_domains(["newpartner.example"], at=datetime(2026, 11, 23, tzinfo=UTC))
    bundle.save()
    after = Bundle.load(tmp_path / "bundle.toml").model
    assert [d.domain for d in after.external_domains] == ["newpartner.example"]
    assert after.secure_policies == before.secure_policies
    assert after.secure_triggers == before.secure_triggers
    assert "Auditors exempt" in (tmp_path / "bundle.toml").read_text()


@pytest.mark.parametrize("section", ["secure_policies", "secure_triggers"])
def test_bidirectional_is_refused_with_file_line_and_key(tmp_path: Path, section: str) -> None:
    marker = "narrative = \"Bank mail\"" if section == "secure_policies" \
        else "narrative = \"Confidential content\""
    text = V2.replace(marker, marker + "\nbidirectional = true")
    exc = error(text, tmp_path)
    assert exc.file == str(tmp_path / "bundle.toml")
    assert exc.key == f"{section}[0].bidirectional"
    assert exc.line == text.splitlines().index("bidirectional = true") + 1
    assert "cannot be Bi-Directional" in str(exc)


def test_bypass_may_be_bidirectional(tmp_path: Path) -> None:
    text = V2.replace('narrative = "Auditors exempt"',
                      'narrative = "Auditors exempt"\nbidirectional = true')
    assert load(text, tmp_path).model.secure_bypass[0].validity.bidirectional


@pytest.mark.parametrize(("old", "new", "key", "problem"), [
    ('definition = "Confidential 7d"', 'definition = "Confidental 7d"',
     "secure_policies[0].definition", "did you mean 'Confidential 7d'"),
    ("take_no_action = true", "take_no_action = false", "secure_policies[1]",
     "either definition"),
    ('name = "Forever"', 'name = "All Recipients"', "secure_definitions[1].name",
     "built-in definition"),
    ('name = "Forever"', 'name = "Confidential 7d"', "secure_definitions[1].name",
     "used twice"),
    ("expiry_days = 7", "expiry_days = 0", "secure_definitions[0].expiry_days", "at least 1"),
    ('expiry_days = "never"', 'expiry_days = "forever"', "secure_definitions[1].expiry_days",
     '"never"'),
    ("max_extension_days = 14", "max_extension_days = -1",
     "secure_definitions[0].max_extension_days", "at least 0"),
    ('banner = ""', "banner = false", "secure_definitions[1].banner", "must be a string"),
    ("max_retention_days = 200", "max_retention_days = 0",
     "secure_messaging.max_retention_days", "at least 1"),
    ('{ subject_contains = "confidential" }', '{ subject_contains = "" }',
     "secure_triggers[0].conditions[0].subject_contains", "must not be empty"),
    ('{ header = "X-Classification", equals = "secret" }', '{ header = "X-Classification" }',
     "secure_triggers[0].conditions[2]", "go together"),
    ('{ body_contains = "account number" }', '{ body_has = "x" }',
     "secure_triggers[0].conditions[1].body_has", "unknown key"),
    ('match = "any"', 'match = "some"', "secure_triggers[0].match", "not valid"),
    ('option = "disable"', 'option = "off"', "secure_bypass[0].option", "not valid"),
])
def test_bad_secure_sections_get_clear_errors(tmp_path: Path, old: str, new: str, key: str,
                                              problem: str) -> None:
    assert old in V2
    exc = error(V2.replace(old, new, 1), tmp_path)
    assert exc.key == key and problem in str(exc)
    assert exc.line is not None


def test_empty_condition_list_is_refused(tmp_path: Path) -> None:
    text = V2.replace(V2[V2.index("conditions = ["):V2.index("]\n\n[[secure_bypass]]") + 1],
                      "conditions = []")
    exc = error(text, tmp_path)
    assert exc.key == "secure_triggers[0].conditions" and "non-empty" in str(exc)


def test_organisation_name_and_logo_for_the_portal_round_trip(tmp_path: Path) -> None:
    text = V2.replace('internal_domains = ["corp.example"]\n',
                      'internal_domains = ["corp.example"]\nname = "Corp Bank"\n'
                      'logo = "branding/logo.png"\n')
    m = load(text, tmp_path).model
    assert (m.organisation.name, m.organisation.logo) == ("Corp Bank", "branding/logo.png")
    again = Bundle.from_model(m, tmp_path / "copy.toml")
    again.save()
    assert Bundle.load(tmp_path / "copy.toml").model == m
    # Unset, they are not written: existing bundles round-trip unchanged.
    assert "name" not in model_data(load(V2, tmp_path).model)["organisation"]
    assert "must be a string" in str(error(V2.replace(
        'internal_domains = ["corp.example"]\n',
        'internal_domains = ["corp.example"]\nname = 7\n'), tmp_path))
