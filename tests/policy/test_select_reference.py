"""The index gives the same answer as a brute-force reading of the rules, on random models.

The reference below is written from the rules in docs/policy-selection.md, independently of
connectwiz.policy.select: a linear scan, plain string tests, no index.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from connectwiz.policy.model import (
    Applies,
    BasedOn,
    DeliveryPolicy,
    ReceiptOption,
    ReceiptPolicy,
    Scope,
    Validity,
)
from connectwiz.policy.select import MessageContext, Outcome, PolicyIndex
from tests.policy.select_helpers import AT, ENFORCED, model

DOMAINS = ["example.com", "sub.example.com", "partner.example", "other.test"]
ADDRESSES = [f"{local}@{domain}" for local in ("a", "b") for domain in DOMAINS]
GROUPS = ["g1", "g2", "g3"]  # g3 is never defined
NETWORKS = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")]
IPS = [None, "192.0.2.5", "198.51.100.1", "2001:db8::1", "2001:db9::1", "::ffff:192.0.2.5"]
TIMES = [AT - timedelta(days=1), AT, AT + timedelta(days=1), AT + timedelta(days=2)]
LEVEL = [
    Applies.EVERYONE, Applies.INTERNAL, Applies.ADDRESS_GROUP, Applies.DOMAIN, Applies.INDIVIDUAL
]


def _level(applies: Applies) -> int:
    return LEVEL.index(Applies.INTERNAL if applies is Applies.EXTERNAL else applies)


def _keyed(applies: Applies, pool: list[str]) -> st.SearchStrategy[Scope]:
    entries = st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True)
    return st.builds(lambda e, b: Scope(applies, tuple(e), b), entries, st.sampled_from(BasedOn))


scopes = st.one_of(
    st.builds(lambda a, b: Scope(a, (), b),
              st.sampled_from([Applies.EVERYONE, Applies.INTERNAL, Applies.EXTERNAL]),
              st.sampled_from(BasedOn)),
    _keyed(Applies.DOMAIN, DOMAINS),
    _keyed(Applies.INDIVIDUAL, ADDRESSES),
    _keyed(Applies.ADDRESS_GROUP, GROUPS),
)
# Most policies are plainly in effect, so that rankings among several get exercised.
always = st.builds(Validity, override=st.booleans(), bidirectional=st.booleans())
validities = always | always | st.builds(
    Validity,
    enabled=st.booleans() | st.just(True),
    start=st.sampled_from([None, *TIMES]),
    end=st.sampled_from([None, *TIMES]),
    override=st.booleans(),
    bidirectional=st.booleans(),
    source_ips=st.sampled_from([(), (NETWORKS[0],), (NETWORKS[1],), tuple(NETWORKS)]),
)
groups = st.fixed_dictionaries({
    g: st.lists(st.sampled_from(ADDRESSES), max_size=3).map(tuple) for g in GROUPS[:2]
})
internals = st.lists(st.sampled_from(["example.com", "partner.example"]), max_size=2, unique=True)


def _shout(address: str, upper: bool) -> str:
    return address.upper() if upper else address


messages = st.builds(
    lambda env, hdr, rcpt, ip, at, upper: MessageContext(
        _shout(env, upper), hdr, _shout(rcpt, upper),
        None if ip is None else ipaddress.ip_address(ip), at),
    st.sampled_from(["", *ADDRESSES]),
    st.none() | st.sampled_from(ADDRESSES),
    st.sampled_from(ADDRESSES),
    st.sampled_from(IPS),
    st.sampled_from(TIMES),
    st.booleans(),
)


# --- the reference -----------------------------------------------------------------------


def ref_scope(scope: Scope, address: str, internal: list[str], grp: dict) -> bool:
    if scope.applies is Applies.EVERYONE:
        return True
    if address == "":
        return False
    domain = address.split("@")[1]
    is_internal = any(domain == d or domain.endswith("." + d) for d in internal)
    return {
        Applies.INTERNAL: is_internal,
        Applies.EXTERNAL: not is_internal,
        Applies.DOMAIN: domain in scope.specifically,
        Applies.INDIVIDUAL: address in scope.specifically,
        Applies.ADDRESS_GROUP: any(address in grp.get(g, ()) for g in scope.specifically),
    }[scope.applies]


def ref_in_effect(v: Validity, ctx: MessageContext) -> bool:
    if not v.enabled or (v.start and ctx.at < v.start) or (v.end and ctx.at >= v.end):
        return False
    if not v.source_ips:
        return True
    ip = ctx.client_ip
    if ip is not None and ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip is not None and any(ip.version == n.version and ip in n for n in v.source_ips)


def ref_select(policies, ctx: MessageContext, internal, grp):
    """(winning position or None, {position: in effect?}) for every matching policy."""
    env = ctx.envelope_from.lower()
    hdr = env if ctx.header_from is None else ctx.header_from.lower()
    rcpt = ctx.recipient.lower()
    matched, best = {}, None
    for pos, p in enumerate(policies, start=1):
        senders = {BasedOn.ENVELOPE: [env], BasedOn.HEADER: [hdr], BasedOn.BOTH: [env, hdr]}[
            p.from_.based_on]
        direct = ref_scope(p.to, rcpt, internal, grp) and any(
            ref_scope(p.from_, s, internal, grp) for s in senders)
        swapped = p.validity.bidirectional and ref_scope(p.from_, rcpt, internal, grp) and any(
            ref_scope(p.to, s, internal, grp) for s in senders)
        if not (direct or swapped):
            continue
        matched[pos] = ref_in_effect(p.validity, ctx)
        if matched[pos]:
            key = (p.validity.override, _level(p.from_.applies), _level(p.to.applies), -pos)
            if best is None or key > best[0]:
                best = (key, pos)
    return (None if best is None else best[1]), matched


def _observed(decision):
    in_effect = {Outcome.APPLIES, Outcome.LOST}
    matched = {c.position: c.outcome in in_effect for c in decision.candidates}
    win = [c.position for c in decision.candidates if c.outcome is Outcome.APPLIES]
    return (win[0] if win else None), matched


@settings(max_examples=200, deadline=None)
@given(
    specs=st.lists(st.tuples(scopes, scopes, validities), max_size=8),
    ctx=messages, grp=groups, internal=internals,
)
def test_delivery_index_agrees_with_reference(specs, ctx, grp, internal):
    policies = [DeliveryPolicy(f"p{i}", ENFORCED.name, f, t, v)
                for i, (f, t, v) in enumerate(specs)]
    m = model(*policies, internal=tuple(internal), groups=grp)
    decision = PolicyIndex(m).delivery(ctx)
    assert _observed(decision) == ref_select(policies, ctx, internal, grp)
    expected = None if decision.policy is None else policies.index(decision.policy) + 1
    assert _observed(decision)[0] == expected


@settings(max_examples=200, deadline=None)
@given(
    specs=st.lists(st.tuples(scopes, scopes, validities), max_size=8),
    ctx=messages, grp=groups, internal=internals,
)
def test_receipt_index_agrees_with_reference(specs, ctx, grp, internal):
    policies = [ReceiptPolicy(f"p{i}", ReceiptOption.ENFORCED, f, t, v)
                for i, (f, t, v) in enumerate(specs)]
    m = model(receipt=tuple(policies), internal=tuple(internal), groups=grp)
    decision = PolicyIndex(m).receipt(ctx)
    assert _observed(decision) == ref_select(policies, ctx, internal, grp)
