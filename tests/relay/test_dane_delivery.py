"""DANE on delivery (RFC 7672), end to end: the relay trusts the AD bit of the lab's name
server (``--dnssec-resolver``), which sets it on the lab's TLSA answers (lab.runner._add_tlsa:
dane-ok.example and trusted.example match their MX, dane-bad.example names another key)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from datetime import UTC, datetime

import dns.name
import dns.rdatatype
import jsonschema
import pytest

from connectwiz.lab import LabHandle
from connectwiz.lab.zones import DANE_ALIAS_TARGET
from connectwiz.probe.options import NetworkOptions
from connectwiz.relay.published import PublishedPolicies
from connectwiz.relay.tlsrpt import TlsRptStore, build_report

from .conftest import OPPORTUNISTIC, STRICT, body, lab_messages, make_model, send, token, wait_lab
from .test_delivery import _sent_anything
from .tlsrpt_schema import TLSRPT_SCHEMA

pytestmark = pytest.mark.network


@pytest.fixture
def lab_network_options(lab: LabHandle, lab_network_options: NetworkOptions) -> NetworkOptions:
    """The relays of this module name the lab's name server as their validating resolver."""
    return replace(lab_network_options, dnssec_resolver=lab.nameserver)


async def _send(r, domain: str) -> tuple[str, str]:
    tag = token()
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [f"rcpt-{tag}@{domain}"], body(tag))
    return msg_id, tag


async def test_matching_tlsa_delivers_authenticated_by_dane(lab, relays) -> None:
    r = await relays(make_model(lab))
    msg_id, tag = await _send(r, "dane-ok.example")
    record = await r.wait_status(msg_id, "delivered")
    [attempt] = record.attempts
    assert attempt["decided_by"] == "dane" and attempt["policy_type"] == "tlsa"
    assert attempt["certificate_verified"] is True
    assert attempt["definition"] == "DANE (TLSA at _25._tcp.mx.dane-ok.example)"
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)


async def test_tlsa_not_matching_defers_even_with_a_trusted_certificate(lab, relays) -> None:
    r = await relays(make_model(lab))
    msg_id, tag = await _send(r, "dane-bad.example")
    record = await r.wait_status(msg_id, "deferred")
    attempt = record.attempts[0]
    assert attempt["decided_by"] == "dane" and attempt["policy_failure"] == "validation-failure"
    assert "no TLSA record at _25._tcp.mx.dane-bad.example matches" in attempt["error"]
    assert not _sent_anything(lab, tag)


async def test_dane_takes_precedence_over_mta_sts(lab, relays) -> None:
    # trusted.example publishes both: DANE decides for its MX, as RFC 8461 §2 asks.
    r = await relays(make_model(lab))
    msg_id, _ = await _send(r, "trusted.example")
    record = await r.wait_status(msg_id, "delivered")
    assert record.attempts[0]["policy_type"] == "tlsa"


async def test_bundle_enforced_policy_wins_over_dane(lab, relays) -> None:
    r = await relays(make_model(lab, delivery={"dane-bad.example": STRICT}))
    msg_id, _ = await _send(r, "dane-bad.example")
    record = await r.wait_status(msg_id, "delivered")
    assert record.attempts[0]["decided_by"] == "bundle"


async def test_tlsa_without_the_ad_bit_is_ignored(lab, relays) -> None:
    # The same mismatching records, answered without AD: not validated, so behaviour as today.
    name = dns.name.from_text("_25._tcp.mx.dane-bad.example.")
    authenticated = lab.lab.zone.authenticated
    authenticated.discard(name)
    try:
        r = await relays(make_model(lab))
        msg_id, _ = await _send(r, "dane-bad.example")
        record = await r.wait_status(msg_id, "delivered")
    finally:
        authenticated.add(name)
    attempt = record.attempts[0]
    assert attempt["policy_type"] == "no-policy-found" and attempt["decided_by"] == "bundle"


async def test_tlsa_is_ignored_when_the_mx_lookup_is_not_validated(lab, relays) -> None:
    # RFC 7672 §2.2.1: validated TLSA of an MX name learnt insecurely does not count.
    name = dns.name.from_text("dane-bad.example.")
    authenticated = lab.lab.zone.authenticated
    authenticated.discard(name)
    try:
        r = await relays(make_model(lab))
        msg_id, _ = await _send(r, "dane-bad.example")
        record = await r.wait_status(msg_id, "delivered")
    finally:
        authenticated.add(name)
    assert record.attempts[0]["policy_type"] == "no-policy-found"


async def test_an_unanswered_validated_mx_lookup_defers_rather_than_downgrades(
        lab_network_options) -> None:
    # The validating resolver does not answer (nothing listens there): the host is refused,
    # as Postfix defers, instead of silently dropping DANE.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        silent = s.getsockname()
        options = replace(lab_network_options, dnssec_resolver=silent, timeout=0.5)
        plan = await PublishedPolicies(options).plan("dane-ok.example", OPPORTUNISTIC,
                                                     ["mx.dane-ok.example"])
    _, published = plan["mx.dane-ok.example"]
    assert published.refuse.startswith("DANE: DNSSEC lookup of MX for dane-ok.example failed")
    assert published.failure_type == "dnssec-invalid"


# -- a domain without MX records is its own MX (RFC 7672 §2.2.1-2.2.2) -------------------------


