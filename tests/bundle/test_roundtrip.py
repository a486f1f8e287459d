"""Round trip: load → edit → save changes only the edited part of a hand-written bundle."""

from __future__ import annotations

import difflib
from datetime import UTC, datetime
from pathlib import Path

from connectwiz.bundle import Bundle
from connectwiz.policy.model import EncryptionMode, LastValidation, ValidationStatus

from .conftest import HAND_WRITTEN

AT = datetime(2026, 11, 23, 8, 30, 15, 123456, tzinfo=UTC)


def _diff(before: str, after: str) -> tuple[list[str], list[str]]:
    """(removed lines, added lines) between two texts."""
    removed, added = [], []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        if line.startswith("- "):
            removed.append(line[2:])
        elif line.startswith("+ "):
            added.append(line[2:])
    return removed, added


def test_unedited_bundle_saves_byte_identical(hand_written: Path) -> None:
    bundle = Bundle.load(hand_written)
    bundle.save()
    assert hand_written.read_text(encoding="utf-8") == HAND_WRITTEN


def test_adding_a_domain_only_adds_its_entry_and_list_lines(hand_written: Path) -> None:
    bundle = Bundle.load(hand_written)
    assert bundle.add_domains(["Shop.Example"], at=AT) == ["shop.example"]
    bundle.save()
    after = hand_written.read_text(encoding="utf-8")
    removed, added = _diff(HAND_WRITTEN, after)
    assert removed == []
    assert added == [
        "", "[[external_domains]]", 'domain = "shop.example"',
        "added = 2026-11-23T08:30:15Z", 'encryption_mode = "strict"',
        '    "shop.example",',  # managed delivery list
        '    "shop.example",',  # managed receipt list
    ]
    # comments, inline tables and the hand-written policy survive verbatim
    for line in HAND_WRITTEN.splitlines():
        assert line in after


def test_recording_a_validation_replaces_one_line_and_keeps_its_neighbours(
    hand_written: Path,
) -> None:
    bundle = Bundle.load(hand_written)
    result = LastValidation(ValidationStatus.RELAXED, AT, "certificate expired")
    bundle.record_domain_validation("bank.example", result)
    bundle.save()
    removed, added = _diff(HAND_WRITTEN, hand_written.read_text(encoding="utf-8"))
    assert removed == [
        'last_validation = { status = "strict", at = 2026-11-01T09:01:00Z, reason = "TLS 1.3" }'
    ]
    assert added == [
        'last_validation = {status = "relaxed", at = 2026-11-23T08:30:15Z, '
        'reason = "certificate expired"}'
    ]
    assert Bundle.load(hand_written).model.external_domains[0].last_validation == LastValidation(
        ValidationStatus.RELAXED, AT.replace(microsecond=0), "certificate expired")


def test_removing_the_last_domain_removes_managed_parts_only(hand_written: Path) -> None:
    bundle = Bundle.load(hand_written)
    assert bundle.remove_domains(["bank.example"]) == ["bank.example"]
    bundle.save()
    after = hand_written.read_text(encoding="utf-8")
    model = Bundle.load(hand_written).model
    assert model.external_domains == ()
    assert [p.narrative for p in model.delivery_policies] == ["Legal to anyone"]
    assert model.receipt_policies == ()
    assert [d.name for d in model.delivery_definitions] == ["Legal TLS 1.3"]
    removed, added = _diff(HAND_WRITTEN, after)
    assert added == []
    assert "# Hand-written: legal mail never leaves without TLS 1.3." in after
    assert 'narrative = "Legal to anyone"   # hand-written, connectwiz must not touch it' in after
    assert 'domain = "bank.example"     # our bank: strict only' in removed
    assert "managed = true" not in after


def test_switching_a_domain_to_relaxed_moves_it_between_managed_policies(
    hand_written: Path,
) -> None:
    bundle = Bundle.load(hand_written)
    bundle.add_domains(["shop.example"], at=AT)
    bundle.set_domain_mode("bank.example", EncryptionMode.RELAXED)
    bundle.save()
    model = Bundle.load(hand_written).model
    managed = {p.narrative: p for p in model.delivery_policies if p.managed}
    assert managed["Enforced TLS to partners"].to.specifically == ("shop.example",)
    relaxed = managed["Enforced TLS to partners (relaxed)"]
    assert relaxed.to.specifically == ("bank.example",)
    definition = {d.name: d for d in model.delivery_definitions}[relaxed.definition]
    assert definition.encryption_mode is EncryptionMode.RELAXED and definition.managed
    after = hand_written.read_text(encoding="utf-8")
    assert 'domain = "bank.example"     # our bank: strict only' in after


def test_route_and_organisation_edits_touch_their_lines_only(hand_written: Path) -> None:
    bundle = Bundle.load(hand_written)
    bundle.add_route("MX2.acme.example", 2525)
    bundle.set_organisation(internal_domains=["acme.example", "acme-group.example"])
    bundle.save()
    removed, added = _diff(HAND_WRITTEN, hand_written.read_text(encoding="utf-8"))
    assert removed == ['internal_domains = ["acme.example"]   # our only mail domain']
    assert added == [
        'internal_domains = ["acme.example", "acme-group.example"]   # our only mail domain',
        "", "[[inbound_routes]]", 'host = "mx2.acme.example"', "port = 2525",
    ]


def test_update_route_drops_what_validation_learned(hand_written: Path) -> None:
    bundle = Bundle.load(hand_written)
    bundle.update_route("mx1.acme.example", 25, "mx1.acme.example", 587)
    route = bundle.model.inbound_routes[0]
    assert (route.host, route.port, route.encryption_mode) == ("mx1.acme.example", 587, None)
    bundle.record_route_validation("mx1.acme.example", 587,
                                   LastValidation(ValidationStatus.RELAXED, AT, "self-signed"),
                                   EncryptionMode.RELAXED)
    route = bundle.model.inbound_routes[0]
    assert route.encryption_mode is EncryptionMode.RELAXED
    assert route.last_validation is not None and route.last_validation.reason == "self-signed"
    bundle.record_route_validation("mx1.acme.example", 587,
                                   LastValidation(ValidationStatus.UNSUPPORTED, AT, "no TLS"),
                                   None)
    assert bundle.model.inbound_routes[0].encryption_mode is None


def test_new_bundle_is_created_on_first_save(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "bundle.toml"
    bundle = Bundle.load_or_new(path)
    assert bundle.model.external_domains == () and not path.exists()
    bundle.add_domains(["partner.example"], at=AT)
    bundle.save()
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# connectwiz policy bundle")
    assert "schema_version = 1" in text and not text.endswith("\n\n")
    assert not path.with_name("bundle.toml.bak").exists()  # nothing to back up
    again = Bundle.load(path).model
    assert [d.domain for d in again.external_domains] == ["partner.example"]
