"""The sender's self-service pages over HTTP: a one-time code to their own address, their
messages with read status and expiry, extend within the definition's limit, revoke."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest

from tests.portal.conftest import READER, SENDER, hold, mime

pytestmark = pytest.mark.network

HOME = "/secure/sender"


async def sign_in_sender(pc, sink, address: str = SENDER) -> None:
    csrf = await pc.csrf(HOME)
    resp = await pc.client.post(HOME + "/code", data={"_csrf": csrf, "address": address})
    assert resp.status == 200
    code = await sink.wait_code(address)
    resp = await pc.client.post(HOME + "/verify", data={
        "_csrf": csrf, "address": address, "code": code}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == HOME


def record(pc, held: str) -> dict:
    return json.loads((pc.spool / "secure" / held / "record.json").read_text())


async def test_sender_signs_in_and_sees_recipients_read_status_and_expiry(
        portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("s1"), recipients=(READER, "ops@partner.example"))
    # The reader opens it: the sender's list shows who has read it.
    await pc.sign_in(sink, held, tokens[READER])
    assert (await pc.client.get(pc.link(held, tokens[READER]))).status == 200
    pc.client.session.cookie_jar.clear()

    page = await (await pc.client.get(HOME)).text()
    assert "Send me a code" in page and "Statement s1" not in page
    await sign_in_sender(pc, sink)
    [code_mail] = [m for m in sink.to(SENDER) if "one-time code" in m.get_content()]
    assert code_mail["Subject"] == "Your code to see your secure messages"
    page = await (await pc.client.get(HOME)).text()
    assert "Statement s1" in page
    assert re.search(rf"{READER}: read ", page)
    assert "ops@partner.example: not read yet" in page
    assert "bob@corp.example: delivered to the mailbox" in page
    assert "readable until" in page


async def test_code_is_sent_only_to_senders_of_secure_mail_and_the_page_says_the_same(
        portal_client, sink) -> None:
    pc = await portal_client()
    hold(pc.spool, mime("s2"))
    csrf = await pc.csrf(HOME)
    stranger = "mallory@corp.example"
    resp = await pc.client.post(HOME + "/code", data={"_csrf": csrf, "address": stranger})
    text = await resp.text()
    assert resp.status == 200 and "m****@corp.example" in text
    assert not sink.to(stranger)
    # A guessed code for someone else's address does not sign in.
    resp = await pc.client.post(HOME + "/verify", data={
        "_csrf": csrf, "address": SENDER, "code": "123456"}, allow_redirects=False)
    assert resp.status == 400
    assert "Statement s2" not in await (await pc.client.get(HOME)).text()


async def test_extend_within_the_limit_and_refused_past_it(portal_client, sink) -> None:
    pc = await portal_client()
    expired, _ = hold(pc.spool, mime("s3x"), expires_in=timedelta(seconds=-1),
                      limit_in=timedelta(days=5))
    held, _ = hold(pc.spool, mime("s3"), max_extension_days=5,
                   expires_in=timedelta(days=7), limit_in=timedelta(days=12))
    record_before = record(pc, held)
    await sign_in_sender(pc, sink)
    page = await (await pc.client.get(HOME)).text()
    assert "at most 5" in page
    csrf = await pc.csrf(HOME)
    resp = await pc.client.post(f"{HOME}/m/{held}/extend", data={"_csrf": csrf, "days": "6"})
    assert resp.status == 400 and "at most 5 more days" in await resp.text()
    resp = await pc.client.post(f"{HOME}/m/{held}/extend", data={"_csrf": csrf, "days": "3"},
                                allow_redirects=False)
    assert resp.status == 303
    after = record(pc, held)
    assert after["extended_days"] == 3 and after["expires_at"] != record_before["expires_at"]
    assert "at most 2" in await (await pc.client.get(HOME)).text()
    # An expired message cannot be brought back, though its limit is not reached.
    resp = await pc.client.post(f"{HOME}/m/{expired}/extend", data={"_csrf": csrf, "days": "1"})
    assert resp.status == 410 and "has expired" in await resp.text()


async def test_revoke_own_message_only(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("s4"))
    other, _ = hold(pc.spool, mime("s5"))
    rec = record(pc, other)
    rec["sender"] = "carol@corp.example"
    (pc.spool / "secure" / other / "record.json").write_text(json.dumps(rec))
    await sign_in_sender(pc, sink)
    assert "Statement s5" not in await (await pc.client.get(HOME)).text()
    csrf = await pc.csrf(HOME)
    resp = await pc.client.post(f"{HOME}/m/{other}/revoke", data={"_csrf": csrf})
    assert resp.status == 404 and record(pc, other)["revoked_at"] is None
    resp = await pc.client.post(f"{HOME}/m/{held}/revoke", data={"_csrf": csrf})
    assert resp.status == 200 and "withdrawn" in await resp.text()
    assert record(pc, held)["revoked_at"] is not None
    assert not (pc.spool / "secure" / held / "message.enc").exists()
    resp = await pc.client.post(f"{HOME}/m/{held}/extend", data={"_csrf": csrf, "days": "1"})
    assert resp.status == 410 and record(pc, held)["extended_days"] == 0
    pc.client.session.cookie_jar.clear()
    resp = await pc.client.get(pc.link(held, tokens[READER]))
    assert resp.status == 410


async def test_sign_out_ends_the_session_even_for_a_copied_cookie(portal_client, sink) -> None:
    pc = await portal_client()
    hold(pc.spool, mime("s6"))
    await sign_in_sender(pc, sink)
    cookie = pc.portal.session_cookie
    copied = next(c.value for c in pc.client.session.cookie_jar if c.key == cookie)
    csrf = await pc.csrf(HOME)
    resp = await pc.client.post(HOME + "/signout", data={"_csrf": csrf})
    assert resp.status == 200
    resp = await pc.client.get(HOME, cookies={cookie: copied})
    assert "Statement s6" not in await resp.text()


async def test_forms_need_the_csrf_token(portal_client, sink) -> None:
    pc = await portal_client()
    held, _ = hold(pc.spool, mime("s7"))
    await sign_in_sender(pc, sink)
    resp = await pc.client.post(f"{HOME}/m/{held}/revoke", data={"_csrf": "0" * 64})
    assert resp.status == 403 and record(pc, held)["revoked_at"] is None
