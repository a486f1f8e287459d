"""`connectwiz routes list|add|remove`: the internal servers inbound mail is delivered to.

``add`` of a route already present is noted on stderr and is not a failure; ``remove`` of an
unknown route is an error and removes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys

from connectwiz.bundle import Bundle, resolve_bundle_path, route_key, route_label
from connectwiz.errors import UserError
from connectwiz.policy.model import InboundRoute
from connectwiz.probe.options import parse_host_port


def _row(r: InboundRoute) -> str:
    lv = r.last_validation
    checked = f"{lv.status} ({lv.at:%Y-%m-%d %H:%M}Z)" if lv else "not validated"
    return f"{route_label(r.host, r.port)}\t{r.encryption_mode or '-'}\t{checked}"


def _keys(items: list[str], action: str) -> list[tuple[str, int]]:
    if not items:
        raise UserError(f"routes {action}: give at least one HOST[:PORT]")
    return [route_key(*parse_host_port(item, 25)) for item in items]


def run(args: argparse.Namespace) -> int:
    path = resolve_bundle_path(args.bundle)
    if args.action == "list":
        bundle = Bundle.load(path)
        if args.json:
            print(json.dumps(bundle.to_json()["inbound_routes"], indent=2))
        else:
            for r in bundle.model.inbound_routes:
                print(_row(r))
        return 0
    keys = _keys(args.items, args.action)
    done: list[tuple[str, int]] = []
    if args.action == "add":
        bundle = Bundle.load_or_new(path)
        present = {(r.host, r.port) for r in bundle.model.inbound_routes}
        for key in keys:
            if key in present or key in done:
                print(f"connectwiz: {route_label(*key)} is already configured", file=sys.stderr)
                continue
            done.append(bundle.add_route(*key))
    else:
        bundle = Bundle.load(path)
        for key in dict.fromkeys(keys):
            bundle.remove_route(*key)
            done.append(key)
    if done:
        bundle.save()
    verb = "added" if args.action == "add" else "removed"
    if args.json:
        print(json.dumps({verb: [{"host": h, "port": p} for h, p in done]}, indent=2))
    else:
        for key in done:
            print(f"{verb} {route_label(*key)}")
    return 0
