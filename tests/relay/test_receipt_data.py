"""What receipt decides after DATA: policies based on the From: header (the strictest over
all recipients wins), refusals recorded in the Receipt/Delivery view, and the Received:
header. Found missing by scripts/mutation-check (docs/testing.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from dataclasses import replace
from email import message_from_bytes

import aiosmtplib
import pytest

from connectwiz.cli import main as cli_main
from connectwiz.policy.model import (
    Applies,
    BasedOn,
    DeliveryPolicy,
    ReceiptOption,
    ReceiptPolicy,
    Scope,
    Validity,
)

from .conftest import STRICT, body, lab_messages, make_model, no_verify, send, token, wait_lab

pytestmark = pytest.mark.network

HEADER_ENFORCED = ReceiptPolicy(
    "Enforced TLS for mail that says it is from the bank", ReceiptOption.ENFORCED,
    from_=Scope(Applies.DOMAIN, ("bank.example",), BasedOn.HEADER), to=Scope(Applies.INTERNAL))


async def _logged(spool, capsys, tag: str) -> list[dict]:
    """The Receipt/Delivery view (`connectwiz log --json`) of this test's messages."""
    async def log(*args: str) -> object:
        capsys.readouterr()
        assert await asyncio.to_thread(cli_main, ["log", "--spool", str(spool), "--json",
                                                  *args]) == 0
        return json.loads(capsys.readouterr().out)

    listing = await log()
    return [await log(m["id"]) for m in listing if tag in json.dumps(m)]


async def test_header_from_policy_refuses_plaintext_at_data_and_records_it(
        lab, relays, capsys) -> None:
    r = await relays(replace(make_model(lab), receipt_policies=(HEADER_ENFORCED,)))
    tag = token()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False, timeout=10,
                             local_hostname="client.test")
    await client.connect()
    try:
        # The envelope sender has no policy: RCPT is accepted, the From: header decides.
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await client.sendmail(f"bounce-{tag}@mailer.example", [f"bob-{tag}@corp.example"],
                                  body(tag, sender="ceo@bank.example"))
        assert info.value.code == 530
    finally:
        client.close()
    [refused] = await _logged(r.spool, capsys, tag)
    assert refused["status"] == "refused"
    received = refused["received"]
    assert received["result"].startswith("530 ") and received["helo"] == "client.test"
    assert received["mail_from"] == f"bounce-{tag}@mailer.example"
    assert received["recipients"] == [f"bob-{tag}@corp.example"]
    assert received["header_from"] == "ceo@bank.example"
    assert received["policy"] == HEADER_ENFORCED.narrative

    # Over TLS the same message is accepted, recorded with its From: header and delivered
    # with our Received: header naming this relay.
    msg_id = await send(r.port, f"bounce-{tag}@mailer.example", [f"bob-{tag}@corp.example"],
                        body(tag, sender="ceo@bank.example"), tls=True, tls_context=no_verify())
    record = await r.wait_status(msg_id, "delivered")
    assert record.received["header_from"] == "ceo@bank.example"
    assert record.received["receipt_option"] == "enforced"
    assert record.received["result"] == "accepted"
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    received_header = " ".join(str(message_from_bytes(lab_messages(lab, tag)[0].data)
                                   .get_all("Received")[0]).split())
    assert f"by relay.corp.example (connectwiz) with ESMTPS id {msg_id} " in received_header
    assert re.search(r"\(using TLSv1\.[23] with cipher \S+ \((128|256) bits\)\)", received_header)


async def test_smuggling_refusal_is_recorded_with_its_reason(lab, relays, capsys) -> None:
    r = await relays(make_model(lab))
    tag = token()
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    try:
        for line in (b"EHLO client.test", f"MAIL FROM:<p-{tag}@partner.example>".encode(),
                     f"RCPT TO:<bob-{tag}@corp.example>".encode(), b"DATA"):
            await reader.readuntil(b"\r\n")
            writer.write(line + b"\r\n")
        while not (await reader.readline()).startswith(b"354"):
            pass
        writer.write(b"Subject: x\r\n\r\nbare\nLF\r\n.\r\n")
        reply = await reader.readline()
    finally:
        writer.close()
    assert reply.startswith(b"550 5.5.2 Message refused: bare LF or bare CR in DATA")
    [refused] = await _logged(r.spool, capsys, tag)
    assert refused["status"] == "refused"
    assert refused["received"]["result"] == reply.decode().strip()
    assert refused["received"]["helo"] == "client.test"


FROM_BANK_HEADER = DeliveryPolicy(
    "Strict for mail whose From: is the bank", STRICT.name,
    from_=Scope(Applies.DOMAIN, ("bank.example",), BasedOn.HEADER),
    to=Scope(Applies.DOMAIN, ("selfsigned.example",)))
FROM_THIS_CLIENT = DeliveryPolicy(
    "Strict for mail from this client", STRICT.name,
    to=Scope(Applies.DOMAIN, ("selfsigned.example",)),
    validity=Validity(source_ips=(ipaddress.ip_network("127.0.0.1/32"),)))


