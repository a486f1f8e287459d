"""The policy model back to plain data: what the bundle, its JSON export and the
``policies`` command write (the opposite direction of ``bundle.schema``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from connectwiz.bundle.keys import (
    DIRECTORY_DEFAULTS,
    DIRECTORY_KEYS,
    SCHEMA_VERSION,
    SECURE_SCHEMA_VERSION,
    WORDING_COLOUR_KEYS,
    WORDING_TEXT_KEYS,
)
from connectwiz.policy.model import (
    ConditionField,
    ConditionKind,
    DeliveryDefinition,
    DeliveryPolicy,
    DirectorySettings,
    ExternalDomain,
    InboundRoute,
    LastValidation,
    PolicyModel,
    ReceiptPolicy,
    Scope,
    SecureBypass,
    SecureCondition,
    SecureDefinition,
    SecurePolicy,
    SecureRouting,
    SecureTrigger,
    Validity,
)
from connectwiz.policy.wording import Wording


def _when(value: datetime, json_safe: bool) -> datetime | str:
    if not json_safe:
        return value
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _validation(lv: LastValidation, json_safe: bool) -> dict[str, Any]:
    return {"status": lv.status.value, "at": _when(lv.at, json_safe), "reason": lv.reason}


def _scope(scope: Scope, side: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if side == "from":
        out["based_on"] = scope.based_on.value
    out["applies"] = scope.applies.value
    if scope.specifically:
        out["specifically"] = list(scope.specifically)
    return out


def _validity(v: Validity, json_safe: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"enabled": v.enabled}
    if v.start is not None:
        out["start"] = _when(v.start, json_safe)
    if v.end is not None:
        out["end"] = _when(v.end, json_safe)
    out.update(override=v.override, bidirectional=v.bidirectional,
               source_ips=[str(n) for n in v.source_ips])
    return out


def route_data(r: InboundRoute, json_safe: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"host": r.host, "port": r.port}
    if r.encryption_mode is not None:
        out["encryption_mode"] = r.encryption_mode.value
    if r.last_validation is not None:
        out["last_validation"] = _validation(r.last_validation, json_safe)
    return out


def domain_data(d: ExternalDomain, json_safe: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"domain": d.domain}
    if d.added is not None:
        out["added"] = _when(d.added, json_safe)
    out["encryption_mode"] = d.encryption_mode.value
    if d.last_validation is not None:
        out["last_validation"] = _validation(d.last_validation, json_safe)
    return out


def definition_data(d: DeliveryDefinition) -> dict[str, Any]:
    out: dict[str, Any] = {"name": d.name, "option": d.option.value,
                           "encryption_mode": d.encryption_mode.value, "min_tls": d.min_tls}
    if d.ssl_mode is not None:
        out["ssl_mode"] = d.ssl_mode.value
    if d.managed:
        out["managed"] = True
    return out


def delivery_policy_data(p: DeliveryPolicy, json_safe: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"narrative": p.narrative, "definition": p.definition}
    if p.managed:
        out["managed"] = True
    return _scoped(out, p, json_safe)


def receipt_policy_data(p: ReceiptPolicy, json_safe: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"narrative": p.narrative, "option": p.option.value}
    if p.managed:
        out["managed"] = True
    if p.client_certificate is not None:
        out["client_certificate"] = p.client_certificate.file
    return _scoped(out, p, json_safe)


def secure_definition_data(d: SecureDefinition) -> dict[str, Any]:
    out: dict[str, Any] = {"name": d.name}
    if d.description:
        out["description"] = d.description
    out.update(allow_print=d.allow_print, allow_reply=d.allow_reply,
               allow_reply_all=d.allow_reply_all,
               expiry_days="never" if d.expiry_days is None else d.expiry_days,
               max_extension_days=d.max_extension_days, read_receipt=d.read_receipt)
    if d.banner is not None:
        out["banner"] = d.banner
    if d.routing is not SecureRouting.EXTERNAL:
        out["routing"] = d.routing.value
    if not d.requesters.everyone:
        who = d.requesters
        out["may_request"] = {k: list(v) for k, v in (
            ("groups", who.groups), ("domains", who.domains), ("addresses", who.addresses)) if v}
    return out


def _wording_data(w: Wording) -> dict[str, str]:
    """Only what differs from connectwiz's own wording, so the defaults can improve."""
    default = Wording()
    out = {}
    for key in (*WORDING_COLOUR_KEYS, *WORDING_TEXT_KEYS):
        field_name = "banner" if key == "default_banner" else key
        if getattr(w, field_name) != getattr(default, field_name):
            out[key] = getattr(w, field_name)
    return out


