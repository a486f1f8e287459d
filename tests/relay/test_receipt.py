"""Receipt over real sockets: TLS per Secure Receipt policy, open-relay refusal, smuggling,
routing tricks, limits. Clients are aiosmtplib or raw sockets, never our own client code."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import warnings
from dataclasses import replace

import aiosmtplib
import pytest

from connectwiz.policy.model import ReceiptOption
from connectwiz.relay.spool import Spool

from .conftest import FAST, body, lab_messages, make_model, no_verify, send, token, wait_lab

pytestmark = pytest.mark.network


def _old_tls(version: ssl.TLSVersion, ciphers: str = "DEFAULT:@SECLEVEL=0") -> ssl.SSLContext:
    ctx = no_verify()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    ctx.set_ciphers(ciphers)
    return ctx


async def _refused(port: int, sender: str, rcpt: str, tls_context: ssl.SSLContext | None,
                   source: str = "127.0.0.1") -> aiosmtplib.SMTPResponseException:
    """Send and expect a refusal; returns the refusing reply (the first refused recipient's
    when every recipient was refused)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False,
                             timeout=10, source_address=(source, 0))
    await client.connect()
    try:
        if tls_context is not None:
            await client.starttls(tls_context=tls_context)
        with pytest.raises((aiosmtplib.SMTPResponseException,
                            aiosmtplib.SMTPRecipientsRefused)) as info:
            await client.sendmail(sender, [rcpt], body("refused"))
        # The relay keeps serving the same session after refusing.
        assert (await client.noop()).code == 250
        if isinstance(info.value, aiosmtplib.SMTPRecipientsRefused):
            return info.value.recipients[0]
        return info.value
    finally:
        client.close()


RECEIPT = {"enforced.example": ReceiptOption.ENFORCED, "ncsc.example": ReceiptOption.TLS12_NCSC}


async def test_opportunistic_accepts_plaintext(lab, relays) -> None:
    r = await relays(make_model(lab, receipt=RECEIPT))
    tag = token()
    msg_id = await send(r.port, "someone@other.example", ["bob@corp.example"], body(tag))
    record = await r.wait_status(msg_id, "delivered")
    assert record.received["tls_version"] is None
    assert record.received["receipt_option"] == "opportunistic"
    assert record.received["size"] == len(body(tag))  # the message as sent, in bytes


async def test_enforced_refuses_plaintext_with_530(lab, relays) -> None:
    r = await relays(make_model(lab, receipt=RECEIPT))
    exc = await _refused(r.port, "p@enforced.example", "bob@corp.example", None)
    assert exc.code == 530 and "Must issue a STARTTLS command first" in exc.message
    assert Spool(r.spool).counts()["incoming"] == 0


async def test_enforced_accepts_over_tls_and_records_it(lab, relays) -> None:
    r = await relays(make_model(lab, receipt=RECEIPT))
    tag = token()
    msg_id = await send(r.port, "p@enforced.example", ["bob@corp.example"], body(tag), tls=True)
    record = await r.wait_status(msg_id, "delivered")
    assert record.received["tls_version"] == "TLSv1.3"
    assert record.received["receipt_option"] == "enforced"
    assert record.received["policy"] == "enforced from enforced.example"
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    data = lab_messages(lab, tag)[0].data
    assert b"with ESMTPS id " + msg_id.encode() in data
    assert b"(using TLSv1.3 with cipher TLS_" in data


