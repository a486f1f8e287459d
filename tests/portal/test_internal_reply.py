"""Internal recipients reply securely: under a definition that holds mail for internal
recipients too (the built-in All Recipients, or one with routing = "all"), a colleague
opens the portal link from their notification, signs in with a code and replies there,
like an external recipient. Real relay (the lab is its next hop) and real portal on one
spool."""

from __future__ import annotations

import re
from dataclasses import replace
from email import message_from_bytes
from email import policy as email_policy

import pytest

from connectwiz.policy.model import SecureDefinition, SecurePolicy, SecureRouting
from tests.relay.conftest import FAST, lab_messages, make_model, send, token, wait_lab

pytestmark = pytest.mark.network
CODE = re.compile(r"Your one-time code is: ([0-9]{6})")
PUBLIC = "http://127.0.0.1/secure"


def text_of(data: bytes) -> str:
    body = message_from_bytes(data, policy=email_policy.default).get_body(("plain",))
    assert body is not None
    return str(body.get_content())


async def mail_to(lab, address: str, needle: str) -> bytes:
    def found() -> list[bytes]:
        return [m.data for m in list(lab.messages)
                if address in m.rcpt_tos and needle in m.data.decode("utf-8", "replace")]
    assert await wait_lab(lab, lambda: bool(found()), 15), f"no {needle!r} for {address}"
    return found()[-1]


PAYROLL = SecureDefinition("Payroll", routing=SecureRouting.ALL, expiry_days=3)


@pytest.mark.parametrize("definition", [None, PAYROLL], ids=["All Recipients", "own"])
async def test_internal_recipient_reads_and_replies_in_the_portal(
        lab, relays, portal_client, definition: SecureDefinition | None) -> None:
    """The built-in All Recipients, or a definition of the bundle's own with
    routing = "all", covers internal recipients."""
    name = definition.name if definition else "All Recipients"
    model = replace(make_model(lab), secure_definitions=(definition,) if definition else (),
                    secure_policies=(SecurePolicy("everything is secure", name),))
    relay = await relays(model, replace(FAST, portal_url=PUBLIC))
    pc = await portal_client(spool=relay.spool, relay=("127.0.0.1", relay.port))
    tag = token()
    alice, bob = f"alice-{tag}@corp.example", f"bob-{tag}@corp.example"
    body = (f"From: {alice}\r\nTo: {bob}\r\nSubject: Payroll {tag}\r\n"
            f"Message-ID: <{tag}@corp.example>\r\n\r\nsalaries {tag}\r\n").encode()
    held = await send(relay.port, alice, [bob], body)
    await relay.wait_status(held, "held")
    # Bob is internal: a notification reaches his mailbox, never the message.
    note = text_of(await mail_to(lab, bob, PUBLIC))
    assert not [m for m in lab_messages(lab, f"salaries {tag}") if bob in m.rcpt_tos]
    link = re.search(re.escape(PUBLIC) + r"(/m/[0-9A-F]+/[A-Za-z0-9_-]{43})", note)
    assert link
    path = "/secure" + link.group(1)

    await read_and_reply(lab, pc, path, bob, tag)
    # The reply reaches Alice's mailbox through the relay, with the banner naming Bob,
    # who wrote it (not Alice, the reply's envelope sender).
    reply = text_of(await mail_to(lab, alice, f"answer {tag}"))
    assert reply.startswith(f"This message was sent securely by {bob}")


async def read_and_reply(lab, pc, path: str, reader: str, tag: str) -> None:
    """Sign in with the code mailed to ``reader``, read the message, reply."""
    csrf = await pc.csrf(path)
    resp = await pc.client.post(path + "/code", data={"_csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    code = CODE.search(text_of(await mail_to(lab, reader, "one-time code")))
    assert code
    resp = await pc.client.post(path + "/verify", data={"_csrf": csrf, "code": code.group(1)},
                                allow_redirects=False)
    assert resp.status == 303
    page = await (await pc.client.get(path)).text()
    assert f"salaries {tag}" in page and "Reply" in page
    csrf = await pc.csrf(path + "/reply")
    resp = await pc.client.post(path + "/reply", data={
        "_csrf": csrf, "subject": f"Re: Payroll {tag}", "text": f"answer {tag}"})
    assert resp.status == 200 and "Your reply was sent" in await resp.text()


async def test_internal_recipient_with_the_mailbox_copy_gets_a_link_to_reply_securely(
        lab, relays, portal_client) -> None:
    """All Recipients requested by the sender (subject tag): internal recipients get the
    message in their mailbox, and their banner carries a personal portal link, so they can
    still reply securely."""
    relay = await relays(make_model(lab), replace(FAST, portal_url=PUBLIC))
    pc = await portal_client(spool=relay.spool, relay=("127.0.0.1", relay.port))
    tag = token()
    alice, bob, carol = (f"alice-{tag}@corp.example", f"bob-{tag}@corp.example",
                         f"carol-{tag}@corp.example")
    body = (f"From: {alice}\r\nTo: {bob}, {carol}\r\n"
            f"Subject: [secure:All Recipients] Payroll {tag}\r\n"
            f"Message-ID: <{tag}@corp.example>\r\n\r\nsalaries {tag}\r\n").encode()
    held = await send(relay.port, alice, [bob, carol], body)
    await relay.wait_status(held, "delivered")
    copies = {}
    for reader in (bob, carol):
        copies[reader] = text_of(await mail_to(lab, reader, f"salaries {tag}"))
        assert copies[reader].startswith(f"This message was sent securely by {alice}")
    links = {r: re.search(re.escape(PUBLIC) + r"(/m/[0-9A-F]+/[A-Za-z0-9_-]{43})", t)
             for r, t in copies.items()}
    assert all(links.values()) and links[bob].group(1) != links[carol].group(1)  # personal
    assert f"salaries {tag}" in copies[bob]
    await read_and_reply(lab, pc, "/secure" + links[bob].group(1), bob, tag)
    reply = text_of(await mail_to(lab, alice, f"answer {tag}"))
    assert reply.startswith(f"This message was sent securely by {bob}")
