"""Big bundles are edited without parsing every entry with tomlkit; the result must be the
same text a whole-document parse gives."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from connectwiz.bundle import Bundle
from connectwiz.bundle.split import SplitDocument
from connectwiz.policy.model import EncryptionMode, LastValidation, ValidationStatus

from .conftest import HAND_WRITTEN

AT = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
MANY = Bundle.from_text("schema_version = 1\n")
MANY.add_domains([f"p{i:02d}.example" for i in range(12)], at=AT)
MANY.add_domains(["loose.example"], mode=EncryptionMode.RELAXED, at=AT)
MANY_TEXT = MANY.to_toml()

Edit = Callable[[Bundle], object]
EDITS: dict[str, list[Edit]] = {
    "add": [lambda b: b.add_domains(["zz.example", "aa.example"], at=AT)],
    "remove first, middle, last": [lambda b: b.remove_domains(
        ["p00.example", "p05.example", "loose.example"])],
    "record and mode": [
        lambda b: b.record_domain_validation(
            "p03.example", LastValidation(ValidationStatus.RELAXED, AT, "expired")),
        lambda b: b.set_domain_mode("p03.example", EncryptionMode.RELAXED),
        lambda b: b.set_domain_mode("loose.example", EncryptionMode.STRICT)],
    "record hand-written": [
        lambda b: b.record_domain_validation(
            "bank.example", LastValidation(ValidationStatus.ERROR, AT, "timeout")),
        lambda b: b.set_domain_mode("bank.example", EncryptionMode.RELAXED)],
    "routes and organisation": [
        lambda b: b.add_route("mx9.acme.example"),
        lambda b: b.set_organisation(["acme.example"], ["10.0.0.0/8"]),
        lambda b: b.add_domains(["late.example"], at=AT)],
}
CASES = [(MANY_TEXT, name) for name in EDITS if name != "record hand-written"] + [
    (HAND_WRITTEN, name) for name in ("add", "record hand-written", "routes and organisation")]


def _whole(text: str) -> Bundle:
    """A bundle that parses its whole document with tomlkit (no tomli data to split with)."""
    bundle = Bundle.from_text(text)
    bundle._data = None
    return bundle


@pytest.mark.parametrize(("text", "name"), CASES,
                         ids=[f"{n}-{'generated' if t == MANY_TEXT else 'hand'}" for t, n in CASES])
def test_split_edits_give_the_same_text_as_whole_document_edits(text: str, name: str) -> None:
    split, whole = Bundle.from_text(text), _whole(text)
    for edit in EDITS[name]:
        edit(split)
        edit(whole)
    assert isinstance(split._document(), SplitDocument)
    assert not isinstance(whole._document(), SplitDocument)
    assert split.to_toml() == whole.to_toml()
    assert "\n\n\n" not in split.to_toml()  # one blank line between entries, whatever the edit
    assert split.model == whole.model == Bundle.from_text(split.to_toml()).model


def test_emptied_run_keeps_its_place_for_new_entries() -> None:
    bundle = Bundle.from_text(HAND_WRITTEN)
    bundle.remove_domains(["bank.example"])
    bundle.add_domains(["again.example"], at=AT)
    text = bundle.to_toml()
    assert text.index('domain = "again.example"') < text.index("[[delivery_definitions]]")
    assert "\n\n\n" not in text
    assert [d.domain for d in Bundle.from_text(text).model.external_domains] == ["again.example"]


INTERLEAVED = """\
schema_version = 1

[[external_domains]]
domain = "a.example"

[[inbound_routes]]   # a table between two entries: no split
host = "mx.acme.example"

[[external_domains]]
domain = "b.example"

[[delivery_definitions]]
name = "Enforced TLS - Strict"
option = "enforced"
managed = true

[[delivery_policies]]
narrative = '''Enforced TLS
[not a header]'''
definition = "Enforced TLS - Strict"
managed = true
to = { applies = "domain", specifically = ["a.example", "b.example"] }

[[receipt_policies]]
narrative = "from partners"
option = "enforced"
managed = true
from = { applies = "domain", specifically = ["a.example", "b.example"] }
"""


def test_entries_not_in_one_run_are_edited_through_the_whole_document() -> None:
    bundle = Bundle.from_text(INTERLEAVED)
    assert not isinstance(bundle._document(), SplitDocument)
    bundle.remove_domains(["a.example"])
    bundle.add_domains(["c.example"], at=AT)
    model = Bundle.from_text(bundle.to_toml()).model
    assert [d.domain for d in model.external_domains] == ["b.example", "c.example"]
    assert model.delivery_policies[0].to.specifically == ("b.example", "c.example")
    assert "[not a header]'''" in bundle.to_toml()


def test_multi_line_string_lines_are_not_taken_for_headers() -> None:
    text = INTERLEAVED.replace('[[inbound_routes]]   # a table between two entries: no split\n'
                               'host = "mx.acme.example"\n\n', "")
    bundle = Bundle.from_text(text)
    assert isinstance(bundle._document(), SplitDocument)
    bundle.add_domains(["c.example"], at=AT)
    assert bundle.to_toml() == _edited_whole(text)


def _edited_whole(text: str) -> str:
    whole = _whole(text)
    whole.add_domains(["c.example"], at=AT)
    return whole.to_toml()


def test_table_split_around_the_run_is_not_split() -> None:
    groups = '[organisation.address_groups]\nlegal = ["counsel@acme.example"]\n'
    text = HAND_WRITTEN.replace(groups, "").replace(
        "[[delivery_definitions]]\n# Hand", groups + "\n[[delivery_definitions]]\n# Hand", 1)
    bundle = Bundle.from_text(text)
    assert not isinstance(bundle._document(), SplitDocument)
    bundle.add_domains(["c.example"], at=AT)
    model = Bundle.from_text(bundle.to_toml()).model
    assert "c.example" in model.delivery_policies[1].to.specifically
