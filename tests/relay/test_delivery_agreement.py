"""Delivery does what validate predicted, through the one SMTP client and the one certificate
judgement (issue 11; issue 14 item 2): lab servers as the next hop, the relay in process."""

from __future__ import annotations

import pytest

from connectwiz.probe import Status, Target, validate_targets
from connectwiz.probe.certs import trust_store
from connectwiz.relay.deliver import Target as HostTarget
from connectwiz.relay.deliver import attempt_host, client_context

from .conftest import STRICT, body, lab_messages, make_model, send, token, wait_lab

pytestmark = pytest.mark.network


async def test_starttls_injection_never_turns_a_refusal_into_a_delivery(lab, relays) -> None:
    """The server refuses the recipient (550); plaintext injected after its STARTTLS 220 says
    250 ... "fake: queued". The relay must bounce, never log the message delivered."""
    lab.add_sink(["inject.relay.example"], "starttlsinject")
    r = await relays(make_model(lab, delivery={"inject.relay.example": STRICT}))
    tag = token()
    rcpt = f"rcpt-{tag}@inject.relay.example"
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [rcpt], body(tag))
    record = await r.wait_status(msg_id, "bounced", "delivered")
    assert record.status == "bounced"
    assert all(a["outcome"] != "delivered" for a in record.attempts)
    assert record.attempts[0]["rcpt_replies"][rcpt].startswith("550 5.1.1")


async def test_critical_subject_alt_name_is_delivered_under_strict_as_validated(
        lab, relays, lab_network_options) -> None:
    lab.add_sink(["sancrit.relay.example"], "sancritical")
    (verdict,) = await validate_targets([Target.domain("sancrit.relay.example")],
                                        lab_network_options)
    assert verdict.status == Status.STRICT, verdict.reason
    r = await relays(make_model(lab, delivery={"sancrit.relay.example": STRICT}))
    tag = token()
    msg_id = await send(r.port, f"alice-{tag}@corp.example",
                        [f"rcpt-{tag}@sancrit.relay.example"], body(tag))
    record = await r.wait_status(msg_id, "delivered", "deferred")
    assert record.status == "delivered", record.attempts
    assert record.attempts[-1]["certificate_verified"] is True
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)


async def test_non_ascii_recipient_without_smtputf8_is_refused_for_good(lab) -> None:
    """The shared client never writes a non-ASCII command unannounced: the lab servers do not
    offer SMTPUTF8, so the recipient fails permanently (as Postfix bounces it) and nothing
    after EHLO over TLS is sent."""
    host = "mx.trusted.example"
    before = len(lab.sessions_to(host))
    target = HostTarget(host, lab.address_of(host), lab.smtp_port)
    att = await attempt_host(target, STRICT, client_context(STRICT), "alice@corp.example",
                             ["prøbe@trusted.example"], b"Subject: x\r\n\r\nbody\r\n",
                             "relay.corp.example", 5.0, trust=trust_store(lab.ca_file))
    assert att.outcome == "permanent"
    assert att.error == ("SMTPUTF8 is required: prøbe@trusted.example is not ASCII and the "
                         "server does not offer SMTPUTF8")
    assert await wait_lab(lab, lambda: all(s.closed for s in lab.sessions_to(host)))
    (session,) = lab.sessions_to(host)[before:]
    assert [c.split()[0] for c in session.commands] == ["EHLO", "STARTTLS", "EHLO", "QUIT"]


async def test_mx_whose_address_lookup_fails_is_skipped_on_delivery(lab, relays) -> None:
    """validate calls such a domain strict (its other MX works); the relay delivers there."""
    lab.lab.zone.add_servfail("broken.servfail.relay.example.")
    for record in ("10 broken.servfail.relay.example.", "20 mx.trusted.example."):
        lab.lab.zone.add("servfail.relay.example.", "MX", record)
    r = await relays(make_model(lab, delivery={"servfail.relay.example": STRICT}))
    tag = token()
    msg_id = await send(r.port, f"alice-{tag}@corp.example",
                        [f"rcpt-{tag}@servfail.relay.example"], body(tag))
    record = await r.wait_status(msg_id, "delivered", "deferred")
    assert record.status == "delivered", record.events
    assert record.attempts[-1]["host"] == "mx.trusted.example"


async def test_delivery_waits_the_greeting_timeout_and_says_so(lab) -> None:
    host = "mx.tarpit.example"  # accepts the connection, never greets
    target = HostTarget(host, lab.address_of(host), lab.smtp_port)
    att = await attempt_host(target, STRICT, client_context(STRICT), "alice@corp.example",
                             ["bob@tarpit.example"], b"x\r\n", "relay.corp.example", 5.0,
                             greeting_timeout=0.5)
    assert att.outcome == "temporary"
    assert att.error == "greeting not received within 0.5 s"
