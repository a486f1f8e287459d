"""`connectwiz domains list|add|remove`: the external domains under enforced TLS.

``add`` follows the wizard's rules (parse_domain_batch) without its per-batch limit: the good
domains are added even when others are rejected; each rejected one is reported on stderr and
the exit code is 1. Only when nothing could be added because of bad input is it 2. Domains
already in the bundle are noted, not counted as failures, so scripts can re-run ``add``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from connectwiz.bundle import Bundle, resolve_bundle_path
from connectwiz.errors import UserError
from connectwiz.policy.domains import (
    InvalidDomain,
    Rejection,
    display_domain,
    normalize_domain,
    parse_domain_batch,
)
from connectwiz.policy.model import EncryptionMode, ExternalDomain


def _row(d: ExternalDomain) -> str:
    lv = d.last_validation
    checked = f"{lv.status} ({lv.at:%Y-%m-%d %H:%M}Z)" if lv else "not validated"
    shown = display_domain(d.domain)
    name = d.domain if shown == d.domain else f"{d.domain} ({shown})"
    return f"{name}\t{d.encryption_mode}\t{checked}"


def _list(args: argparse.Namespace) -> int:
    bundle = Bundle.load(resolve_bundle_path(args.bundle))
    if args.json:
        print(json.dumps(bundle.to_json()["external_domains"], indent=2, ensure_ascii=False))
    else:
        for d in bundle.model.external_domains:
            print(_row(d))
    return 0


def _add(args: argparse.Namespace) -> int:
    if not any(item.strip() for item in args.items):
        raise UserError("domains add: give at least one DOMAIN")
    bundle = Bundle.load_or_new(resolve_bundle_path(args.bundle))
    existing = {d.domain for d in bundle.model.external_domains}
    lines = parse_domain_batch("\n".join(args.items), existing, limit=len(args.items))
    accepted = [x.domain for x in lines if x.domain is not None]
    rejected = [x for x in lines if x.rejection is not None and x.rejection is not Rejection.EXISTS]
    present = [x for x in lines if x.rejection is Rejection.EXISTS]
    mode = EncryptionMode.RELAXED if args.relaxed else EncryptionMode.STRICT
    added = bundle.add_domains(accepted, mode=mode, at=datetime.now(UTC)) if accepted else []
    if added:
        bundle.save()
    for x in rejected:
        reason = "given twice" if x.rejection is Rejection.DUPLICATE else x.reason
        print(f"connectwiz: skipped {x.text.strip()!r}: {reason}", file=sys.stderr)
    for x in present:
        print(f"connectwiz: {x.text.strip()!r} is already configured", file=sys.stderr)
    if args.json:
        print(json.dumps({
            "added": added, "mode": mode.value,
            "already_configured": [normalize_domain(x.text) for x in present],
            "rejected": [{"input": x.text, "reason": x.reason} for x in rejected],
        }, indent=2, ensure_ascii=False))
    else:
        for name in added:
            print(f"added {name} ({mode})")
    if rejected and not added and not present:
        return 2
    return 1 if rejected else 0


def _remove(args: argparse.Namespace) -> int:
    if not args.items:
        raise UserError("domains remove: give at least one DOMAIN")
    names = []
    for item in args.items:
        try:
            names.append(normalize_domain(item))
        except InvalidDomain as exc:
            raise UserError(f"{item!r} {exc.reason}") from None
    bundle = Bundle.load(resolve_bundle_path(args.bundle))
    removed = bundle.remove_domains(names)
    bundle.save()
    if args.json:
        print(json.dumps({"removed": removed}, indent=2))
    else:
        for name in removed:
            print(f"removed {name}")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"list": _list, "add": _add, "remove": _remove}[args.action](args)
