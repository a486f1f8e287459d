"""MTA-STS on delivery (RFC 8461), end to end: lab DNS, the lab's HTTPS policy server, lab MX.

Lab publications (connectwiz.lab.zones.MTA_STS_PAGES): trusted.example enforce (its MX is
trusted), sts-relaxed.example enforce (self-signed MX), sts-mismatch.example enforce (patterns
miss the MX), sts-testing.example testing. Some tests change a page for their duration
(``served``): the lab is shared, so they put the original back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from connectwiz.lab import LabHandle
from connectwiz.lab.https import Page
from connectwiz.relay.published import ABSENT_TTL, StsCache

from .conftest import (
    NO_TLS,
    OPPORTUNISTIC,
    RELAXED,
    body,
    lab_messages,
    make_model,
    send,
    token,
    wait_lab,
)
from .test_delivery import _sent_anything

pytestmark = pytest.mark.network


@contextlib.contextmanager
def served(lab: LabHandle, domain: str, page: Page) -> Iterator[None]:
    """Serve ``page`` as ``domain``'s policy until the block ends."""
    pages = lab.lab.policy_server.pages
    host = f"mta-sts.{domain}"
    old = pages[host]
    pages[host] = page
    try:
        yield
    finally:
        pages[host] = old


def policy(mode: str, *mx: str) -> Page:
    return Page("".join(f"{line}\r\n" for line in
                        ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx),
                         "max_age: 86400"]).encode())


async def _send(r, domain: str) -> tuple[str, str]:
    tag = token()
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [f"rcpt-{tag}@{domain}"], body(tag))
    return msg_id, tag


async def test_enforce_with_an_untrusted_mx_defers_instead_of_opportunistic_delivery(
        lab, relays) -> None:
    r = await relays(make_model(lab))  # no bundle policy: the default Opportunistic TLS
    msg_id, tag = await _send(r, "sts-relaxed.example")
    record = await r.wait_status(msg_id, "deferred")
    attempt = record.attempts[0]
    assert attempt["decided_by"] == "mta-sts" and attempt["policy_type"] == "sts"
    assert attempt["policy_domain"] == "sts-relaxed.example"
    assert attempt["policy_failure"] == "certificate-not-trusted"
    assert "self-signed" in attempt["error"] and "self-signed" in attempt["policy_detail"]
    assert not _sent_anything(lab, tag), "MTA-STS enforce must not fall back to plaintext"


async def test_enforce_never_connects_to_an_mx_outside_the_patterns(lab, relays) -> None:
    r = await relays(make_model(lab))
    msg_id, tag = await _send(r, "sts-mismatch.example")
    record = await r.wait_status(msg_id, "deferred")
    attempt = record.attempts[0]
    assert "matches no mx pattern" in attempt["error"]
    assert attempt["policy_failure"] == "validation-failure"
    assert attempt["tls_version"] is None and not _sent_anything(lab, tag)


async def test_enforce_with_a_trusted_listed_mx_delivers_verified(lab, relays) -> None:
    r = await relays(make_model(lab))
    msg_id, _tag = await _send(r, "trusted.example")
    record = await r.wait_status(msg_id, "delivered")
    [attempt] = record.attempts
    assert attempt["decided_by"] == "mta-sts" and attempt["certificate_verified"] is True
    assert attempt["definition"] == "MTA-STS enforce (trusted.example)"
    assert attempt["policy_failure"] == ""


async def test_testing_mode_delivers_as_before_and_records_the_failure(lab, relays) -> None:
    with served(lab, "sts-relaxed.example", policy("testing", "mx.sts-relaxed.example")):
        r = await relays(make_model(lab))
        msg_id, tag = await _send(r, "sts-relaxed.example")
        record = await r.wait_status(msg_id, "delivered")
    [attempt] = record.attempts
    assert attempt["tls_version"] is not None  # opportunistic: the self-signed MX is used
    assert attempt["policy_type"] == "sts" and attempt["decided_by"] == "bundle"
    assert attempt["policy_failure"] == "certificate-not-trusted"
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)


async def test_testing_mode_records_an_mx_outside_the_patterns(lab, relays) -> None:
    r = await relays(make_model(lab))
    with served(lab, "sts-testing.example", policy("testing", "mx.elsewhere.example")):
        msg_id, _ = await _send(r, "sts-testing.example")
        record = await r.wait_status(msg_id, "delivered")
    [attempt] = record.attempts
    assert attempt["policy_failure"] == "validation-failure"
    assert "matches no mx pattern" in attempt["policy_detail"]


