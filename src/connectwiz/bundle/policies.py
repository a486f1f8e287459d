"""Policies and definitions edited one entry at a time (``connectwiz policies``, the wizard's
counts): which bundle section each kind lives in, finding an entry by name or number, and
the checks that give a clear reason before an edit the bundle would refuse anyway.

Every edit goes through the Bundle (tomlkit: comments and layout elsewhere survive) and is
validated as a whole before it is saved, so a bad ``add`` fails with the bundle's own error
(key path and problem) and leaves the file as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tomli

from connectwiz.bundle.data import (
    definition_data,
    delivery_policy_data,
    receipt_policy_data,
    secure_data,
    secure_definition_data,
)
from connectwiz.bundle.errors import BundleError
from connectwiz.bundle.store import Bundle
from connectwiz.errors import UserError
from connectwiz.policy.model import PolicyModel


@dataclass(frozen=True, slots=True)
class Kind:
    name: str  # as typed on the command line
    section: str  # the bundle's array of tables
    label: str  # for messages: "delivery policy"
    key: str  # the entry's name: narrative or name
    switch: bool  # has an enabled flag


KINDS = {k.name: k for k in (
    Kind("delivery", "delivery_policies", "delivery policy", "narrative", True),
    Kind("receipt", "receipt_policies", "receipt policy", "narrative", True),
    Kind("secure", "secure_policies", "secure policy", "narrative", True),
    Kind("bypass", "secure_bypass", "secure bypass policy", "narrative", True),
    Kind("definition", "delivery_definitions", "delivery definition", "name", False),
    Kind("secure-definition", "secure_definitions", "secure definition", "name", False),
)}


def entries_of(model: PolicyModel, kind: Kind) -> list[dict[str, Any]]:
    """The kind's entries as plain data (JSON-safe), in bundle order."""
    if kind.section == "delivery_policies":
        return [delivery_policy_data(p, True) for p in model.delivery_policies]
    if kind.section == "receipt_policies":
        return [receipt_policy_data(p, True) for p in model.receipt_policies]
    if kind.section == "delivery_definitions":
        return [definition_data(d) for d in model.delivery_definitions]
    if kind.section == "secure_definitions":
        return [secure_definition_data(d) for d in model.secure_definitions]
    return list(secure_data(model, True)[kind.section])


def counts(model: PolicyModel) -> dict[str, int]:
    """Entries per kind (the wizard's Start screen). Each section is a model field of the
    same name, so nothing is converted (the managed lists can be long)."""
    return {name: len(getattr(model, kind.section)) for name, kind in KINDS.items()}


def find(model: PolicyModel, kind: Kind, ref: str) -> int:
    """The index of the entry named ``ref``, or numbered ``#N`` (1-based, as ``list`` shows)."""
    items = entries_of(model, kind)
    if ref.startswith("#") and ref[1:].isdigit():
        number = int(ref[1:])
        if not 1 <= number <= len(items):
            raise UserError(f"there is no {kind.label} #{number} (the bundle has "
                            f"{len(items)}; see `connectwiz policies list {kind.name}`)")
        return number - 1
    found = [i for i, item in enumerate(items) if item[kind.key] == ref]
    if not found:
        names = ", ".join(repr(item[kind.key]) for item in items) or "none"
        raise UserError(f"no {kind.label} is named {ref!r} (there are: {names})")
    if len(found) > 1:
        numbers = " or ".join(f"#{i + 1}" for i in found)
        raise UserError(f"{len(found)} {kind.label} entries are named {ref!r}: give its "
                        f"number ({numbers})")
    return found[0]


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` arguments: VALUE in TOML (``true``, ``30``, ``["a", "b"]``,
    ``{ applies = "domain", specifically = ["x.example"] }``); anything that is not valid
    TOML is taken as a plain string, so ``narrative=Bank mail`` needs no quotes."""
    data: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"{pair!r}: give KEY=VALUE (e.g. narrative=\"Bank\")")
        if key in data:
            raise UserError(f"{key!r} is given twice")
        try:
            data[key] = tomli.loads(f"v = {text}")["v"]
        except tomli.TOMLDecodeError:
            data[key] = text
    return data


def _check(bundle: Bundle, what: str) -> None:
    """Validate the edited bundle; a problem becomes one line naming the key."""
    try:
        bundle.model  # noqa: B018 - rebuilding the model validates the edit
    except BundleError as exc:
        raise UserError(f"{what}: {exc.key + ': ' if exc.key else ''}{exc.problem}; "
                        f"the bundle is unchanged") from None


def add(bundle: Bundle, kind: Kind, data: dict[str, Any]) -> int:
    """Append an entry; returns its number. Nothing is saved when it does not validate."""
    if kind.key not in data:
        raise UserError(f"policies add {kind.name}: give {kind.key}=...")
    if data.get("managed") is True:
        raise UserError("managed = true is for the policies connectwiz keeps in step with "
                        "the external domains (`connectwiz domains add`)")
    bundle.append_entry(kind.section, data)
    _check(bundle, f"policies add {kind.name}")
    return len(entries_of(bundle.model, kind))


def set_enabled(bundle: Bundle, kind: Kind, ref: str, enabled: bool) -> tuple[int, bool]:
    """(number, changed)."""
    if not kind.switch:
        raise UserError(f"a {kind.label} has no enabled switch: enable or disable the "
                        f"policies that use it")
    index = find(bundle.model, kind, ref)
    if entries_of(bundle.model, kind)[index]["enabled"] is enabled:
        return index + 1, False
    bundle.set_entry_key(kind.section, index, "enabled", enabled)
    _check(bundle, "policies " + ("enable" if enabled else "disable"))
    return index + 1, True


def remove(bundle: Bundle, kind: Kind, ref: str) -> dict[str, Any]:
    """Remove an entry; returns what it was."""
    model = bundle.model
    index = find(model, kind, ref)
    item = entries_of(model, kind)[index]
    if item.get("managed"):
        raise UserError(f"{kind.label} {item[kind.key]!r} is managed by connectwiz for the "
                        f"external domains: remove those with `connectwiz domains remove`")
    users = _users(model, kind, item[kind.key])
    if users:
        raise UserError(f"{kind.label} {item[kind.key]!r} is used by {', '.join(users)}: "
                        f"remove or change those first")
    bundle.delete_entry(kind.section, index)
    _check(bundle, "policies remove")
    return item


def _users(model: PolicyModel, kind: Kind, name: str) -> list[str]:
    if kind.section == "delivery_definitions":
        return [f"delivery policy #{i + 1} {p.narrative!r}"
                for i, p in enumerate(model.delivery_policies) if p.definition == name]
    if kind.section == "secure_definitions":
        return ([f"secure policy #{i + 1} {p.narrative!r}"
                 for i, p in enumerate(model.secure_policies) if p.definition == name]
                + [f"secure trigger #{i + 1} {t.narrative!r}"
                   for i, t in enumerate(model.secure_triggers) if t.definition == name])
    return []
