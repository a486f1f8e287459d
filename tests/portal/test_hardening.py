"""What an attacker and a first-time recipient found (issue 12), over HTTP: aiohttp's test
server, a real SMTP sink on loopback as the relay, records and counters in a real spool.
``portal_client()`` called twice serves the same spool and key from a new Portal: that is
what a restart leaves behind."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import pytest

from connectwiz.portal.app import Portal, PortalConfig
from connectwiz.portal.content import MAX_MULTIPARTS
from connectwiz.portal.limits import Limits
from connectwiz.relay.events import EventLog
from connectwiz.relay.held import HeldStore, extend_held, load_secure_key
from connectwiz.relay.spool import Spool
from tests.portal.conftest import READER, SENDER, hold, mime, nested

pytestmark = pytest.mark.network


def record(spool, held: str) -> dict:
    return json.loads((spool / "secure" / held / "record.json").read_text())


async def wrong_code(pc, link: str, csrf: str, code: str) -> tuple[int, str]:
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    resp = await pc.client.post(link + "/verify", data={"_csrf": csrf, "code": wrong})
    return resp.status, await resp.text()


# -- 3. a lifetime cap on code guesses, kept on disk ------------------------------------------

async def test_burnt_codes_lock_the_link_across_restarts_until_extend(portal_client,
                                                                      sink) -> None:
    limits = Limits(backoff=0, lock_after=2)
    pc = await portal_client(limits=limits)
    held, tokens = hold(pc.spool, mime("h1"))
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link)
    await pc.client.post(link + "/code", data={"_csrf": csrf})
    code = await sink.wait_code(READER, 1)
    for _ in range(3):
        status, page = await wrong_code(pc, link, csrf, code)
    assert status == 400 and "Three wrong codes" in page
    # A restart used to reset every counter: the next code got three fresh tries forever.
    pc = await portal_client(limits=limits)
    csrf = await pc.csrf(link)
    await pc.client.post(link + "/code", data={"_csrf": csrf})
    code = await sink.wait_code(READER, 2)
    statuses = [(await wrong_code(pc, link, csrf, code))[0] for _ in range(3)]
    assert statuses == [400, 400, 403]
    slot = record(pc.spool, held)["recipients"][0]
    assert slot["wrong_codes"] == 6 and slot["locked_at"]
    sent = len(sink.messages)
    for path in ("", "/code"):
        resp = await pc.client.get(link + path)
        assert resp.status == 403 and "This link is locked" in await resp.text()
    resp = await pc.client.post(link + "/code", data={"_csrf": csrf})
    assert resp.status == 403 and len(sink.messages) == sent  # no more codes go out
    # The admin's `connectwiz secure extend` gives the recipient a fresh set of guesses.
    store = HeldStore(Spool(pc.spool))
    store.update(held, lambda r: r.update(limit_at="2999-01-01T00:00:00Z"))
    extend_held(store, held, 1, datetime.now(UTC))
    resp = await pc.client.get(link)
    assert resp.status == 200 and "Send me a code" in await resp.text()


async def test_a_burnt_code_means_waiting_before_the_next(portal_client, sink) -> None:
    pc = await portal_client(limits=Limits(backoff=600))
    held, tokens = hold(pc.spool, mime("h2"))
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link)
    await pc.client.post(link + "/code", data={"_csrf": csrf})
    code = await sink.wait_code(READER)
    for _ in range(3):
        page = (await wrong_code(pc, link, csrf, code))[1]
    assert "You can ask for a new code in 10 minutes" in page
    sent = len(sink.messages)
    pc = await portal_client(limits=Limits(backoff=600))  # a restart does not lift it
    csrf = await pc.csrf(link)
    resp = await pc.client.post(link + "/code", data={"_csrf": csrf})
    page = await resp.text()
    assert resp.status == 429 and "ask for a new code in 10 minutes" in page
    assert len(sink.messages) == sent


# -- 2. replies are limited per recipient and per message --------------------------------------

async def test_replies_are_limited_per_recipient_and_message_across_restarts(
        portal_client, sink) -> None:
    limits = Limits(replies_per_hour=2, replies_per_message=3)
    pc = await portal_client(limits=limits)
    other = "auditor@audit.example"
    held, tokens = hold(pc.spool, mime("h3", cc=other), recipients=(READER, other),
                        allow_reply_all=True)

    async def reply(pc, token: str, address: str) -> int:
        link = pc.link(held, token)
        csrf = await pc.csrf(link + "/reply?all=1")
        resp = await pc.client.post(link + "/reply", data={
            "_csrf": csrf, "all": "1", "subject": "Re: x", "text": "again"})
        return resp.status

    await pc.sign_in(sink, held, tokens[READER])
    assert [await reply(pc, tokens[READER], READER) for _ in range(3)] == [200, 200, 429]
    replies = [m for m in sink.messages if m[0] == SENDER]
    assert len(replies) == 2
    pc = await portal_client(limits=limits)  # a restart keeps the count
    await pc.sign_in(sink, held, tokens[READER])
    assert await reply(pc, tokens[READER], READER) == 429
    # The other recipient has their own hourly allowance, but the message's is nearly spent.
    await pc.sign_in(sink, held, tokens[other], other)
    assert [await reply(pc, tokens[other], other) for _ in range(2)] == [200, 429]
    assert len([m for m in sink.messages if m[0] == SENDER]) == 3
    assert record(pc.spool, held)["replies_sent"] == 3


async def test_a_reply_the_relay_refuses_does_not_count(portal_client, sink) -> None:
    pc = await portal_client(limits=Limits(replies_per_hour=1))
    held, tokens = hold(pc.spool, mime("h4"))
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link + "/reply")
    sink.refuse = True
    resp = await pc.client.post(link + "/reply", data={"_csrf": csrf, "text": "hi"})
    assert resp.status == 503
    sink.refuse = False
    resp = await pc.client.post(link + "/reply", data={"_csrf": csrf, "text": "hi"})
    assert resp.status == 200


# -- 4. control characters in the headers the portal writes ------------------------------------

@pytest.mark.parametrize("encoded", ["=0D=0A", "=0B", "=0C", "=C2=85", "=E2=80=A8"],
                         ids=["crlf", "vt", "ff", "nel", "u2028"])
async def test_subjects_with_line_breaks_never_break_the_page_or_the_receipt(
        portal_client, sink, encoded: str) -> None:
    pc = await portal_client()
    raw = mime("h5").replace(b"Subject: Statement h5",
                             f"Subject: =?utf-8?q?Pay{encoded}Bcc:_x@evil.example?=".encode())
    held, tokens = hold(pc.spool, raw, read_receipt=True)
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    for _ in range(2):
        resp = await pc.client.get(link)
        assert resp.status == 200 and "Confidential payload h5" in await resp.text()
    [receipt] = sink.to(SENDER)
    assert receipt["Subject"] == "Read: Pay Bcc: x@evil.example"
    assert "x@evil.example" not in {a.addr_spec for h in ("To", "Cc", "Bcc")
                                    for a in getattr(receipt[h], "addresses", ())}
    assert record(pc.spool, held)["recipients"][0]["read_receipt_sent"] is True


async def test_a_message_id_with_a_line_break_does_not_break_reply(portal_client, sink) -> None:
    pc = await portal_client()
    raw = mime("h6").replace(b"Message-ID: <h6@corp.example>",
                             b"Message-ID: =?utf-8?q?<h6@corp.example>=0D=0ABcc:_x@evil?=")
    held, tokens = hold(pc.spool, raw)
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link + "/reply")
    resp = await pc.client.post(link + "/reply", data={"_csrf": csrf, "text": "answer h6"})
    assert resp.status == 200, await resp.text()
    [reply] = sink.to(SENDER)
    assert "x@evil" not in str(reply)


# -- 5. sign-out on the server; CSRF bound to the session --------------------------------------

async def test_a_copied_session_cookie_dies_at_sign_out(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("h7"))
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    copied = {c.key: c.value for c in pc.client.session.cookie_jar}
    csrf = await pc.csrf(link)
    resp = await pc.client.post(link + "/signout", data={"_csrf": csrf})
    assert resp.status == 200
    pc.client.session.cookie_jar.update_cookies(copied)  # the cookie someone copied
    page = await (await pc.client.get(link)).text()
    assert "Confidential payload h7" not in page and "Send me a code" in page
    # Signing in again works.
    pc.client.session.cookie_jar.clear()
    await pc.sign_in(sink, held, tokens[READER])
    assert "Confidential payload h7" in await (await pc.client.get(link)).text()


async def test_a_form_token_from_outside_the_session_is_refused(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("h8"))
    link = pc.link(held, tokens[READER])
    before = await pc.csrf(link)  # the landing page's token: no session yet
    await pc.sign_in(sink, held, tokens[READER])
    resp = await pc.client.post(link + "/reply", data={"_csrf": before, "text": "forged"})
    assert resp.status == 403 and "This form has expired" in await resp.text()
    assert not sink.to(SENDER)
    fresh = await pc.csrf(link + "/reply")
    resp = await pc.client.post(link + "/reply", data={"_csrf": fresh, "text": "mine"})
    assert resp.status == 200


# -- 6. deep MIME, and any unexpected failure --------------------------------------------------

async def test_deeply_nested_mime_shows_a_notice(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, nested(1200), allow_print=True)
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    for path in ("", "/print"):
        resp = await pc.client.get(link + path)
        page = await resp.text()
        assert resp.status == 200 and "too many nested parts" in page and "Deep" in page
    assert (await pc.client.get(link + "/attachment/0")).status == 404
    # Nesting below the cap still shows.
    held, tokens = hold(pc.spool, nested(MAX_MULTIPARTS - 1))
    await pc.sign_in(sink, held, tokens[READER])
    assert "inside" in await (await pc.client.get(pc.link(held, tokens[READER]))).text()


async def test_an_unexpected_failure_gets_the_portals_page_and_one_log_line(portal_client,
                                                                            sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("h9"))
    await pc.sign_in(sink, held, tokens[READER])
    # Outside damage the code does not expect: a record without its definition.
    store = HeldStore(Spool(pc.spool))
    store.update(held, lambda r: r.pop("definition"))
    resp = await pc.client.get(pc.link(held, tokens[READER]))
    page = await resp.text()
    assert resp.status == 500 and "cannot be shown right now" in page
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Cache-Control"] == "no-store"
    lines = pc.logs.getvalue().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    [error] = [e for e in events if e["event"] == "error"]
    assert error["error"] == "KeyError" and error["route"] == "message"
    assert "Traceback" not in pc.logs.getvalue()


# -- 8. colleagues behind one proxy ------------------------------------------------------------

async def test_one_ip_serves_many_recipients_and_says_truly_whether_a_code_works(
        portal_client, sink) -> None:
    pc = await portal_client()
    colleagues = tuple(f"teller{n}@bank.example" for n in range(15))
    held, tokens = hold(pc.spool, mime("h10"), recipients=colleagues)
    statuses = []
    for address in colleagues:
        link = pc.link(held, tokens[address])
        csrf = await pc.csrf(link)
        resp = await pc.client.post(link + "/code", data={"_csrf": csrf},
                                    allow_redirects=False)
        statuses.append(resp.status)
    assert statuses == [303] * 15  # the 11th colleague used to be refused

    pc = await portal_client(codes_per_recipient=1)
    held, tokens = hold(pc.spool, mime("h11"))
    await pc.sign_in(sink, held, tokens[READER])  # the one code is used up
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link)
    await pc.client.post(link + "/signout", data={"_csrf": csrf})
    csrf = await pc.csrf(link)
    resp = await pc.client.post(link + "/code", data={"_csrf": csrf})
    page = await resp.text()
    assert resp.status == 429 and "No new code was sent" in page and "still works" not in page


# -- 7. what the server says about itself ------------------------------------------------------

async def test_no_version_in_the_server_header(portal_client) -> None:
    pc = await portal_client()
    for path in ("/secure/static/portal.css", "/secure/nowhere"):
        resp = await pc.client.get(path)
        assert resp.headers["Server"] == "connectwiz", path


async def test_error_pages_use_plain_words(portal_client) -> None:
    pc = await portal_client()
    resp = await pc.client.get("/secure/nowhere")
    page = await resp.text()
    assert resp.status == 404 and "This page does not exist" in page
    assert "Not Found" not in page
    resp = await pc.client.put("/secure/m/ABC/" + "x" * 43)
    assert resp.status == 405 and "Method Not Allowed" not in await resp.text()


async def test_what_aiohttp_logs_past_the_middleware_is_one_json_line(
        tmp_path, sink, capsys: pytest.CaptureFixture[str]) -> None:
    load_secure_key()
    (tmp_path / "spool" / "secure").mkdir(parents=True)
    stream = io.StringIO()
    portal = Portal(PortalConfig(spool=tmp_path / "spool", public_url="http://127.0.0.1/s",
                                 relay=("127.0.0.1", sink.port), insecure_cookies=True),
                    EventLog(json_lines=True, stream=stream))
    await portal.start("127.0.0.1", 0)
    try:
        try:
            raise ConnectionResetError("peer went away\nsecond line")
        except ConnectionResetError:
            logging.getLogger("aiohttp.server").exception("Error handling request")
    finally:
        await portal.stop()
    [line] = [json.loads(x) for x in stream.getvalue().splitlines()
              if json.loads(x)["event"] == "http-error"]
    assert line["error"] == "ConnectionResetError" and line["level"] == "error"
    assert "Traceback" not in stream.getvalue() + capsys.readouterr().err