async def test_ncsc_accepts_tls12_with_approved_cipher(lab, relays) -> None:
    r = await relays(make_model(lab, receipt=RECEIPT))
    ctx = _old_tls(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256")
    msg_id = await send(r.port, "p@ncsc.example", ["bob@corp.example"], body(token()),
                        tls=True, tls_context=ctx)
    record = await r.wait_status(msg_id, "delivered")
    assert record.received["tls_version"] == "TLSv1.2"
    assert record.received["tls_cipher"].startswith("ECDHE-")


async def test_ncsc_refuses_tls11(lab, relays) -> None:
    r = await relays(make_model(lab, receipt=RECEIPT))
    exc = await _refused(r.port, "p@ncsc.example", "bob@corp.example",
                         _old_tls(ssl.TLSVersion.TLSv1_1))
    assert exc.code == 530 and "TLSv1.1" in exc.message


async def test_ncsc_refuses_cipher_outside_allow_list(lab, relays) -> None:
    r = await relays(make_model(lab, receipt=RECEIPT))
    ctx = _old_tls(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
    exc = await _refused(r.port, "p@ncsc.example", "bob@corp.example", ctx)
    assert exc.code == 530 and "ECDHE-ECDSA-AES128-SHA" in exc.message
    # The same cipher is fine for a sender under plain enforced TLS.
    msg_id = await send(r.port, "p@enforced.example", ["bob@corp.example"], body(token()),
                        tls=True, tls_context=_old_tls(ssl.TLSVersion.TLSv1_2,
                                                       "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"))
    record = await r.wait_status(msg_id, "delivered")
    assert record.received["tls_cipher"] == "ECDHE-ECDSA-AES128-SHA"


async def test_strictest_policy_wins_across_recipients(lab, relays) -> None:
    # Receipt to sales.corp.example is enforced, to corp.example opportunistic: one message
    # to both over plaintext is refused at DATA.
    model = make_model(lab)
    from connectwiz.policy.model import Applies, ReceiptPolicy, Scope

    model = replace(model, receipt_policies=(ReceiptPolicy(
        "enforced to sales", ReceiptOption.ENFORCED, to=Scope(Applies.INDIVIDUAL,
                                                               ("sales@corp.example",))),))
    r = await relays(model)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False, timeout=10)
    await client.connect()
    try:
        await client.ehlo()
        await client.mail("x@other.example")
        assert (await client.rcpt("bob@corp.example")).code == 250
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as info:
            await client.rcpt("sales@corp.example")
        assert info.value.code == 530
    finally:
        client.close()


async def test_open_relay_attempt_is_refused_with_554(lab, relays) -> None:
    r = await relays(make_model(lab, authorized="127.0.0.1/32"))
    exc = await _refused(r.port, "spam@evil.example", "victim@trusted.example", None,
                         source="127.0.0.2")
    assert exc.code == 554 and "Relay access denied" in exc.message
    # The same outsider may still send to internal recipients ...
    msg_id = await send(r.port, "p@evil.example", ["bob@corp.example"], body(token()),
                        source="127.0.0.2")
    assert (await r.record(msg_id)).received["client_ip"] == "127.0.0.2"
    # ... and an authorised client may relay out.
    await send(r.port, "alice@corp.example", ["x@trusted.example"], body(token()))


@pytest.mark.parametrize("sender", ["ceo@corp.example", "it@mail.corp.example"])
async def test_forged_internal_sender_does_not_open_the_relay(lab, relays, sender) -> None:
    """Authorisation comes from the client's address only: an outsider claiming an internal
    envelope sender (anyone can type one) may not relay out."""
    r = await relays(make_model(lab, authorized="127.0.0.1/32"))
    tag = token()
    exc = await _refused(r.port, sender, f"victim-{tag}@trusted.example", None,
                         source="127.0.0.2")
    assert exc.code == 554 and "Relay access denied" in exc.message
    # With an internal recipient beside it, only the internal one is accepted and delivered.
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False,
                             timeout=10, source_address=("127.0.0.2", 0))
    await client.connect()
    try:
        refused, _ = await client.sendmail(
            sender, [f"victim-{tag}@trusted.example", f"bob-{tag}@corp.example"], body(tag))
    finally:
        client.close()
    assert refused[f"victim-{tag}@trusted.example"][0] == 554
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    assert lab_messages(lab, tag)[0].rcpt_tos == (f"bob-{tag}@corp.example",)
    await r.relay.stop()  # nothing else queued: every delivery has ended
    assert [m.rcpt_tos for m in lab_messages(lab, tag)] == [(f"bob-{tag}@corp.example",)]


@pytest.mark.parametrize("rcpt", [
    "<@relay.example,@trusted.example:victim@other.example>",
    "<victim%other.example@corp.example>",
    "<other.example!victim@corp.example>",
])
async def test_routing_tricks_are_refused(lab, relays, rcpt: str) -> None:
    r = await relays(make_model(lab))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port, local_addr=("127.0.0.2", 0))
    try:
        replies = await _chat(reader, writer, [b"EHLO t\r\n", b"MAIL FROM:<a@b.example>\r\n",
                                               b"RCPT TO:" + rcpt.encode() + b"\r\n",
                                               b"NOOP\r\n"])
    finally:
        writer.close()
    assert replies[3].startswith(b"553 5.1.3"), replies
    assert replies[4].startswith(b"250")


async def _chat(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                lines: list[bytes]) -> list[bytes]:
    """Send each line and collect its (final) reply line; the greeting comes first."""
    replies = [await _reply(reader)]
    for line in lines:
        writer.write(line)
        await writer.drain()
        replies.append(await _reply(reader))
    return replies


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line, "connection closed"
        if line[3:4] != b"-":
            return line


@pytest.mark.parametrize("payload", [
    b"Subject: a\r\n\r\nfirst\n.\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<bob@corp.example>\r\n"
    b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n",
    b"Subject: a\r\n\r\nfirst\r\n.\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<bob@corp.example>\r\n"
    b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n",
    b"Subject: a\r\n\r\nfirst\r.\r\nbare CR\r\n.\r\n",
])
async def test_smuggling_payloads_are_refused(lab, relays, payload: bytes) -> None:
    r = await relays(make_model(lab))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    try:
        replies = await _chat(reader, writer, [
            b"EHLO t\r\n", b"MAIL FROM:<alice@corp.example>\r\n", b"RCPT TO:<bob@corp.example>\r\n",
            b"DATA\r\n", payload, b"NOOP\r\n"])
    finally:
        writer.close()
    assert replies[4].startswith(b"354")
    assert replies[5].startswith(b"550 5.5.2"), replies
    assert replies[6].startswith(b"250"), "the relay must keep serving"
    assert Spool(r.spool).counts() == {"incoming": 0, "active": 0, "deferred": 0}
    assert not list((r.spool / "queue").iterdir()) and not list((r.spool / "tmp").iterdir())