async def test_implicit_mx_with_matching_tlsa_is_delivered_under_dane(lab, relays) -> None:
    r = await relays(make_model(lab))
    msg_id, tag = await _send(r, "dane-nomx.example")
    record = await r.wait_status(msg_id, "delivered")
    [attempt] = record.attempts
    assert attempt["host"] == "dane-nomx.example"
    assert attempt["decided_by"] == "dane" and attempt["policy_type"] == "tlsa"
    assert attempt["definition"] == "DANE (TLSA at _25._tcp.dane-nomx.example)"
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)


async def test_implicit_mx_with_mismatching_tlsa_defers(lab, relays) -> None:
    # The host's certificate is from the lab CA: only DANE can refuse it.
    r = await relays(make_model(lab))
    msg_id, tag = await _send(r, "dane-nomx-bad.example")
    record = await r.wait_status(msg_id, "deferred")
    attempt = record.attempts[0]
    assert attempt["decided_by"] == "dane" and attempt["policy_failure"] == "validation-failure"
    assert "no TLSA record at _25._tcp.dane-nomx-bad.example matches" in attempt["error"]
    assert not _sent_anything(lab, tag)


async def test_implicit_mx_without_validated_address_ignores_tlsa(lab, relays) -> None:
    # §2.2.2: TLSA of a host whose address records are insecure does not count.
    name = dns.name.from_text("dane-nomx-bad.example.")
    authenticated = lab.lab.zone.authenticated
    authenticated.discard(name)
    try:
        r = await relays(make_model(lab))
        msg_id, _ = await _send(r, "dane-nomx-bad.example")
        record = await r.wait_status(msg_id, "delivered")
    finally:
        authenticated.add(name)
    assert record.attempts[0]["policy_type"] == "no-policy-found"


async def test_implicit_mx_behind_a_cname_uses_the_tlsa_of_the_expanded_name(
        lab, relays) -> None:
    # dane-alias.example is a CNAME; its only TLSA records are at the target's name.
    r = await relays(make_model(lab))
    msg_id, tag = await _send(r, "dane-alias.example")
    record = await r.wait_status(msg_id, "delivered")
    [attempt] = record.attempts
    assert attempt["host"] == "dane-alias.example" and attempt["decided_by"] == "dane"
    assert attempt["definition"] == \
        f"DANE (TLSA at _25._tcp.{DANE_ALIAS_TARGET})"
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)


async def test_implicit_mx_cname_falls_back_to_the_tlsa_of_the_original_name(
        lab, lab_network_options) -> None:
    # §2.2.2: no TLSA at the expanded name (a CNAME made for this test) -> the original's.
    tag = token()
    alias, target = f"alias-{tag}.example", f"target-{tag}.example"
    zone = lab.lab.zone  # changed from this thread at once (add_record is asynchronous)
    zone.add(f"{alias}.", "CNAME", f"{target}.")
    zone.add(f"{target}.", "A", lab.address_of("dane-nomx.example"))
    zone.add(f"_25._tcp.{alias}.", "TLSA", "3 1 1 " + "ab" * 32)
    for name in (f"{alias}.", f"_25._tcp.{alias}."):
        zone.authenticated.add(dns.name.from_text(name))
    plan = await PublishedPolicies(lab_network_options).plan(alias, OPPORTUNISTIC, [alias])
    _, published = plan[alias]
    assert published.decided_by == "dane" and published.tlsa is not None
    assert published.tlsa.name == f"_25._tcp.{alias}"
    assert published.policy_string == ("3 1 1 " + "AB" * 32,)


async def test_tlsa_report_names_the_records_applied(lab, relays) -> None:
    """TLS-RPT for a DANE destination: policy type tlsa, the TLSA records in presentation
    form as the policy-string; a mismatch is a failure with the MX host and IP."""
    r = await relays(make_model(lab))
    ok_id, _ = await _send(r, "dane-ok.example")
    bad_id, _ = await _send(r, "dane-bad.example")
    await r.wait_status(ok_id, "delivered")
    await r.wait_status(bad_id, "deferred")
    await asyncio.to_thread(r.relay.tlsrpt.flush)
    counts = await asyncio.to_thread(TlsRptStore(r.spool).counts,
                                     datetime.now(UTC).date().isoformat())
    validator = jsonschema.Draft202012Validator(TLSRPT_SCHEMA)

    def tlsa_of(host: str) -> list[str]:
        return [f"{rd.usage} {rd.selector} {rd.mtype} {rd.cert.hex().upper()}"
                for rd in lab.lab.zone.rrset(dns.name.from_text(f"_25._tcp.{host}."),
                                             dns.rdatatype.TLSA)]

    ok = build_report(counts, "dane-ok.example")
    validator.validate(ok)
    [policy] = ok["policies"]
    assert policy["policy"] == {"policy-type": "tlsa",
                                "policy-string": tlsa_of("mx.dane-ok.example"),
                                "policy-domain": "dane-ok.example"}
    assert policy["summary"]["total-successful-session-count"] == 1

    bad = build_report(counts, "dane-bad.example")
    validator.validate(bad)
    [policy] = bad["policies"]
    assert policy["policy"]["policy-string"] == tlsa_of("mx.dane-bad.example")
    [failure] = policy["failure-details"]
    assert failure["result-type"] == "validation-failure"
    assert failure["receiving-mx-hostname"] == "mx.dane-bad.example"
    assert failure["receiving-ip"] == lab.address_of("mx.dane-bad.example")
