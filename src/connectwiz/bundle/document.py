"""Edits on the tomlkit document: new entries, and the managed policies kept in step with the
external domains.

Edits change only the tables they concern, so comments, key order and blank lines elsewhere
survive. Domains in the document are already normalised (it was validated before editing).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import tomlkit
from tomlkit.items import AoT, Array, InlineTable, Item, Table, Trivia
from tomlkit.toml_document import TOMLDocument

from connectwiz.bundle.data import (
    definition_data,
    delivery_policy_data,
    model_data,
    receipt_policy_data,
)
from connectwiz.bundle.keys import (
    SCHEMA_VERSION,
)
from connectwiz.bundle.split import Document, DomainRun, Entry, SplitDocument
from connectwiz.errors import UserError
from connectwiz.policy.domains import is_normal_domain, normalize_domain
from connectwiz.policy.model import (
    Applies,
    DeliveryDefinition,
    DeliveryOption,
    DeliveryPolicy,
    EncryptionMode,
    LastValidation,
    PolicyModel,
    ReceiptOption,
    ReceiptPolicy,
    Scope,
)

STRICT_DEFINITION = "Enforced TLS - Strict"
RELAXED_DEFINITION = "Enforced TLS - Relaxed"
DELIVERY_NARRATIVE = {
    EncryptionMode.STRICT: "Enforced TLS to partners",
    EncryptionMode.RELAXED: "Enforced TLS to partners (relaxed)",
}
DEFINITION_NAME = {EncryptionMode.STRICT: STRICT_DEFINITION,
                   EncryptionMode.RELAXED: RELAXED_DEFINITION}
RECEIPT_NARRATIVE = "Enforced TLS from partners"
HEADER = (
    "connectwiz policy bundle: edit by hand or with `connectwiz` (the wizard, `domains`,",
    "`routes`, `org`). Policies with `managed = true` are kept in step with [[external_domains]].",
)
_INLINE_LIMIT = 4  # longer `specifically` lists get their own table, one entry a line


def stamp(at: datetime) -> datetime:
    """Times are stored in UTC to the second: readable, and equal after a round trip."""
    if at.tzinfo is None:
        raise ValueError("a time without a UTC offset")
    return at.astimezone(UTC).replace(microsecond=0)


def _value(value: Any, multiline: bool = False) -> Item:
    if isinstance(value, dict):
        inline = tomlkit.inline_table()
        for key, item in value.items():
            inline.append(key, _value(item))
        return inline
    if isinstance(value, list):
        if multiline and value:
            # Built in one go: Array.append re-indexes the whole array each time (O(n²) for
            # a 10k-domain managed list). The multi-line form adds its own separators.
            return Array([tomlkit.item(x) for x in value], Trivia(), multiline=True)
        inline = tomlkit.array()
        inline.extend(value)
        return inline
    return tomlkit.item(value)


def array(items: list[str], multiline: bool = False) -> Array:
    result = _value(items, multiline)
    assert isinstance(result, Array)
    return result


def make_table(data: dict[str, Any], subtables: Iterable[str] = ()) -> Table:
    """A table for one array entry; keys in ``subtables`` become ``[name.key]`` tables with
    multi-line arrays, the rest stay on one line each (dicts as inline tables)."""
    subs = [key for key in subtables if key in data]
    table = tomlkit.table()
    for key, value in data.items():
        if key not in subs:
            table.add(key, _value(value))
    for key in subs:
        sub = tomlkit.table()
        for k, v in data[key].items():
            sub.add(k, _value(v, multiline=True))
        table.add(key, sub)
    return table


def _reparsed(section: str, table: Table) -> Table:
    """The same entry as tomlkit would parse it (ending in a blank line): parsed tables keep
    keys added later above that blank line, built ones would put them below it."""
    doc = tomlkit.document()
    doc.append(section, tomlkit.aot())
    doc[section].append(table)
    return tomlkit.parse(doc.as_string().strip("\n") + "\n\n")[section][0]


def append_entry(doc: Document, section: str, table: Table) -> None:
    """Append to ``[[section]]`` (created at the end of the document if absent), with one
    blank line before and after, whatever the previous entry ended with."""
    if not entries(doc, section):
        if section in doc:  # an empty `section = []` written by hand
            del doc[section]
        doc.append(section, tomlkit.aot())
    aot = doc[section]
    if len(aot):
        before = aot[-1].as_string()
    elif isinstance(aot, DomainRun) and isinstance(doc, SplitDocument):
        before = doc.head.as_string()  # an emptied run keeps its place in the file
    else:
        before = doc.as_string()
    entry = _reparsed(section, table)
    aot.append(entry)
    entry.trivia.indent = "" if before.endswith("\n\n") else "\n"


def add_table(doc: Document, name: str) -> Table:
    """A new empty ``[name]`` table at the end of the document."""
    before = doc.as_string()
    table = tomlkit.parse(f"[{name}]\n\n")[name]
    doc.append(name, table)
    doc[name].trivia.indent = "" if before.endswith("\n\n") else "\n"
    return doc[name]


def delete_entries(doc: Document, section: str, indexes: Iterable[int]) -> None:
    aot = doc[section]
    for i in sorted(set(indexes), reverse=True):
        del aot[i]
    if not len(aot):
        del doc[section]


def entries(doc: Document, section: str) -> AoT | DomainRun | list[Table]:
    found = doc.get(section, [])
    if found and not isinstance(found, AoT | DomainRun):  # e.g. `external_domains = [{...}]`
        raise UserError(f"{section} is written as an inline array; write each entry as a "
                        f"[[{section}]] table so connectwiz can edit it")
    return found


def domain_of(entry: Table | Entry) -> str:
    """The entry's domain, normalised (a hand-written entry may say 'Bank.Example.').
    Edits look up every entry this way, so names already normal skip the IDNA work."""
    domain = str(entry["domain"])
    return domain if is_normal_domain(domain) else normalize_domain(domain)


def validation_table(lv: LastValidation) -> InlineTable:
    inline = _value({"status": lv.status.value, "at": stamp(lv.at), "reason": lv.reason})
    assert isinstance(inline, InlineTable)
    return inline


def _policy_subtables(data: dict[str, Any], managed_side: str | None) -> list[str]:
    return [side for side in ("from", "to")
            if side == managed_side or len(data[side].get("specifically", ())) > _INLINE_LIMIT]


def new_document() -> TOMLDocument:
    doc = tomlkit.document()
    for line in HEADER:
        doc.add(tomlkit.comment(line))
    doc.add("schema_version", SCHEMA_VERSION)
    return doc


def model_text(model: PolicyModel) -> str:
    """A fresh bundle text for a model (tests, benchmarks, generated bundles)."""
    doc = new_document()
    data = model_data(model)
    doc["schema_version"] = data["schema_version"]  # 2 when Secure Messaging is used
    org = data["organisation"]
    if any(org.values()):
        table = tomlkit.table()
        for key in ("internal_domains", "authorized_outbound"):
            table.add(key, _value(org[key]))
        for key in ("name", "logo"):  # the portal's branding, only when set
            if org.get(key):
                table.add(key, org[key])
        if org["address_groups"]:
            table.add("address_groups", _value(org["address_groups"]))
        doc.append("organisation", table)
    if "directory" in data:
        doc.append("directory", make_table(data["directory"]))
    for section in ("inbound_routes", "external_domains", "delivery_definitions"):
        if data[section]:
            doc.append(section, AoT([make_table(x) for x in data[section]]))
    for section, side in (("delivery_policies", "to"), ("receipt_policies", "from")):
        policies = getattr(model, section)
        if policies:
            doc.append(section, AoT([
                make_table(x, _policy_subtables(x, side if p.managed else None))
                for p, x in zip(policies, data[section], strict=True)
            ]))
    if model.uses_secure_messaging:
        doc.append("secure_messaging", make_table(data["secure_messaging"]))
        for section in ("secure_definitions", "secure_policies", "secure_triggers",
                        "secure_bypass"):
            if data[section]:
                doc.append(section, AoT([make_table(x) for x in data[section]]))
    return doc.as_string()


# Managed policies -------------------------------------------------------------------------


def _managed_delivery_policy(mode: EncryptionMode, names: list[str]) -> Table:
    policy = DeliveryPolicy(
        narrative=DELIVERY_NARRATIVE[mode], definition=DEFINITION_NAME[mode],
        to=Scope(Applies.DOMAIN, tuple(names)), managed=True,
    )
    data = delivery_policy_data(policy)
    compact = {k: data[k] for k in ("narrative", "definition", "managed", "enabled", "override",
                                    "from", "to")}
    return make_table(compact, ["to"])


def _managed_receipt_policy(names: list[str]) -> Table:
    policy = ReceiptPolicy(
        narrative=RECEIPT_NARRATIVE, option=ReceiptOption.ENFORCED,
        from_=Scope(Applies.DOMAIN, tuple(names)), to=Scope(Applies.INTERNAL), managed=True,
    )
    data = receipt_policy_data(policy)
    compact = {k: data[k] for k in ("narrative", "option", "managed", "enabled", "override",
                                    "to", "from")}
    return make_table(compact, ["from"])


def _set_list(scope: Table | InlineTable, names: list[str]) -> None:
    current = [str(x) for x in scope.get("specifically", [])]
    if current != names:
        scope["specifically"] = array(names, multiline=isinstance(scope, Table))


def _definition_modes(doc: Document) -> dict[str, str]:
    return {str(d["name"]): str(d.get("encryption_mode", "strict"))
            for d in entries(doc, "delivery_definitions")}


def check_definition(doc: Document, mode: EncryptionMode) -> None:
    """Refuse (before any change) when the managed definition's name is taken by a
    definition with another encryption mode."""
    name = DEFINITION_NAME[mode]
    found = _definition_modes(doc).get(name)
    if found is not None and found != mode.value:
        raise UserError(f"delivery definition {name!r} has encryption_mode = '{found}', not "
                        f"'{mode}'; rename it so connectwiz can create its own")


def _ensure_definition(doc: Document, mode: EncryptionMode) -> str:
    check_definition(doc, mode)
    name = DEFINITION_NAME[mode]
    if name in _definition_modes(doc):
        return name
    definition = DeliveryDefinition(name, DeliveryOption.ENFORCED, mode, "1.2", managed=True)
    append_entry(doc, "delivery_definitions", make_table(definition_data(definition)))
    return name


def _sync_delivery(doc: Document, mode: EncryptionMode, names: list[str]) -> None:
    modes = _definition_modes(doc)
    policies = entries(doc, "delivery_policies")
    found = next((i for i, p in enumerate(policies) if p.get("managed") is True
                  and modes.get(str(p["definition"]), "strict") == mode.value), None)
    if found is None:
        if names:
            _ensure_definition(doc, mode)
            append_entry(doc, "delivery_policies", _managed_delivery_policy(mode, names))
    elif names:
        _set_list(policies[found]["to"], names)
    else:
        delete_entries(doc, "delivery_policies", [found])


def _sync_receipt(doc: Document, names: list[str]) -> None:
    policies = entries(doc, "receipt_policies")
    found = next((i for i, p in enumerate(policies) if p.get("managed") is True), None)
    if found is None:
        if names:
            append_entry(doc, "receipt_policies", _managed_receipt_policy(names))
    elif names:
        _set_list(policies[found]["from"], names)
    else:
        delete_entries(doc, "receipt_policies", [found])


def _drop_unused_definitions(doc: Document) -> None:
    used = {str(p["definition"]) for p in entries(doc, "delivery_policies")}
    unused = [i for i, d in enumerate(entries(doc, "delivery_definitions"))
              if d.get("managed") is True and str(d["name"]) not in used]
    if unused:
        delete_entries(doc, "delivery_definitions", unused)


def sync_managed(doc: Document) -> None:
    """Make the managed policies list exactly the external domains: create them (and their
    definitions) on first need, update their sorted lists, delete them when a list empties.
    Hand-written policies (no ``managed = true``) are never touched."""
    by_mode: dict[EncryptionMode, list[str]] = {m: [] for m in EncryptionMode}
    for entry in entries(doc, "external_domains"):
        by_mode[EncryptionMode(str(entry.get("encryption_mode", "strict")))].append(
            domain_of(entry))
    for mode in EncryptionMode:
        _sync_delivery(doc, mode, sorted(by_mode[mode]))
    _sync_receipt(doc, sorted(by_mode[EncryptionMode.STRICT] + by_mode[EncryptionMode.RELAXED]))
    _drop_unused_definitions(doc)