@pytest.mark.parametrize("policy", [FROM_BANK_HEADER, FROM_THIS_CLIENT], ids=["header", "ip"])
async def test_delivery_policy_sees_what_receipt_saw(lab, relays, policy) -> None:
    """The From: header and the client address kept with a queued message select its
    delivery policy: here Strict, which a self-signed server fails (Opportunistic would
    deliver)."""
    model = replace(make_model(lab), delivery_definitions=(STRICT,), delivery_policies=(policy,))
    r = await relays(model)
    tag = token()
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [f"rcpt-{tag}@selfsigned.example"],
                        body(tag, sender="ceo@bank.example"))
    record = await r.wait_status(msg_id, "deferred", "delivered")
    assert record.status == "deferred" and record.attempts[0]["definition"] == STRICT.name


async def test_rcpt_refusals_are_logged_and_domainless_recipients_get_501(lab, relays,
                                                                         event_log) -> None:
    """Refusals at RCPT TO are not in the message log; the operational log names them."""
    r = await relays(replace(make_model(lab), receipt_policies=(ReceiptPolicy(
        "Enforced from partners", ReceiptOption.ENFORCED,
        from_=Scope(Applies.DOMAIN, ("partner.example",)), to=Scope(Applies.INTERNAL)),)))
    tag = token()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False, timeout=10,
                             source_address=("127.0.0.2", 0))
    await client.connect()
    try:
        await client.ehlo()
        await client.mail(f"p-{tag}@partner.example")
        for rcpt, code in ((f"victim-{tag}@trusted.example", 554),
                           (f"bob-{tag}@corp.example", 530),
                           (f"bob-{tag}", 501), (f"bob-{tag}@[127.0.0.1]", 501)):
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as info:
                await client.rcpt(rcpt)
            assert info.value.code == code, (rcpt, info.value)
        assert "a mail domain is required" in info.value.message
    finally:
        client.close()
    events = [e for e in event_log.events() if tag in json.dumps(e)]
    refused = {e["to"]: e for e in events if e["event"] == "refused"}
    relay_denied = refused[f"victim-{tag}@trusted.example"]
    assert (relay_denied["client"], relay_denied["reason"]) == ("127.0.0.2",
                                                                "relay access denied")
    tls = refused[f"bob-{tag}@corp.example"]
    assert tls["client"] == "127.0.0.2" and tls["reason"].startswith("530 ")
    assert tls["policy"] == "Enforced from partners"


async def test_addresses_refused_at_mail_and_rcpt_say_why(lab, relays) -> None:
    r = await relays(make_model(lab))
    tag = token()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False, timeout=10)
    await client.connect()
    try:
        await client.ehlo()
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.mail(f"alice-{tag}")  # no domain
        assert refused.value.code == 501
        await client.mail(f"alice-{tag}@corp.example")
        for rcpt, why in (
                ("@relay.example,@trusted.example:victim@other.example",
                 "source routes are not accepted"),
                ("victim%other.example@corp.example",
                 "'%', '!' and '@' in the local part are not accepted")):
            # Raw: aiosmtplib itself will not send such addresses.
            reply = await client.execute_command(b"RCPT", f"TO:<{rcpt}>".encode())
            assert (reply.code, reply.message) == (553, f"5.1.3 Recipient address refused: {why}")
        # Letters that merely look like the trick characters are fine.
        assert (await client.rcpt(f"Xavier-{tag}@corp.example")).code == 250
    finally:
        client.close()


@pytest.mark.parametrize(("greeting", "tls", "rcpts", "proto"), [
    ("ehlo", False, 1, "ESMTP"),
    ("helo", False, 2, "SMTP"),  # two recipients: no "for" (it would leak a Bcc list)
    ("ehlo", True, 1, "ESMTPS"),
    ("helo", True, 2, "SMTPS"),  # HELO again after STARTTLS
])
async def test_received_header_names_the_session(lab, relays, greeting, tls, rcpts,
                                                 proto) -> None:
    r = await relays(make_model(lab))
    tag = token()
    name = f"client-{tag}." + "h" * 250  # longer than the 200 characters kept
    to = [f"bob{n}-{tag}@corp.example" for n in range(rcpts)]
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False, timeout=10,
                             tls_context=no_verify())
    await client.connect()
    try:
        if tls:
            await client.ehlo(hostname="client.test")
            await client.starttls()
        await (client.ehlo if greeting == "ehlo" else client.helo)(hostname=name)
        _, reply = await client.sendmail("x@partner.example", to, body(tag))
    finally:
        client.close()
    msg_id = reply.rsplit(" ", 1)[-1]
    # No receipt policy matches: the receipt view says which one applied all the same.
    assert (await r.record(msg_id)).received["policy"] == "default (opportunistic)"
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    data = lab_messages(lab, tag)[0].data.decode()
    using = r"\r\n\t\(using TLSv1\.[23] with cipher \S+ \(\d+ bits\)\)" if tls else ""
    for_part = rf"\r\n\tfor <{re.escape(to[0])}>" if rcpts == 1 else ""
    assert re.match(rf"Received: from {re.escape(name[:200])} \(\[127\.0\.0\.1\]\){using}"
                    rf"\r\n\tby relay\.corp\.example \(connectwiz\) with {proto} id {msg_id}"
                    rf"{for_part}; [^\r\n]+ \+0000\r\n", data), data[:400]