async def test_cached_policy_survives_a_failing_refresh_and_a_restart(lab, relays, tmp_path,
                                                                      event_log) -> None:
    spool = tmp_path / "spool"
    r = await relays(make_model(lab), spool=spool)
    cache = r.relay.deliverer.published.sts
    cache.refresh_after = 0  # every use of the cached policy refreshes it in the background
    first, _ = await _send(r, "sts-relaxed.example")
    await r.wait_status(first, "deferred")
    with served(lab, "sts-relaxed.example", Page(b"gone", 404)):
        second, tag = await _send(r, "sts-relaxed.example")
        record = await r.wait_status(second, "deferred")
        await cache.wait_refreshed()
        assert "HTTP 404" in cache.problem("sts-relaxed.example")  # the refresh did fail
        events = event_log.events()
        assert any(e["event"] == "mta-sts-refresh-failed" and e["kept"] == "enforce"
                   for e in events)
        assert cache.cached("sts-relaxed.example").policy.mode == "enforce"
        assert record.attempts[0]["decided_by"] == "mta-sts"
        await r.relay.stop()
        # A restart reads the cache from the spool: still enforced, the page still gone.
        r2 = await relays(make_model(lab), spool=spool)
        third, tag3 = await _send(r2, "sts-relaxed.example")
        record = await r2.wait_status(third, "deferred")
        assert record.attempts[0]["decided_by"] == "mta-sts"
        # Without a cached policy the failed fetch means "no policy": delivered as before.
        r3 = await relays(make_model(lab), spool=tmp_path / "fresh")
        fourth, _tag4 = await _send(r3, "sts-relaxed.example")
        record = await r3.wait_status(fourth, "delivered")
        assert record.attempts[0]["policy_type"] == "no-policy-found"
    assert not _sent_anything(lab, tag) and not _sent_anything(lab, tag3)


async def test_bundle_enforced_relaxed_wins_over_published_enforce(lab, relays) -> None:
    r = await relays(make_model(lab, delivery={"sts-relaxed.example": RELAXED}))
    msg_id, _ = await _send(r, "sts-relaxed.example")
    record = await r.wait_status(msg_id, "delivered")
    [attempt] = record.attempts
    assert attempt["decided_by"] == "bundle" and attempt["definition"] == RELAXED.name
    assert attempt["policy_type"] == "sts"


async def test_bundle_no_tls_wins_over_published_enforce(lab, relays) -> None:
    r = await relays(make_model(lab, delivery={"trusted.example": NO_TLS}))
    msg_id, tag = await _send(r, "trusted.example")
    record = await r.wait_status(msg_id, "delivered")
    [attempt] = record.attempts
    assert attempt["tls_version"] is None and attempt["decided_by"] == "bundle"
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    assert lab_messages(lab, tag)[0].tls_version is None


async def test_explicit_opportunistic_is_raised_by_published_enforce(lab, relays) -> None:
    r = await relays(make_model(lab, delivery={"sts-relaxed.example": OPPORTUNISTIC}))
    msg_id, _ = await _send(r, "sts-relaxed.example")
    record = await r.wait_status(msg_id, "deferred")
    assert record.attempts[0]["decided_by"] == "mta-sts"


async def test_dane_is_ignored_without_a_named_dnssec_resolver(lab, relays) -> None:
    # dane-bad.example's TLSA names another key, with the AD bit; the relay was not told to
    # trust any resolver's AD bit, so delivery is opportunistic as before.
    r = await relays(make_model(lab))
    msg_id, _ = await _send(r, "dane-bad.example")
    record = await r.wait_status(msg_id, "delivered")
    assert record.attempts[0]["policy_type"] == "no-policy-found"


async def test_cache_uses_a_policy_until_max_age_then_lets_it_go(lab, lab_network_options
                                                                 ) -> None:
    now = [1_000_000.0]
    cache = StsCache(lab_network_options, clock=lambda: now[0])
    first = await cache.policy("sts-relaxed.example")
    assert first is not None and first.policy.max_age == 86400
    with served(lab, "sts-relaxed.example", Page(b"broken", 500)):
        now[0] += 86400 - 1  # a day less a second: stale (refreshed in the background), valid
        assert await cache.policy("sts-relaxed.example") is first
        await cache.wait_refreshed()
        assert cache.cached("sts-relaxed.example").fetched == first.fetched  # refresh failed
        now[0] += 2  # past max_age: the failed fetch now means "no policy"
        assert await cache.policy("sts-relaxed.example") is None
        assert "HTTP 500" in cache.problem("sts-relaxed.example")
    now[0] += ABSENT_TTL  # the page is back: fetched again once "absent" has lapsed
    assert (await cache.policy("sts-relaxed.example")).policy.mode == "enforce"
    await cache.close()
