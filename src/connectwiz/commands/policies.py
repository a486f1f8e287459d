"""`connectwiz policies list|show|add|enable|disable|remove`: delivery, receipt, secure and
bypass policies and the delivery and secure definitions, one entry at a time.

An entry is named by its narrative (policies) or name (definitions), or by its number as
``list`` shows it (``#2``). ``add`` takes KEY=VALUE pairs in the bundle's own keys, values in
TOML; the edited bundle is validated as a whole and saved atomically, or left unchanged.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import tomlkit

from connectwiz.bundle import Bundle, resolve_bundle_path
from connectwiz.bundle.policies import (
    KINDS,
    Kind,
    add,
    entries_of,
    find,
    parse_assignments,
    set_enabled,
)
from connectwiz.bundle.policies import remove as remove_entry
from connectwiz.errors import UserError


def _kind(args: argparse.Namespace, required: bool = True) -> Kind | None:
    if args.kind is None:
        if required:
            raise UserError(f"policies {args.action}: give a kind ({', '.join(KINDS)})")
        return None
    return KINDS[args.kind]


def _summary(kind: Kind, item: dict[str, Any]) -> str:
    if kind.section == "delivery_definitions":
        mode = f" ssl_mode={item['ssl_mode']}" if "ssl_mode" in item else ""
        return f"{item['option']} {item['encryption_mode']} min_tls={item['min_tls']}{mode}"
    if kind.section == "secure_definitions":
        return f"expiry {item['expiry_days']} days" if item["expiry_days"] != "never" \
            else "never expires"
    what = item.get("definition") or item.get("option") or "take no action"
    scope = f"from {_scope(item['from'])} to {_scope(item['to'])}"
    flags = "" if item["enabled"] else " [disabled]"
    return f"{what}; {scope}{' [managed]' if item.get('managed') else ''}{flags}"


def _scope(scope: dict[str, Any]) -> str:
    names = scope.get("specifically", [])
    if not names:
        return scope["applies"]
    more = f" +{len(names) - 3}" if len(names) > 3 else ""
    return f"{scope['applies']} {', '.join(names[:3])}{more}"


def _list(args: argparse.Namespace) -> int:
    model = Bundle.load(resolve_bundle_path(args.bundle)).model
    only = _kind(args, required=False)
    kinds = [only] if only else list(KINDS.values())
    if args.json:
        print(json.dumps({k.name: entries_of(model, k) for k in kinds}, indent=2,
                         ensure_ascii=False))
        return 0
    for kind in kinds:
        for number, item in enumerate(entries_of(model, kind), 1):
            print(f"{kind.name}\t#{number}\t{item[kind.key]}\t{_summary(kind, item)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    kind = _kind(args)
    assert kind is not None
    model = Bundle.load(resolve_bundle_path(args.bundle)).model
    item = entries_of(model, kind)[find(model, kind, _one_ref(args))]
    if args.json:
        print(json.dumps(item, indent=2, ensure_ascii=False))
    else:  # the entry as it would be written in the bundle
        doc = tomlkit.document()
        doc.append(kind.section, tomlkit.aot())
        doc[kind.section].append(item)
        print(doc.as_string().strip())
    return 0


def _one_ref(args: argparse.Namespace) -> str:
    if len(args.items) != 1:
        raise UserError(f"policies {args.action}: give one NAME (or #NUMBER)")
    return args.items[0]


def _add(args: argparse.Namespace) -> int:
    kind = _kind(args)
    assert kind is not None
    if not args.items:
        raise UserError(f"policies add {kind.name}: give KEY=VALUE pairs, e.g. "
                        f"{kind.key}=\"...\"")
    data = parse_assignments(args.items)
    bundle = Bundle.load_or_new(resolve_bundle_path(args.bundle))
    number = add(bundle, kind, data)
    bundle.save()
    print(f"added {kind.label} #{number} {data[kind.key]!r}")
    return 0


def _switch(args: argparse.Namespace) -> int:
    kind = _kind(args)
    assert kind is not None
    bundle = Bundle.load(resolve_bundle_path(args.bundle))
    enabled = args.action == "enable"
    number, changed = set_enabled(bundle, kind, _one_ref(args), enabled)
    if changed:
        bundle.save()
    state = "enabled" if enabled else "disabled"
    print(f"{kind.label} #{number} {state}" if changed else
          f"{kind.label} #{number} was already {state}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    kind = _kind(args)
    assert kind is not None
    bundle = Bundle.load(resolve_bundle_path(args.bundle))
    item = remove_entry(bundle, kind, _one_ref(args))
    bundle.save()
    print(f"removed {kind.label} {item[kind.key]!r}")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"list": _list, "show": _show, "add": _add, "enable": _switch,
            "disable": _switch, "remove": _remove}[args.action](args)