async def test_limits_size_recipients_connections(lab, relays) -> None:
    settings = replace(FAST, max_message_size=2000, max_recipients=2, max_connections=2)
    r = await relays(make_model(lab), settings)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False, timeout=10)
    await client.connect()
    try:
        await client.ehlo()
        await client.mail("alice@corp.example")
        await client.rcpt("a@corp.example")
        await client.rcpt("b@corp.example")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as info:
            await client.rcpt("c@corp.example")
        assert info.value.code == 452
        with pytest.raises(aiosmtplib.SMTPResponseException) as big:
            await client.data(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40)
        assert big.value.code == 552
        # A third concurrent connection gets 421 while two are open.
        second = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False, timeout=10)
        await second.connect()
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        assert (await _reply(reader)).startswith(b"421 4.3.2")
        writer.close()
        second.close()
        assert (await client.noop()).code == 250
    finally:
        client.close()


async def test_idle_client_is_dropped(lab, relays) -> None:
    r = await relays(make_model(lab), replace(FAST, idle_timeout=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    try:
        await _reply(reader)
        # read() returns at EOF: the relay hung up on the silent client.
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()


async def test_relay_presents_the_configured_certificate(lab, relays, tmp_path) -> None:
    from connectwiz.lab.ca import LabCA

    ca = LabCA(tmp_path / "ca")
    cert, key = ca.issue(["relay.corp.example"])
    r = await relays(make_model(lab), tls=(cert, key))
    ctx = ssl.create_default_context(cafile=str(ca.ca_file))
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False, timeout=10)
    await client.connect()
    try:
        # Verifies chain and name: fails unless the relay serves the certificate we gave it.
        await client.starttls(tls_context=ctx, server_hostname="relay.corp.example")
        assert (await client.noop()).code == 250
    finally:
        client.close()
    assert not (r.spool / "tls").exists(), "no self-signed certificate when one is given"


async def test_hostile_client_gets_replies_and_the_relay_keeps_serving(lab, relays) -> None:
    r = await relays(make_model(lab))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    try:
        replies = await _chat(reader, writer, [
            b"EHLO t\r\n",
            b"X" * 5000 + b"\r\n",  # longer than any SMTP command may be
            b"\x00\xff\xfe junk\r\n",
            b"RCPT TO:<bob@corp.example>\r\n",  # out of sequence
            b"DATA\r\n",  # out of sequence
            b"MAIL FROM:<not an address>\r\n",
            b"NOOP\r\n",
        ])
    finally:
        writer.close()
    codes = [line[:3] for line in replies[2:]]
    assert codes[:5] == [b"500", b"500", b"503", b"503", b"501"], replies
    assert codes[5] == b"250"
    # A fresh client is served normally afterwards.
    assert await send(r.port, "alice@corp.example", ["bob@corp.example"], body(token()))


async def test_a_receipt_policy_limited_to_source_ips_applies_to_those_clients(lab,
                                                                              relays) -> None:
    """Enforced TLS for partner.example, in effect only for clients in 127.0.0.2/32: that
    client is refused in plaintext, another one is not."""
    base = make_model(lab, receipt={"partner.example": ReceiptOption.ENFORCED})
    [policy] = base.receipt_policies
    limited = replace(policy, validity=replace(
        policy.validity, source_ips=(ipaddress.ip_network("127.0.0.2/32"),)))
    r = await relays(replace(base, receipt_policies=(limited,)))
    exc = await _refused(r.port, "p@partner.example", "bob@corp.example", None,
                         source="127.0.0.2")
    assert exc.code == 530
    await send(r.port, "p@partner.example", ["bob@corp.example"], body(token()),
               source="127.0.0.3")


async def test_ehlo_names_the_relay_first_and_offers_its_extensions(lab, relays) -> None:
    r = await relays(make_model(lab))
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False, timeout=10)
    greeting = await client.connect()
    try:
        reply = await client.ehlo()
    finally:
        client.close()
    assert greeting.message == "relay.corp.example connectwiz"
    lines = reply.message.splitlines()
    assert lines[0] == "relay.corp.example"  # RFC 5321 4.1.1.1: the server's domain first
    assert sorted(lines[1:]) == sorted(set(lines[1:]))
    assert {line.split()[0] for line in lines[1:]} \
        >= {"PIPELINING", "SIZE", "8BITMIME", "STARTTLS"}
    assert f"SIZE {FAST.max_message_size}" in lines  # the limit DATA enforces
