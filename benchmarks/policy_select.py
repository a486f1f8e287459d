"""Policy selection speed: index build time and per-message selection time.

    .venv/bin/python benchmarks/policy_select.py [--domains 10000] [--messages 20000]

Two bundle shapes with N external domains, built in memory (no files):
  shared:     what connectwiz writes: one delivery and one receipt policy whose scope lists
              all N domains, plus an everyone fallback;
  one-each:   hand-written style: one delivery and one receipt policy per domain, plus a few
              everyone/internal policies, address groups and individual overrides.
Messages go to random listed domains, unlisted domains and internal addresses. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime

from connectwiz.policy.model import (
    Applies,
    DeliveryDefinition,
    DeliveryOption,
    DeliveryPolicy,
    Organisation,
    PolicyModel,
    ReceiptOption,
    ReceiptPolicy,
    Scope,
    Validity,
)
from connectwiz.policy.select import MessageContext, PolicyIndex

ENFORCED = DeliveryDefinition("Enforced TLS - Strict", DeliveryOption.ENFORCED)
INTERNAL = Scope(Applies.INTERNAL)


def shared_model(domains: list[str]) -> PolicyModel:
    listed = Scope(Applies.DOMAIN, tuple(domains))
    return PolicyModel(
        organisation=Organisation(internal_domains=("example.com",)),
        delivery_definitions=(ENFORCED,),
        delivery_policies=(DeliveryPolicy("managed", ENFORCED.name, to=listed),
                           DeliveryPolicy("everyone", ENFORCED.name)),
        receipt_policies=(ReceiptPolicy("managed", ReceiptOption.ENFORCED, from_=listed,
                                        to=INTERNAL),),
    )


def one_each_model(domains: list[str]) -> PolicyModel:
    groups = {f"team{i}": tuple(f"user{j}@example.com" for j in range(i, i + 50))
              for i in range(0, 500, 50)}
    delivery = [DeliveryPolicy(f"to {d}", ENFORCED.name, to=Scope(Applies.DOMAIN, (d,)))
                for d in domains]
    delivery += [
        DeliveryPolicy("everyone", ENFORCED.name),
        DeliveryPolicy("internal", ENFORCED.name, from_=INTERNAL),
        DeliveryPolicy("team0", ENFORCED.name, from_=Scope(Applies.ADDRESS_GROUP, ("team0",))),
        DeliveryPolicy("ceo", ENFORCED.name, from_=Scope(Applies.INDIVIDUAL,
                                                         ("user7@example.com",)),
                       validity=Validity(override=True, bidirectional=True)),
    ]
    receipt = [ReceiptPolicy(f"from {d}", ReceiptOption.ENFORCED,
                             from_=Scope(Applies.DOMAIN, (d,)), to=INTERNAL,
                             validity=Validity(bidirectional=True)) for d in domains]
    return PolicyModel(
        organisation=Organisation(internal_domains=("example.com",), address_groups=groups),
        delivery_definitions=(ENFORCED,),
        delivery_policies=tuple(delivery),
        receipt_policies=tuple(receipt),
    )


def messages(domains: list[str], n: int, rng: random.Random) -> list[MessageContext]:
    at = datetime.now(UTC)
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.6:
            sender, rcpt = f"user{rng.randrange(600)}@example.com", f"x@{rng.choice(domains)}"
        elif kind < 0.9:
            sender, rcpt = f"y@{rng.choice(domains)}", f"user{rng.randrange(600)}@example.com"
        else:
            sender, rcpt = "z@unlisted.example", f"w@other{rng.randrange(1000)}.example"
        out.append(MessageContext(sender, None, rcpt, None, at))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    rng = random.Random(1)
    domains = [f"partner{i:06d}.example" for i in range(args.domains)]
    sample = messages(domains, args.messages, rng)
    print(f"{args.domains} domains, {args.messages} messages (delivery + receipt each)")
    for name, build in (("shared", shared_model), ("one-each", one_each_model)):
        model = build(domains)
        started = time.perf_counter()
        index = PolicyIndex(model)
        built = time.perf_counter() - started
        times = []
        for ctx in sample:
            t0 = time.perf_counter()
            index.delivery(ctx)
            index.receipt(ctx)
            times.append(time.perf_counter() - t0)
        times.sort()
        policies = len(model.delivery_policies) + len(model.receipt_policies)
        print(f"  {name:9s} {policies:6d} policies  index build {built * 1000:7.1f} ms  "
              f"per message: median {times[len(times) // 2] * 1e6:6.1f} us, "
              f"p99 {times[int(len(times) * 0.99)] * 1e6:6.1f} us, "
              f"max {times[-1] * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
