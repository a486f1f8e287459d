"""Delivery end to end: relay in process, lab DNS (MX) and lab SMTP servers as the next hop."""

from __future__ import annotations

import asyncio
import email
import ipaddress
import json
from dataclasses import replace
from email import policy as email_policy

import pytest

from connectwiz.cli import main as cli_main
from connectwiz.policy.model import (
    Applies,
    BasedOn,
    DeliveryPolicy,
    EncryptionMode,
    InboundRoute,
    Scope,
    Validity,
)

from .conftest import (
    FAST,
    NO_TLS,
    OPPORTUNISTIC,
    RELAXED,
    STRICT,
    body,
    lab_messages,
    make_model,
    send,
    token,
    wait_lab,
)
from .test_process import HoldThenForward

pytestmark = pytest.mark.network


async def _deliver_one(lab, relays, domain: str, definition, *, settings=FAST):
    """Send one tagged message to ``domain`` under ``definition``; returns (relay, id, tag)."""
    r = await relays(make_model(lab, delivery={domain: definition}), settings)
    tag = token()
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [f"rcpt-{tag}@{domain}"], body(tag))
    return r, msg_id, tag


def _ehlo_names(lab, tag: str) -> list[str]:
    """The EHLO names in the lab sessions that carried this test's envelope."""
    return [c.split(" ", 1)[1] for s in list(lab.sessions) if any(tag in c for c in s.commands)
            for c in list(s.commands) if c.upper().startswith("EHLO ")]


async def _ending(r, event_log, msg_id: str) -> list[str]:
    """How the relay's work on ``msg_id`` ended, once it is idle: ["done"] when all went well
    (an unexpected error is logged as "error" and the message parked)."""
    await r.relay.idle()
    return [e["event"] for e in event_log.events()
            if e.get("id") == msg_id and e["event"] in ("done", "error", "deferred")]


def _sent_anything(lab, tag: str) -> bool:
    """Did any lab server see this test's envelope (MAIL FROM carries the tag)?"""
    return any(tag in c for s in list(lab.sessions) for c in list(s.commands))


async def test_opportunistic_to_server_without_starttls_delivers_plaintext(lab, relays) -> None:
    r, msg_id, tag = await _deliver_one(lab, relays, "nostarttls.example", OPPORTUNISTIC)
    record = await r.wait_status(msg_id, "delivered")
    [attempt] = record.attempts
    assert attempt["host"] == "mx.nostarttls.example" and attempt["tls_version"] is None
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    assert lab_messages(lab, tag)[0].tls_version is None
    assert _ehlo_names(lab, tag) == ["relay.corp.example"]  # the relay's host name


async def test_the_greeting_timeout_bounds_the_wait_for_a_silent_host(lab, relays,
                                                                     lab_network_options
                                                                     ) -> None:
    options = replace(lab_network_options, greeting_timeout=0.5)  # timeout stays longer
    r = await relays(make_model(lab, delivery={"tarpit.example": OPPORTUNISTIC}),
                     options=options)
    msg_id = await send(r.port, "alice@corp.example", ["bob@tarpit.example"], body(token()))
    record = await r.wait_status(msg_id, "deferred")
    assert record.attempts[0]["error"] == "greeting not received within 0.5 s"


