"""The portal over HTTP (aiohttp's test server, a real SMTP sink as the relay): the flow,
and each refusal."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from connectwiz.errors import UserError
from connectwiz.portal.limits import Limits
from connectwiz.relay.held import HeldStore, load_secure_key, revoke_held
from connectwiz.relay.spool import Spool
from tests.portal.conftest import READER, SENDER, hold, mime

pytestmark = pytest.mark.network


def record(spool, held: str) -> dict:
    return json.loads((spool / "secure" / held / "record.json").read_text())


async def test_link_asks_for_a_code_then_shows_the_message(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t1"))
    link = pc.link(held, tokens[READER])
    resp = await pc.client.get(link)
    page = await resp.text()
    assert resp.status == 200
    assert "Confidential payload" not in page and "Statement t1" not in page
    assert "t****@bank.example" in page and SENDER in page

    await pc.sign_in(sink, held, tokens[READER])
    [(mail_from, rcpts, _)] = sink.messages
    assert mail_from == "<>" and rcpts == [READER]  # the code, from the null sender
    resp = await pc.client.get(link)
    page = await resp.text()
    assert resp.status == 200
    assert "Statement t1" in page and "Confidential payload t1" in page and SENDER in page
    assert record(pc.spool, held)["recipients"][0]["first_viewed_at"] is not None


async def test_tampered_or_unknown_links_are_refused_alike(portal_client) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t2"))
    token = tokens[READER]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for path in (pc.link(held, tampered), pc.link("0000DEAD", token),
                 pc.link(held, "short"), pc.link(held.lower() + "!", token)):
        resp = await pc.client.get(path)
        assert resp.status == 404, path
        assert "This link is not valid" in await resp.text()


async def test_expired_link_says_so_and_deletes_the_content(portal_client) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t3"), expires_in=timedelta(seconds=-1))
    body = pc.spool / "secure" / held / "message.enc"
    assert body.is_file()
    resp = await pc.client.get(pc.link(held, tokens[READER]))
    assert resp.status == 410 and "This message has expired" in await resp.text()
    assert not body.exists()


async def test_sweep_deletes_expired_content_without_a_visit(portal_client) -> None:
    pc = await portal_client()
    old, _ = hold(pc.spool, mime("t4a"), expires_in=timedelta(seconds=-1))
    live, _ = hold(pc.spool, mime("t4b"))
    assert pc.portal.sweep() == [old]
    assert not (pc.spool / "secure" / old / "message.enc").exists()
    assert (pc.spool / "secure" / live / "message.enc").exists()


async def test_revoked_message_is_refused(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t5"))
    await pc.sign_in(sink, held, tokens[READER])
    revoke_held(HeldStore(Spool(pc.spool)), held, datetime.now(UTC))
    resp = await pc.client.get(pc.link(held, tokens[READER]))
    assert resp.status == 410 and "withdrawn" in await resp.text()


async def test_forms_without_a_valid_csrf_token_are_refused(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t6"))
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link)
    for data in ({}, {"_csrf": "0" * 64}, {"_csrf": csrf[:-1] + ("1" if csrf[-1] == "0" else "0")}):
        resp = await pc.client.post(link + "/code", data=data, allow_redirects=False)
        assert resp.status == 403 and "This form has expired" in await resp.text()
    assert sink.messages == []
    # A token from another browser (another CSRF cookie) does not work either.
    pc.client.session.cookie_jar.clear()
    resp = await pc.client.post(link + "/code", data={"_csrf": csrf}, allow_redirects=False)
    assert resp.status == 403


async def test_three_wrong_codes_burn_the_code(portal_client, sink) -> None:
    pc = await portal_client(limits=Limits(backoff=0))  # backing off has its own test
    held, tokens = hold(pc.spool, mime("t7"))
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link)
    await pc.client.post(link + "/code", data={"_csrf": csrf})
    code = await sink.wait_code(READER)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    pages = []
    for _ in range(3):
        resp = await pc.client.post(link + "/verify", data={"_csrf": csrf, "code": wrong})
        assert resp.status == 400
        pages.append(await resp.text())
    assert "2 tries left" in pages[0] and "1 try left" in pages[1]
    assert "Three wrong codes" in pages[2]
    resp = await pc.client.post(link + "/verify", data={"_csrf": csrf, "code": code},
                                allow_redirects=False)
    assert resp.status == 400 and "no valid code" in await resp.text()
    assert "Confidential payload" not in await (await pc.client.get(link)).text()
    # A new code works.
    await pc.client.post(link + "/code", data={"_csrf": csrf})
    fresh = await sink.wait_code(READER, 2)
    resp = await pc.client.post(link + "/verify", data={"_csrf": csrf, "code": fresh},
                                allow_redirects=False)
    assert resp.status == 303


async def test_a_code_works_once_and_only_for_its_own_message(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t8"))
    other, other_tokens = hold(pc.spool, mime("t8b"))
    await pc.sign_in(sink, held, tokens[READER])
    code = await sink.wait_code(READER)
    link = pc.link(held, tokens[READER])
    pc.client.session.cookie_jar.clear()  # a new browser, without the session
    csrf = await pc.csrf(link)
    resp = await pc.client.post(link + "/verify", data={"_csrf": csrf, "code": code})
    assert resp.status == 400  # used already
    # A session for one message does not open another.
    await pc.sign_in(sink, held, tokens[READER])
    page = await (await pc.client.get(pc.link(other, other_tokens[READER]))).text()
    assert "Send me a code" in page and "t8b" not in page


async def test_code_requests_are_rate_limited(portal_client, sink) -> None:
    pc = await portal_client(codes_per_recipient=2, codes_per_ip=4)
    held, tokens = hold(pc.spool, mime("t9"))
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link)
    statuses = [(await pc.client.post(link + "/code", data={"_csrf": csrf},
                                      allow_redirects=False)).status for _ in range(3)]
    assert statuses == [303, 303, 429]
    assert len(sink.messages) == 2
    # Per client IP (every request counts, refused ones too): another message, same client.
    other, other_tokens = hold(pc.spool, mime("t9b"))
    olink = pc.link(other, other_tokens[READER])
    statuses = [(await pc.client.post(olink + "/code", data={"_csrf": csrf},
                                      allow_redirects=False)).status for _ in range(2)]
    assert statuses == [303, 429]


async def test_code_attempts_are_rate_limited_per_ip(portal_client, sink) -> None:
    pc = await portal_client(attempts_per_ip=2)
    held, tokens = hold(pc.spool, mime("t10"))
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link)
    await pc.client.post(link + "/code", data={"_csrf": csrf})
    code = await sink.wait_code(READER)
    statuses = [(await pc.client.post(link + "/verify", data={"_csrf": csrf, "code": "1"})
                 ).status for _ in range(2)]
    resp = await pc.client.post(link + "/verify", data={"_csrf": csrf, "code": code},
                                allow_redirects=False)
    assert statuses == [400, 400] and resp.status == 429


async def test_content_pages_need_a_session(portal_client) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t11", attachment=("a.txt", "text/plain", b"x")))
    link = pc.link(held, tokens[READER])
    for tail in ("/print", "/attachment/0", "/reply", "/reply?all=1"):
        resp = await pc.client.get(link + tail, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == link, tail
    csrf = await pc.csrf(link)
    resp = await pc.client.post(link + "/reply", data={"_csrf": csrf, "text": "hi"},
                                allow_redirects=False)
    assert resp.status == 303


async def test_reply_goes_to_the_sender_through_the_relay_as_secure(portal_client,
                                                                   sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t12"))
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    page = await (await pc.client.get(link)).text()
    assert 'href="' + link + '/reply"' in page and 'reply?all=1"' not in page
    csrf = await pc.csrf(link + "/reply")
    resp = await pc.client.post(link + "/reply", data={
        "_csrf": csrf, "subject": "Re: Statement t12", "text": "Thanks, answer t12"})
    assert resp.status == 200 and "Your reply was sent" in await resp.text()
    mail_from, rcpts, _ = sink.messages[-1]
    assert mail_from == SENDER and rcpts == [SENDER]
    [reply] = sink.to(SENDER)
    assert reply["From"] == READER and reply["X-Connectwiz-Secure"] == "Confidential 7d"
    assert reply["In-Reply-To"] == "<t12@corp.example>"
    assert "Thanks, answer t12" in reply.get_content()


async def test_reply_all_goes_to_the_header_recipients_never_the_bccs(portal_client,
                                                                       sink) -> None:
    pc = await portal_client()
    other, hidden = "auditor@audit.example", "hidden@else.example"
    # Cc: auditor. Bcc'd (envelope only): hidden (held, external) and bob (delivered with
    # the banner, internal; the hold() helper puts him there).
    held, tokens = hold(pc.spool, mime("t13", cc=f"Auditor <{other}>"),
                        recipients=(READER, other, hidden), allow_reply_all=True)
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    form = await (await pc.client.get(link + "/reply?all=1")).text()
    assert other in form and hidden not in form and "bob@corp.example" not in form
    csrf = await pc.csrf(link + "/reply?all=1")
    resp = await pc.client.post(link + "/reply", data={
        "_csrf": csrf, "all": "1", "subject": "Re: x", "text": "to everyone"})
    assert resp.status == 200
    assert hidden not in await resp.text()
    mail_from, rcpts, data = sink.messages[-1]
    assert mail_from == SENDER
    assert sorted(rcpts) == sorted([SENDER, other])  # never the reader, never a Bcc
    assert b"hidden@" not in data and b"bob@" not in data


async def test_reply_refused_when_the_definition_forbids_it(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t14"), allow_reply=False, allow_reply_all=False,
                        allow_print=False)
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    page = await (await pc.client.get(link)).text()
    assert "/reply" not in page and "/print" not in page
    assert '<body class="no-print">' in page
    sent = len(sink.messages)
    for everyone in ("", "1"):
        resp = await pc.client.get(link + "/reply" + ("?all=1" if everyone else ""))
        assert resp.status == 403
        csrf = await pc.csrf(link)
        resp = await pc.client.post(link + "/reply", data={"_csrf": csrf, "all": everyone,
                                                           "text": "sneaky"})
        assert resp.status == 403 and "not allowed" in await resp.text()
    resp = await pc.client.get(link + "/print")
    assert resp.status == 403
    assert len(sink.messages) == sent


async def test_reply_all_refused_when_only_reply_is_allowed(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t15"))
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link)
    resp = await pc.client.post(link + "/reply", data={"_csrf": csrf, "all": "1",
                                                       "text": "x"})
    assert resp.status == 403


async def test_html_is_sanitised(portal_client, sink) -> None:
    pc = await portal_client()
    html = ('<html><body><p onclick="steal()">Hello <b>t16</b></p>'
            '<script>alert(1)</script><iframe src="http://evil.test"></iframe>'
            '<a href="javascript:alert(2)">x</a><a href="https://ok.test/">ok</a></body></html>')
    held, tokens = hold(pc.spool, mime("t16", html=html))
    await pc.sign_in(sink, held, tokens[READER])
    page = await (await pc.client.get(pc.link(held, tokens[READER]))).text()
    assert "Hello <b>t16</b>" in page
    for bad in ("<script", "onclick", "<iframe", "javascript:"):
        assert bad not in page, bad
    assert 'rel="noopener noreferrer"' in page


async def test_attachment_downloads_safely(portal_client, sink) -> None:
    pc = await portal_client()
    data = b"<html><script>alert(1)</script></html>"
    held, tokens = hold(pc.spool, mime("t17", attachment=("../../etc/pass wd.html",
                                                           "text/html", data)))
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    page = await (await pc.client.get(link)).text()
    assert "pass wd.html" in page
    resp = await pc.client.get(link + "/attachment/0")
    assert resp.status == 200 and await resp.read() == data
    assert resp.headers["Content-Type"].startswith("text/html")
    disposition = resp.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="pass wd.html"')
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Content-Security-Policy"] == "sandbox"
    assert (await pc.client.get(link + "/attachment/7")).status == 404


async def test_security_headers_and_cookie_flags(portal_client) -> None:
    pc = await portal_client(insecure_cookies=False)
    held, tokens = hold(pc.spool, mime("t18"))
    resp = await pc.client.get(pc.link(held, tokens[READER]))
    h = resp.headers
    assert "default-src 'self'" in h["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in h["Content-Security-Policy"]
    assert "script-src" not in h["Content-Security-Policy"]  # default-src 'self': no inline
    assert h["X-Frame-Options"] == "DENY" and h["Referrer-Policy"] == "no-referrer"
    assert h["Cache-Control"] == "no-store" and h["X-Content-Type-Options"] == "nosniff"
    cookie = h["Set-Cookie"]
    # __Host-: a sibling subdomain cannot plant it; that prefix needs Secure and Path=/.
    assert cookie.startswith("__Host-cwz_csrf=") and "HttpOnly" in cookie
    assert "Secure" in cookie and "SameSite=Strict" in cookie and "Path=/;" in cookie
    assert h["Server"] == "connectwiz"  # no aiohttp or Python version
    assert "<script" not in await resp.text()


async def test_read_receipt_sent_once_on_first_view(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t19"), read_receipt=True)
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    for _ in range(2):
        assert (await pc.client.get(link)).status == 200
    receipts = sink.to(SENDER)
    assert len(receipts) == 1 and receipts[0]["Subject"] == "Read: Statement t19"
    assert READER in receipts[0].get_content()
    # It points the sender at their own page in the portal.
    assert "http://127.0.0.1/secure/sender" in receipts[0].get_content()
    assert sink.messages[-1][0] == "<>"
    slot = record(pc.spool, held)["recipients"][0]
    assert slot["read_receipt_sent"] is True


async def test_no_receipt_when_the_definition_does_not_ask(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t20"))
    await pc.sign_in(sink, held, tokens[READER])
    await pc.client.get(pc.link(held, tokens[READER]))
    assert sink.to(SENDER) == []


async def test_relay_down_gives_a_clear_page(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t21"))
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link)
    sink.refuse = True
    resp = await pc.client.post(link + "/code", data={"_csrf": csrf})
    assert resp.status == 503 and "could not be sent" in await resp.text()


async def test_logs_hold_no_token_code_or_content(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t22"), read_receipt=True, allow_reply=True)
    token = tokens[READER]
    link = pc.link(held, token)
    await pc.client.get(pc.link(held, token[:-1] + "x"))
    await pc.sign_in(sink, held, token)
    code = await sink.wait_code(READER)
    await pc.client.get(link)
    csrf = await pc.csrf(link + "/reply")
    await pc.client.post(link + "/reply", data={"_csrf": csrf, "text": "secret answer t22"})
    logs = pc.logs.getvalue()
    events = [json.loads(line)["event"] for line in logs.splitlines()]
    assert {"code-sent", "code-checked", "read-receipt-sent", "reply-sent", "link-refused",
            "http"} <= set(events)
    for secret in (token, token[:20], code, "Confidential payload", "Statement t22",
                   "secret answer", csrf):
        assert secret not in logs, secret


async def test_wrong_key_is_a_clear_error(portal_client, tmp_path) -> None:
    key = tmp_path / "other.key"
    load_secure_key(key)
    pc = await portal_client()
    held, _ = hold(pc.spool, mime("t23"), key_file=key)
    with pytest.raises(UserError, match="cannot be decrypted"):
        pc.portal.store.read_body(held)


async def test_damaged_content_is_a_clear_page_not_a_traceback(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t24"))
    await pc.sign_in(sink, held, tokens[READER])
    body = pc.spool / "secure" / held / "message.enc"
    body.write_bytes(body.read_bytes()[:-4] + b"XXXX")
    resp = await pc.client.get(pc.link(held, tokens[READER]))
    assert resp.status == 500 and "cannot be shown" in await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    assert "cannot be decrypted" in pc.logs.getvalue()


async def test_static_css_is_served_and_cacheable(portal_client) -> None:
    pc = await portal_client()
    resp = await pc.client.get("/secure/static/portal.css")
    assert resp.status == 200 and "focus-visible" in await resp.text()
    assert resp.headers["Cache-Control"].startswith("public")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert (await pc.client.get("/secure/static/../app.py")).status == 404


async def test_a_stray_request_does_not_replace_the_forms_csrf_cookie(portal_client,
                                                                       sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t25"))
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link)
    resp = await pc.client.get("/secure/favicon.ico")  # the CSRF cookie goes along: /secure/
    assert resp.status == 404 and "Set-Cookie" not in resp.headers
    pc.client.session.cookie_jar.clear()
    csrf = await pc.csrf(link)
    resp = await pc.client.get("/favicon.ico")  # outside the cookie's path
    assert "Set-Cookie" not in resp.headers
    resp = await pc.client.post(link + "/code", data={"_csrf": csrf}, allow_redirects=False)
    assert resp.status == 303


async def test_signed_in_code_request_goes_to_the_message_without_a_mail(portal_client,
                                                                          sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t26"))
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    sent = len(sink.messages)
    csrf = await pc.csrf(link)
    resp = await pc.client.post(link + "/code", data={"_csrf": csrf}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == link
    assert len(sink.messages) == sent


async def test_sign_out_ends_the_session(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t27"))
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link)
    resp = await pc.client.post(link + "/signout", data={"_csrf": csrf})
    assert resp.status == 200 and "signed out" in await resp.text()
    page = await (await pc.client.get(link)).text()
    assert "Send me a code" in page and "Confidential payload" not in page


async def test_empty_reply_is_refused_with_the_form_again(portal_client, sink) -> None:
    pc = await portal_client()
    held, tokens = hold(pc.spool, mime("t28"))
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    sent = len(sink.messages)
    csrf = await pc.csrf(link + "/reply")
    resp = await pc.client.post(link + "/reply", data={"_csrf": csrf, "text": "  \n "})
    assert resp.status == 400 and "Write a message first" in await resp.text()
    assert len(sink.messages) == sent


async def test_print_view_when_the_definition_allows_it(portal_client, sink) -> None:
    pc = await portal_client()
    html = "<html><body><p>Printable <b>t29</b></p><script>x()</script></body></html>"
    held, tokens = hold(pc.spool, mime("t29", html=html,
                                       attachment=("a.pdf", "application/pdf", b"%PDF")))
    await pc.sign_in(sink, held, tokens[READER])
    link = pc.link(held, tokens[READER])
    page = await (await pc.client.get(link)).text()
    assert f'href="{link}/print"' in page and '<body class="no-print">' not in page
    resp = await pc.client.get(link + "/print")
    printed = await resp.text()
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    assert '<body class="print-view">' in printed and "Statement t29" in printed
    assert "Printable <b>t29</b>" in printed and "<script" not in printed
    assert SENDER in printed and "Attachments: a.pdf" in printed


@pytest.mark.parametrize("behind_proxy", [False, True])
async def test_rate_limits_use_x_forwarded_for_only_behind_a_proxy(portal_client,
                                                                   behind_proxy: bool) -> None:
    pc = await portal_client(attempts_per_ip=1, behind_proxy=behind_proxy)
    held, tokens = hold(pc.spool, mime("t30"))
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link)

    async def attempt(forwarded: str) -> int:
        resp = await pc.client.post(link + "/verify", data={"_csrf": csrf, "code": "1"},
                                    headers={"X-Forwarded-For": forwarded})
        return resp.status

    # The proxy appends the client it saw: only the last hop counts, not what the client
    # wrote itself. Without --behind-proxy the header is ignored (anyone can send one).
    assert await attempt("203.0.113.7") == 400
    assert await attempt("198.51.100.9, 203.0.113.7") == 429
    assert await attempt("203.0.113.8") == (400 if behind_proxy else 429)
