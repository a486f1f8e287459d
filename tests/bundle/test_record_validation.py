"""Recording validation results keeps the cached model and domain index in step with the
document (they are patched, not rebuilt, so that the wizard's "Validate all" stays fast)."""

from datetime import UTC, datetime, timedelta

from connectwiz.bundle import Bundle
from connectwiz.policy.model import EncryptionMode, LastValidation, ValidationStatus

T0 = datetime(2026, 11, 23, 9, 0, 0, 123456, tzinfo=UTC)


def _bundle() -> Bundle:
    b = Bundle.from_text("schema_version = 1\n")
    b.add_domains(["a.example", "b.example", "xn--bcher-kva.example"], at=T0)
    b.add_domains(["c.example"], mode=EncryptionMode.RELAXED, at=T0)
    return b


def test_patched_model_equals_a_rebuild_from_the_document() -> None:
    b = _bundle()
    assert b.model.external_domains  # the cached model exists before the records
    b.record_domain_validation("b.example", LastValidation(ValidationStatus.STRICT, T0, "ok"))
    b.record_domain_validation("Bücher.example",
                               LastValidation(ValidationStatus.RELAXED, T0, "self-signed"))
    b.record_domain_validation("b.example",
                               LastValidation(ValidationStatus.ERROR, T0 + timedelta(1), "x"))
    rebuilt = Bundle.from_text(b.to_toml()).model
    assert b.model == rebuilt
    by_name = {x.domain: x.last_validation for x in b.model.external_domains}
    assert by_name["b.example"] == LastValidation(ValidationStatus.ERROR,
                                                  (T0 + timedelta(1)).replace(microsecond=0), "x")
    assert by_name["a.example"] is None


def test_index_follows_additions_and_removals_between_records() -> None:
    b = _bundle()
    b.record_domain_validation("a.example", LastValidation(ValidationStatus.STRICT, T0, ""))
    b.remove_domains(["a.example"])
    b.add_domains(["d.example"], at=T0)
    b.record_domain_validation("d.example", LastValidation(ValidationStatus.STRICT, T0, "d"))
    b.record_domain_validation("c.example", LastValidation(ValidationStatus.RELAXED, T0, "c"))
    assert b.model == Bundle.from_text(b.to_toml()).model
    lv = {x.domain: x.last_validation for x in b.model.external_domains}
    assert lv["d.example"].reason == "d" and lv["c.example"].reason == "c"
    assert "a.example" not in lv
