"""What adding and removing an external domain means for the policies (DESIGN.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connectwiz.bundle import Bundle
from connectwiz.errors import UserError
from connectwiz.policy.model import (
    Applies,
    DeliveryOption,
    EncryptionMode,
    ReceiptOption,
)

from .conftest import HAND_WRITTEN

AT = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def test_first_domain_creates_managed_definition_and_policies() -> None:
    bundle = Bundle.from_text("schema_version = 1\n")
    assert bundle.add_domains(["b.example", "a.example"], at=AT) == ["b.example", "a.example"]
    model = bundle.model
    (definition,) = model.delivery_definitions
    assert (definition.name, definition.option, definition.encryption_mode, definition.min_tls,
            definition.managed) == ("Enforced TLS - Strict", DeliveryOption.ENFORCED,
                                    EncryptionMode.STRICT, "1.2", True)
    (delivery,) = model.delivery_policies
    assert delivery.managed and delivery.definition == "Enforced TLS - Strict"
    assert delivery.from_.applies is Applies.EVERYONE
    assert (delivery.to.applies, delivery.to.specifically) == (
        Applies.DOMAIN, ("a.example", "b.example"))  # kept sorted
    (receipt,) = model.receipt_policies
    assert receipt.managed and receipt.option is ReceiptOption.ENFORCED
    assert receipt.from_.specifically == ("a.example", "b.example")
    assert receipt.to.applies is Applies.INTERNAL
    assert [d.added for d in model.external_domains] == [AT, AT]


def test_relaxed_domains_get_their_own_managed_policy() -> None:
    bundle = Bundle.from_text("schema_version = 1\n")
    bundle.add_domains(["strict.example"], at=AT)
    bundle.add_domains(["loose.example"], mode=EncryptionMode.RELAXED, at=AT)
    model = bundle.model
    by_definition = {p.definition: p.to.specifically for p in model.delivery_policies}
    assert by_definition == {"Enforced TLS - Strict": ("strict.example",),
                             "Enforced TLS - Relaxed": ("loose.example",)}
    assert model.receipt_policies[0].from_.specifically == ("loose.example", "strict.example")
    bundle.set_domain_mode("loose.example", EncryptionMode.STRICT)
    model = bundle.model
    assert [p.definition for p in model.delivery_policies] == ["Enforced TLS - Strict"]
    assert [d.name for d in model.delivery_definitions] == ["Enforced TLS - Strict"]


def test_adding_existing_domain_changes_nothing() -> None:
    bundle = Bundle.from_text(HAND_WRITTEN)
    assert bundle.add_domains(["BANK.example"], at=AT) == []
    assert bundle.to_toml() == HAND_WRITTEN


def test_removing_unknown_domain_is_an_error_and_removes_nothing() -> None:
    bundle = Bundle.from_text(HAND_WRITTEN)
    with pytest.raises(UserError, match=r"not an external domain of this bundle: nope\.example"):
        bundle.remove_domains(["bank.example", "nope.example"])
    assert [d.domain for d in bundle.model.external_domains] == ["bank.example"]


def test_internal_domain_cannot_be_added_as_external() -> None:
    bundle = Bundle.from_text(HAND_WRITTEN)
    with pytest.raises(UserError, match="internal domain"):
        bundle.add_domains(["acme.example"], at=AT)
    with pytest.raises(UserError, match="already an external domain"):
        bundle.set_organisation(internal_domains=["bank.example"])


def test_invalid_domain_is_refused_by_the_edit() -> None:
    bundle = Bundle.from_text("schema_version = 1\n")
    with pytest.raises(UserError, match="looks like an e-mail address"):
        bundle.add_domains(["someone@partner.example"], at=AT)
    with pytest.raises(ValueError, match="UTC offset"):
        bundle.add_domains(["partner.example"], at=datetime(2026, 1, 1))


def test_hand_written_definition_with_the_managed_name_is_used_not_deleted() -> None:
    text = HAND_WRITTEN.replace('min_tls = "1.2"\nmanaged = true\n', 'min_tls = "1.3"\n', 1)
    bundle = Bundle.from_text(text)
    bundle.remove_domains(["bank.example"])
    assert [d.name for d in bundle.model.delivery_definitions] == [
        "Legal TLS 1.3", "Enforced TLS - Strict"]
    bundle.add_domains(["again.example"], at=AT)
    policy = next(p for p in bundle.model.delivery_policies if p.managed)
    assert policy.definition == "Enforced TLS - Strict"
    assert len(bundle.model.delivery_definitions) == 2  # no second definition created


def test_managed_name_taken_by_a_different_definition_is_a_clear_error() -> None:
    text = HAND_WRITTEN.replace('name = "Legal TLS 1.3"', 'name = "Enforced TLS - Relaxed"')
    text = text.replace('definition = "Legal TLS 1.3"', 'definition = "Enforced TLS - Relaxed"')
    bundle = Bundle.from_text(text)  # a strict definition under the relaxed name
    with pytest.raises(UserError, match="rename it"):
        bundle.add_domains(["loose.example"], mode=EncryptionMode.RELAXED, at=AT)
    with pytest.raises(UserError, match="rename it"):
        bundle.set_domain_mode("bank.example", EncryptionMode.RELAXED)
    assert bundle.to_toml() == text  # refused before anything changed
    assert [d.domain for d in bundle.model.external_domains] == ["bank.example"]


def test_routes_are_unique_and_normalised() -> None:
    bundle = Bundle.from_text("schema_version = 1\n")
    assert bundle.add_route("MX.Acme.Example") == ("mx.acme.example", 25)
    assert bundle.add_route("[2001:DB8::1]", 2525) == ("2001:db8::1", 2525)
    with pytest.raises(UserError, match="already an inbound route"):
        bundle.add_route("mx.acme.example", 25)
    with pytest.raises(UserError, match="not an inbound route"):
        bundle.remove_route("mx.acme.example", 26)
    with pytest.raises(UserError, match="1 to 65535"):
        bundle.add_route("mx.acme.example", 0)
    bundle.remove_route("mx.acme.example", 25)
    assert [(r.host, r.port) for r in bundle.model.inbound_routes] == [("2001:db8::1", 2525)]


def test_organisation_networks_are_checked() -> None:
    bundle = Bundle.from_text("schema_version = 1\n")
    with pytest.raises(UserError, match=r"did you mean '192\.0\.2\.0/24'"):
        bundle.set_organisation(authorized_outbound=["192.0.2.1/24"])
    bundle.set_organisation(authorized_outbound=["192.0.2.0/24", "2001:db8::/32"])
    assert [str(n) for n in bundle.model.organisation.authorized_outbound] == [
        "192.0.2.0/24", "2001:db8::/32"]
    assert bundle.model.organisation.internal_domains == ()


def test_to_json_is_json_safe() -> None:
    import json

    bundle = Bundle.from_text(HAND_WRITTEN)
    data = json.loads(json.dumps(bundle.to_json()))
    assert data["external_domains"][0]["added"] == "2026-11-01T09:00:00Z"
    assert data["external_domains"][0]["last_validation"]["at"] == "2026-11-01T09:01:00Z"
    assert data["delivery_policies"][0]["from"]["specifically"] == ["legal"]


def test_hand_written_domains_in_any_form_are_found_and_listed_normalised() -> None:
    text = HAND_WRITTEN.replace('domain = "bank.example"', 'domain = "Bank.Example."', 1)
    bundle = Bundle.from_text(text)
    bundle.add_domains(["aaa.example"], at=AT)
    assert bundle.model.delivery_policies[1].to.specifically == ("aaa.example", "bank.example")
    assert bundle.remove_domains(["BANK.example"]) == ["bank.example"]
    assert [d.domain for d in bundle.model.external_domains] == ["aaa.example"]


def test_empty_inline_array_section_is_replaced_and_a_full_one_refused() -> None:
    bundle = Bundle.from_text("schema_version = 1\nexternal_domains = []\n")
    assert bundle.add_domains(["one.example"], at=AT) == ["one.example"]
    assert "[[external_domains]]" in bundle.to_toml()
    inline = Bundle.from_text(
        'schema_version = 1\nexternal_domains = [{domain = "a.example"}]\n'
        '[[delivery_definitions]]\nname = "Enforced TLS - Strict"\noption = "enforced"\n'
        '[[delivery_policies]]\nnarrative = "n"\ndefinition = "Enforced TLS - Strict"\n'
        'managed = true\nto = {applies = "domain", specifically = ["a.example"]}\n'
        '[[receipt_policies]]\nnarrative = "r"\nmanaged = true\n'
        'from = {applies = "domain", specifically = ["a.example"]}\n')
    with pytest.raises(UserError, match=r"write each entry as a \[\[external_domains\]\] table"):
        inline.add_domains(["two.example"], at=AT)
