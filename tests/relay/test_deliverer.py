"""What the Deliverer keeps between deliveries: TLS contexts and DNS answers."""

from __future__ import annotations

import asyncio

import pytest

from connectwiz.relay.deliver import Deliverer

from .conftest import STRICT, body, lab_messages, make_model, send, token, wait_lab

pytestmark = pytest.mark.network


async def test_concurrent_first_deliveries_build_one_tls_context(lab_network_options) -> None:
    deliverer = Deliverer(lab_network_options, "relay.test")
    contexts = await asyncio.gather(*(deliverer._context(STRICT) for _ in range(20)))
    assert all(ctx is contexts[0] for ctx in contexts)  # one build, not twenty


def _mx_queries(lab, domain: str) -> int:
    return sum(1 for _, name, rdtype in list(lab.lab.dns.queries)
               if name == f"{domain}." and rdtype == "MX")


async def test_dns_answers_are_reused_within_their_ttl(lab, relays) -> None:
    r = await relays(make_model(lab, delivery={"trusted.example": STRICT}))
    tags = [token(), token()]
    before = _mx_queries(lab, "trusted.example")
    for tag in tags:  # one after the other: the second finds the first's answer cached
        msg_id = await send(r.port, f"alice-{tag}@corp.example", [f"rcpt-{tag}@trusted.example"],
                            body(tag))
        await r.wait_status(msg_id, "delivered")
    assert await wait_lab(lab, lambda: all(lab_messages(lab, t) for t in tags))
    assert _mx_queries(lab, "trusted.example") - before == 1  # the lab's TTL is 60 s
