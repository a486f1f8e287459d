"""`connectwiz org show|set`: internal domains and who may relay out.

``set`` replaces each list that is given (``--internal-domain`` and ``--authorized-outbound``
are repeatable) and leaves the other as it is.
"""

from __future__ import annotations

import argparse
import json

from connectwiz.bundle import Bundle, resolve_bundle_path
from connectwiz.errors import UserError


def run(args: argparse.Namespace) -> int:
    path = resolve_bundle_path(args.bundle)
    if args.action == "set":
        if args.internal_domain is None and args.authorized_outbound is None:
            raise UserError("org set: give --internal-domain and/or --authorized-outbound")
        bundle = Bundle.load_or_new(path)
        bundle.set_organisation(args.internal_domain, args.authorized_outbound)
        bundle.save()
    else:
        bundle = Bundle.load(path)
    org = bundle.to_json()["organisation"]
    if args.json:
        print(json.dumps(org, indent=2))
        return 0
    print(f"internal domains:     {', '.join(org['internal_domains']) or '(none)'}")
    print(f"authorized outbound:  {', '.join(org['authorized_outbound']) or '(none)'}")
    for name, members in org["address_groups"].items():
        print(f"address group {name}: {', '.join(members) or '(empty)'}")
    return 0