async def test_enforced_strict_to_trusted_delivers_with_verified_tls(lab, relays) -> None:
    r, msg_id, tag = await _deliver_one(lab, relays, "trusted.example", STRICT)
    record = await r.wait_status(msg_id, "delivered")
    [attempt] = record.attempts
    assert attempt["certificate_verified"] is True
    assert attempt["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert attempt["definition"] == STRICT.name and attempt["address"] == "127.0.0.10"
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    message = lab_messages(lab, tag)[0]
    assert message.tls_version == attempt["tls_version"]
    assert message.rcpt_tos == (f"rcpt-{tag}@trusted.example",)
    # Dot-stuffing survived the trip; our Received: header is on top.
    assert b"\r\n.leading dot line\r\n" in message.data
    assert message.data.startswith(b"Received: from client.test ([127.0.0.1])")


async def test_enforced_strict_to_self_signed_defers(lab, relays) -> None:
    r, msg_id, tag = await _deliver_one(lab, relays, "selfsigned.example", STRICT)
    record = await r.wait_status(msg_id, "deferred")
    attempt = record.attempts[0]
    assert attempt["outcome"] == "temporary"
    # The same judgement as validate's, made right after the handshake, before MAIL FROM.
    assert "certificate is not accepted: certificate is self-signed" in attempt["error"]
    assert not _sent_anything(lab, tag), "enforced TLS must never fall back to plaintext"


async def test_enforced_relaxed_to_self_signed_delivers(lab, relays) -> None:
    r, msg_id, tag = await _deliver_one(lab, relays, "selfsigned.example", RELAXED)
    record = await r.wait_status(msg_id, "delivered")
    [attempt] = record.attempts
    assert attempt["tls_version"] is not None and attempt["certificate_verified"] is False
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    assert lab_messages(lab, tag)[0].tls_version is not None


async def test_none_delivers_without_tls_even_when_offered(lab, relays) -> None:
    r, msg_id, tag = await _deliver_one(lab, relays, "trusted.example", NO_TLS)
    record = await r.wait_status(msg_id, "delivered")
    assert record.attempts[0]["tls_version"] is None
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    assert lab_messages(lab, tag)[0].tls_version is None


async def test_enforced_to_server_without_starttls_defers(lab, relays) -> None:
    r, msg_id, tag = await _deliver_one(lab, relays, "nostarttls.example", STRICT)
    record = await r.wait_status(msg_id, "deferred")
    assert "does not offer STARTTLS" in record.attempts[0]["error"]
    # Deferred with backoff: the relay retries, still without sending in plaintext.
    await r.wait_status(msg_id, "deferred")
    deadline = asyncio.get_running_loop().time() + 10
    while len((await r.record(msg_id)).attempts) < 2:
        assert asyncio.get_running_loop().time() < deadline, "no retry"
        await asyncio.sleep(0.05)
    assert not _sent_anything(lab, tag)


class StripTLSProxy:
    """A man in the middle: forwards to a real server but hides STARTTLS from EHLO replies
    (rewriting it the way some firewalls do) and records what the client sent."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.from_client = bytearray()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pump(src, dst, rewrite: bool) -> None:
            try:
                while line := await src.readline():
                    if rewrite:
                        line = line.replace(b"STARTTLS", b"XXXXXXXA")
                    else:
                        self.from_client.extend(line)
                    dst.write(line)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(up_reader, writer, True), pump(reader, up_writer, False))

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


async def test_starttls_stripping_mitm_under_enforced_defers_never_plaintext(lab, relays) -> None:
    proxy = StripTLSProxy((lab.address_of("mail.corp.example"), lab.smtp_port))
    port = await proxy.start()
    try:
        model = make_model(lab, routes=[InboundRoute("127.0.0.1", port, EncryptionMode.STRICT)])
        r = await relays(model)
        tag = token()
        msg_id = await send(r.port, f"p-{tag}@partner.example", [f"bob-{tag}@corp.example"],
                            body(tag))
        record = await r.wait_status(msg_id, "deferred")
        attempt = record.attempts[0]
        assert attempt["host"] == "127.0.0.1" and attempt["port"] == port
        assert "does not offer STARTTLS" in attempt["error"]
        assert b"EHLO" in proxy.from_client, "the relay did talk to the proxy"
        assert b"MAIL FROM" not in proxy.from_client and tag.encode() not in proxy.from_client
        assert lab_messages(lab, tag) == []
    finally:
        await proxy.stop()


async def test_inbound_routes_use_their_encryption_mode(lab, relays, tmp_path) -> None:
    # legacy.corp.example has a self-signed certificate: strict defers, relaxed delivers.
    legacy = lab.address_of("legacy.corp.example")
    for mode, status, definition in (
            (EncryptionMode.STRICT, "deferred", "Enforced TLS, Strict"),
            (EncryptionMode.RELAXED, "delivered", "Enforced TLS, Relaxed"),
            # A route not yet validated: opportunistic TLS, and the log says why.
            (None, "delivered", "not validated")):
        model = make_model(lab, routes=[InboundRoute("legacy.corp.example", lab.smtp_port, mode)])
        r = await relays(model, spool=tmp_path / str(mode))
        tag = token()
        msg_id = await send(r.port, "x@partner.example", [f"bob-{tag}@corp.example"], body(tag))
        record = await r.wait_status(msg_id, status)
        assert record.attempts[0]["address"] == legacy
        assert record.attempts[0]["definition"] \
            == f"Inbound route legacy.corp.example ({definition})"
        assert record.attempts[0]["policy"] == "inbound routes"
        if mode is not None:
            assert record.attempts[0]["encryption_mode"] == mode.value


async def test_permanent_refusal_bounces_to_sender_at_once(lab, relays) -> None:
    r, msg_id, tag = await _deliver_one(lab, relays, "rejectrcpt.example", STRICT)
    record = await r.wait_status(msg_id, "bounced")
    bounced = next(e for e in record.events if e["event"] == "bounced")
    assert "550" in bounced["reason"]
    dsn = await _wait_dsn(lab, tag)
    assert b"Status: 5.1.1" in dsn.data
    assert (await r.wait_status(bounced["dsn"], "delivered")).received["mail_from"] == ""


async def _wait_dsn(lab, tag: str):
    sender = f"alice-{tag}@corp.example"

    def dsn():
        return [m for m in list(lab.messages) if m.rcpt_tos == (sender,) and m.mail_from == ""]

    assert await wait_lab(lab, lambda: len(dsn()) == 1, timeout=15)
    return dsn()[0]


async def test_bounce_after_lifetime_with_dsn_to_sender(lab, relays) -> None:
    settings = replace(FAST, max_lifetime=0.6, backoff_min=0.1, backoff_max=0.2)
    r, msg_id, tag = await _deliver_one(lab, relays, "selfsigned.example", STRICT,
                                        settings=settings)
    record = await r.wait_status(msg_id, "bounced")
    assert len(record.attempts) >= 2, "retried before giving up"
    assert any(e["event"] == "expired" for e in record.events)
    dsn = await _wait_dsn(lab, tag)
    report = email.message_from_bytes(dsn.data, policy=email_policy.default)
    assert report.get_content_type() == "multipart/report"
    text = dsn.data.decode()
    assert "Status: 5.4.7" in text and f"rcpt-{tag}@selfsigned.example" in text
    assert "mx.selfsigned.example" in text and "self-signed" in text
    assert f"Subject: test {tag}" in text  # the original headers come back


async def test_no_bounce_for_a_bounce(lab, relays) -> None:
    r = await relays(make_model(lab, delivery={"rejectrcpt.example": STRICT}))
    tag = token()
    msg_id = await send(r.port, "", [f"rcpt-{tag}@rejectrcpt.example"], body(tag))
    record = await r.wait_status(msg_id, "bounced")
    bounced = next(e for e in record.events if e["event"] == "bounced")
    assert "dsn" not in bounced and "no bounce for a bounce" in bounced["note"]


async def test_deferred_message_survives_restart_and_follows_new_policy(lab, relays,
                                                                        tmp_path) -> None:
    r, msg_id, tag = await _deliver_one(lab, relays, "selfsigned.example", STRICT)
    await r.wait_status(msg_id, "deferred")
    await r.relay.stop()
    r2 = await relays(make_model(lab, delivery={"selfsigned.example": RELAXED}), spool=r.spool)
    record = await r2.wait_status(msg_id, "delivered")
    assert record.attempts[-1]["definition"] == RELAXED.name
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)


async def test_log_command_shows_receipt_and_attempts(lab, relays, capsys) -> None:
    r, msg_id, _ = await _deliver_one(lab, relays, "trusted.example", STRICT)
    await r.wait_status(msg_id, "delivered")
    capsys.readouterr()
    assert await asyncio.to_thread(cli_main, ["log", "--spool", str(r.spool)]) == 0
    listing = capsys.readouterr().out
    assert msg_id in listing and "delivered" in listing
    assert await asyncio.to_thread(cli_main, ["log", "--spool", str(r.spool), msg_id]) == 0
    shown = capsys.readouterr().out
    assert "from 127.0.0.1" in shown and "mx.trusted.example [127.0.0.10]" in shown
    assert "certificate verified" in shown and STRICT.name in shown
    assert await asyncio.to_thread(cli_main, ["log", "--spool", str(r.spool), "--json",
                                              msg_id]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "delivered" and data["received"]["client_ip"] == "127.0.0.1"
    assert data["attempts"][0]["certificate_verified"] is True
    assert await asyncio.to_thread(cli_main, ["log", "--spool", str(r.spool), "NOSUCH"]) == 2
    assert "no message" in capsys.readouterr().err


async def test_mail_from_the_null_sender_is_kept_as_a_bounce(lab, relays, capsys) -> None:
    """A delivery status notification (null sender) is queued as a bounce: never bounced
    back, never given to Secure Messaging; ``queue show`` says so. A sender is not."""
    r = await relays(make_model(lab, routes=[]))  # no route: internal mail waits
    for sender, shown in (("", "<> (bounce)"), ("p@partner.example", "<p@partner.example>\n")):
        msg_id = await send(r.port, sender, ["bob@corp.example"], body(token()))
        await r.wait_status(msg_id, "deferred")
        capsys.readouterr()
        assert await asyncio.to_thread(cli_main, ["queue", "show", msg_id,
                                                  "--spool", str(r.spool)]) == 0
        assert f"Sender:       {shown}" in capsys.readouterr().out


async def test_enforced_refuses_tls_below_minimum_version(lab, relays) -> None:
    # tls10.example only speaks TLS 1.0: under enforced (min 1.2) that is no TLS at all.
    r, msg_id, tag = await _deliver_one(lab, relays, "tls10.example", RELAXED)
    record = await r.wait_status(msg_id, "deferred")
    assert "handshake failed" in record.attempts[0]["error"]
    assert not _sent_anything(lab, tag)


async def test_each_definition_keeps_its_own_tls_settings_in_one_relay(lab, relays) -> None:
    """The relay builds a TLS context once per kind of definition and reuses it: a context
    built for one definition must never serve another (No TLS then Opportunistic, whose
    oldest-TLS-accepted context then Enforced)."""
    r = await relays(make_model(lab, delivery={"trusted.example": NO_TLS,
                                               "selfsigned.example": OPPORTUNISTIC,
                                               "tls10.example": RELAXED}))
    tags = []
    for domain, status in (("trusted.example", "delivered"), ("selfsigned.example", "delivered"),
                           ("tls10.example", "deferred")):
        tags.append(tag := token())
        msg_id = await send(r.port, f"alice-{tag}@corp.example", [f"rcpt-{tag}@{domain}"],
                            body(tag))
        await r.wait_status(msg_id, status)
    assert await wait_lab(lab, lambda: all(lab_messages(lab, t) for t in tags[:2]))
    assert lab_messages(lab, tags[0])[0].tls_version is None
    assert lab_messages(lab, tags[1])[0].tls_version is not None
    assert not _sent_anything(lab, tags[2]), "TLS 1.0 under Enforced TLS (minimum 1.2)"


async def test_a_retry_does_not_repeat_deliveries_already_made(lab, relays) -> None:
    """One recipient delivered, the other deferred: each retry (and a restart) goes to the
    deferred one only; the delivered one gets one copy."""
    r = await relays(make_model(lab, delivery={"selfsigned.example": STRICT}))
    tag = token()
    msg_id = await send(r.port, f"alice-{tag}@corp.example",
                        [f"rcpt-{tag}@trusted.example", f"rcpt-{tag}@selfsigned.example"],
                        body(tag))

    async def retried(times: int) -> None:
        deadline = asyncio.get_running_loop().time() + 15
        while sum(a["host"] == "mx.selfsigned.example"
                  for a in (await r.record(msg_id)).attempts) < times:
            assert asyncio.get_running_loop().time() < deadline, "no retry"
            await asyncio.sleep(0.05)

    await retried(3)
    await r.relay.stop()
    r = await relays(make_model(lab, delivery={"selfsigned.example": STRICT}), spool=r.spool)
    await retried(5)
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) >= 1)
    await r.relay.idle()
    assert [m.rcpt_tos for m in lab_messages(lab, tag)] == [(f"rcpt-{tag}@trusted.example",)]


async def test_a_delivery_interrupted_by_a_stop_resumes_where_it_was(lab, relays, tmp_path,
                                                                     event_log) -> None:
    """The relay stops while a message is in flight, one recipient already delivered: the
    next start delivers to the other recipient only."""
    hop = HoldThenForward((lab.address_of("mail.corp.example"), lab.smtp_port))
    model = make_model(lab, routes=[InboundRoute("127.0.0.1", await hop.start())])
    try:
        r = await relays(model)
        tag = token()
        # The external recipient's group goes first, then the internal one hangs at the hop.
        await send(r.port, f"x-{tag}@partner.example",
                   [f"rcpt-{tag}@trusted.example", f"bob-{tag}@corp.example"], body(tag))
        await asyncio.wait_for(hop.held.wait(), 20)
        assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
        await r.relay.stop()
        [stopped] = [e for e in event_log.events() if e["event"] == "stopped"]
        assert (stopped["incoming"], stopped["active"], stopped["deferred"]) == (0, 1, 0)
        hop.forward = True
        r = await relays(model, spool=r.spool)
        assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 2)
        await r.relay.idle()
        assert sorted(m.rcpt_tos for m in lab_messages(lab, tag)) \
            == [(f"bob-{tag}@corp.example",), (f"rcpt-{tag}@trusted.example",)]
    finally:
        await hop.stop()


_STRICT_TO = Scope(Applies.DOMAIN, ("selfsigned.example",))


@pytest.mark.parametrize("policy", [
    DeliveryPolicy("Strict for the board's mail", STRICT.name, to=_STRICT_TO,
                   from_=Scope(Applies.DOMAIN, ("board.example",), BasedOn.HEADER)),
    DeliveryPolicy("Strict from the mail server", STRICT.name, to=_STRICT_TO,
                   validity=Validity(source_ips=(ipaddress.ip_network("127.0.0.1/32"),))),
], ids=["from-header", "source-ip"])
async def test_each_domain_gets_its_own_transaction_under_its_own_policy(lab, relays,
                                                                         policy) -> None:
    """One message to two external domains: each MX host sees only its own recipient, and
    each group is judged with the message's context — a policy on the From: header, or one
    limited to the client's address, makes selfsigned.example Strict (so it defers)."""
    base = make_model(lab, delivery={"selfsigned.example": STRICT})
    r = await relays(replace(base, delivery_policies=(policy,)))
    tag = token()
    msg_id = await send(r.port, f"alice-{tag}@corp.example",
                        [f"a-{tag}@trusted.example", f"b-{tag}@selfsigned.example"],
                        body(tag, sender="ceo@board.example"))
    record = await r.wait_status(msg_id, "deferred")
    assert {(a["host"], a["policy"], a["outcome"]) for a in record.attempts} == {
        ("mx.trusted.example", "default (opportunistic)", "delivered"),
        ("mx.selfsigned.example", policy.narrative, "temporary")}
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    assert lab_messages(lab, tag)[0].rcpt_tos == (f"a-{tag}@trusted.example",)


@pytest.mark.parametrize(("hosts", "reason"), [
    ((), "no inbound routes configured for internal mail"),
    (("nowhere.corp.example",), "no inbound route has an address"),
])
async def test_internal_mail_without_a_usable_route_waits_and_says_why(lab, relays, hosts,
                                                                      reason) -> None:
    routes = [InboundRoute(h, lab.smtp_port, EncryptionMode.STRICT) for h in hosts]
    r = await relays(make_model(lab, routes=routes))
    msg_id = await send(r.port, "x@partner.example", ["bob@corp.example"], body(token()))
    record = await r.wait_status(msg_id, "deferred")
    assert next(e["reason"] for e in record.events if e["event"] == "deferred") == reason


@pytest.mark.parametrize("hosts", [("nowhere.corp.example", "mail.corp.example"),
                                   ("mail.corp.example", "nowhere.corp.example")])
async def test_a_route_host_that_does_not_resolve_leaves_the_others(lab, relays,
                                                                    hosts) -> None:
    routes = [InboundRoute(h, lab.smtp_port, EncryptionMode.STRICT) for h in hosts]
    r = await relays(make_model(lab, routes=routes))
    msg_id = await send(r.port, "x@partner.example", ["bob@corp.example"], body(token()))
    record = await r.wait_status(msg_id, "delivered")
    assert [a["host"] for a in record.attempts] == ["mail.corp.example"]


async def test_a_route_back_to_the_relay_is_skipped_for_the_next_route(lab, relays,
                                                                       event_log) -> None:
    """Of routes [the relay itself, the internal server, the internal server again]: the
    first is left out, the second delivers, the third is not tried, the message is done."""
    r = await relays(make_model(lab))
    internal = InboundRoute("mail.corp.example", lab.smtp_port, EncryptionMode.STRICT)
    model = make_model(lab, routes=[InboundRoute("127.0.0.1", r.port), internal, internal])
    r.relay.load_policy = lambda: model
    assert await r.relay.reload()
    tag = token()
    msg_id = await send(r.port, "x@partner.example", [f"bob-{tag}@corp.example"], body(tag))
    record = await r.wait_status(msg_id, "delivered")
    assert [(a["host"], a["outcome"]) for a in record.attempts] \
        == [("mail.corp.example", "delivered")]
    assert await _ending(r, event_log, msg_id) == ["done"]
    assert len(lab_messages(lab, tag)) == 1


async def test_a_route_that_fails_for_now_leaves_the_recipients_to_the_next(lab, relays,
                                                                            event_log) -> None:
    internal = InboundRoute("mail.corp.example", lab.smtp_port, EncryptionMode.STRICT)
    refusing = InboundRoute("mx.starttls454.example", lab.smtp_port, EncryptionMode.STRICT)
    r = await relays(make_model(lab, routes=[refusing, internal]))
    tag = token()
    msg_id = await send(r.port, "x@partner.example", [f"bob-{tag}@corp.example"], body(tag))
    record = await r.wait_status(msg_id, "delivered")
    assert [(a["host"], a["outcome"]) for a in record.attempts] \
        == [("mx.starttls454.example", "temporary"), ("mail.corp.example", "delivered")]
    assert await _ending(r, event_log, msg_id) == ["done"]
    assert [m.rcpt_tos for m in lab_messages(lab, tag)] == [(f"bob-{tag}@corp.example",)]


async def test_opportunistic_falls_back_to_plaintext_when_starttls_fails(lab, relays,
                                                                        event_log) -> None:
    # starttls454.example advertises STARTTLS and answers 454: opportunistic may go plain.
    r, msg_id, tag = await _deliver_one(lab, relays, "starttls454.example", OPPORTUNISTIC)
    record = await r.wait_status(msg_id, "delivered")
    first, second = record.attempts
    assert "STARTTLS refused" in first["error"] and first["retry_plain"] is True
    assert second["outcome"] == "delivered" and second["tls_version"] is None
    assert (second["definition"], second["option"]) == (OPPORTUNISTIC.name, "opportunistic")
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    assert _ehlo_names(lab, tag) == ["relay.corp.example"]  # the plaintext session's
    assert await _ending(r, event_log, msg_id) == ["done"]


@pytest.mark.parametrize("definition", [STRICT, RELAXED], ids=["strict", "relaxed"])
async def test_enforced_defers_when_starttls_is_refused_with_454(lab, relays,
                                                                 definition) -> None:
    """The plaintext fallback above is for Opportunistic only: under Enforced TLS a 454 to
    STARTTLS is a temporary failure, on the first attempt and on every retry."""
    r, msg_id, tag = await _deliver_one(lab, relays, "starttls454.example", definition)
    record = await r.wait_status(msg_id, "deferred", "delivered")
    assert record.status == "deferred"
    assert "454" in record.attempts[0]["error"]
    host = "mx.starttls454.example"  # the reason names the host that gave it
    reason = next(e["reason"] for e in record.events if e["event"] == "deferred")
    assert reason.startswith(f"{host}[{lab.address_of(host)}]:{lab.smtp_port}: "), reason
    deadline = asyncio.get_running_loop().time() + 10
    while len((await r.record(msg_id)).attempts) < 2:
        assert asyncio.get_running_loop().time() < deadline, "no retry"
        await asyncio.sleep(0.05)
    assert (await r.wait_status(msg_id, "deferred", "delivered")).status == "deferred"
    assert not _sent_anything(lab, tag), "enforced TLS must never fall back to plaintext"


async def test_a_domain_whose_mx_host_has_no_address_waits_and_says_why(lab, relays) -> None:
    r, msg_id, _ = await _deliver_one(lab, relays, "noaddress.example", OPPORTUNISTIC)
    record = await r.wait_status(msg_id, "deferred")
    reason = next(e["reason"] for e in record.events if e["event"] == "deferred")
    assert reason == "noaddress.example: no MX host has an address"


@pytest.mark.parametrize("domain, status", [("nxdomain.example", "5.1.2"),
                                            ("nullmx.example", "5.1.10")])
async def test_domain_that_takes_no_mail_bounces_at_once(lab, relays, domain: str,
                                                         status: str) -> None:
    r, msg_id, tag = await _deliver_one(lab, relays, domain, OPPORTUNISTIC)
    record = await r.wait_status(msg_id, "bounced")
    assert record.attempts == [], "no host to try"
    dsn = await _wait_dsn(lab, tag)
    assert f"Status: {status}".encode() in dsn.data