def _condition_data(c: SecureCondition) -> dict[str, Any]:
    if c.field is ConditionField.HEADER:
        return {"header": c.header, "equals": c.value}
    out: dict[str, Any]
    if c.field in (ConditionField.ATTACHMENT_NAME, ConditionField.ATTACHMENT_TYPE):
        out = {c.field.value: c.value}
    elif c.kind is ConditionKind.DICTIONARY:
        out = {"dictionary": list(c.terms), "in": c.field.value, "threshold": c.threshold}
        if not c.whole_word:
            out["whole_word"] = False
    else:
        out = {f"{c.field.value}_{c.kind.value}": c.value}
        if c.whole_word:
            out["whole_word"] = True
    if c.case_sensitive:
        out["case_sensitive"] = True
    return out


def _scoped(out: dict[str, Any],
            p: DeliveryPolicy | ReceiptPolicy | SecurePolicy | SecureTrigger | SecureBypass,
            json_safe: bool) -> dict[str, Any]:
    """``out`` followed by the policy's validity keys and its From and To scopes."""
    out.update(_validity(p.validity, json_safe))
    out["from"] = _scope(p.from_, "from")
    out["to"] = _scope(p.to, "to")
    return out


def secure_data(model: PolicyModel, json_safe: bool = False) -> dict[str, Any]:
    """The Secure Messaging sections (schema v2)."""
    policies = []
    for p in model.secure_policies:
        head: dict[str, Any] = {"narrative": p.narrative}
        if p.definition is None:
            head["take_no_action"] = True
        else:
            head["definition"] = p.definition
        policies.append(_scoped(head, p, json_safe))
    return {
        "secure_messaging": {"max_retention_days": model.secure_settings.max_retention_days,
                             "subject_tag": model.secure_settings.subject_tag,
                             "tag_definition": model.secure_settings.tag_definition,
                             **_wording_data(model.secure_settings.wording)},
        "secure_definitions": [secure_definition_data(d) for d in model.secure_definitions],
        "secure_policies": policies,
        "secure_triggers": [
            _scoped({"narrative": t.narrative, "definition": t.definition, "match": t.match.value,
                     "conditions": [_condition_data(c) for c in t.conditions]}, t, json_safe)
            for t in model.secure_triggers],
        "secure_bypass": [_scoped({"narrative": b.narrative, "option": b.option.value}, b,
                                  json_safe) for b in model.secure_bypass],
    }


def directory_data(d: DirectorySettings) -> dict[str, Any]:
    """The [directory] section: url and base_dn, then whatever differs from the defaults."""
    out: dict[str, Any] = {"url": d.url, "base_dn": d.base_dn}
    for key in DIRECTORY_KEYS[2:]:
        value = getattr(d, key)
        if value != getattr(DIRECTORY_DEFAULTS, key):
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def model_data(model: PolicyModel, json_safe: bool = False) -> dict[str, Any]:
    """The model in schema v1 shape, or v2 when it uses Secure Messaging. ``json_safe``
    turns date-times into ISO 8601 ``Z`` strings; otherwise they stay datetimes (for TOML)."""
    org = model.organisation
    secure = model.uses_secure_messaging
    return {
        "schema_version": SECURE_SCHEMA_VERSION if secure else SCHEMA_VERSION,
        "organisation": {
            "internal_domains": list(org.internal_domains),
            "authorized_outbound": [str(n) for n in org.authorized_outbound],
            "address_groups": {k: list(v) for k, v in org.address_groups.items()},
            # Written only when set, so bundles without them round-trip unchanged.
            **({"name": org.name} if org.name else {}),
            **({"logo": org.logo} if org.logo else {}),
        },
        **({"directory": directory_data(model.directory)} if model.directory else {}),
        "inbound_routes": [route_data(r, json_safe) for r in model.inbound_routes],
        "external_domains": [domain_data(d, json_safe) for d in model.external_domains],
        "delivery_definitions": [definition_data(d) for d in model.delivery_definitions],
        "delivery_policies": [delivery_policy_data(p, json_safe)
                              for p in model.delivery_policies],
        "receipt_policies": [receipt_policy_data(p, json_safe) for p in model.receipt_policies],
        **(secure_data(model, json_safe) if secure else {}),
    }
