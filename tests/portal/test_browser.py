"""The whole portal flow in a real headless Chromium (Debian's package, driven by
Playwright) against a real relay and portal on loopback, with the lab as the relay's next
hop: notification → link → code (read from the mail the lab received) → read → reply →
the sender receives it; plus print hidden, expired link, three wrong codes, tampered token.

Screenshots (desktop and phone width) go to $CONNECTWIZ_SCREENSHOTS when it is set."""

from __future__ import annotations

import io
import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email import policy as email_policy
from pathlib import Path
from typing import Any

import pytest

from connectwiz.policy.model import Applies, Scope, SecureDefinition, SecurePolicy
from connectwiz.portal.app import Portal, PortalConfig
from connectwiz.portal.limits import Limits
from connectwiz.relay.events import EventLog
from connectwiz.relay.held import HeldStore, load_secure_key
from connectwiz.relay.spool import Spool
from tests.portal.conftest import CHROMIUM
from tests.relay.conftest import FAST, lab_messages, make_model, send, token, wait_lab

pytestmark = [
    pytest.mark.network,
    pytest.mark.peer,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent (apt-get install chromium; CI installs it)"),
]
CODE = re.compile(r"Your one-time code is: ([0-9]{6})")
DEFINITION = SecureDefinition("Portal test", allow_print=False, allow_reply=True,
                              allow_reply_all=True, read_receipt=True, expiry_days=7)


def text_of(data: bytes) -> str:
    msg = message_from_bytes(data, policy=email_policy.default)
    part = msg.get_body(("plain",))
    return str(part.get_content()) if part is not None else ""


def mails_to(lab: Any, address: str, needle: str = "") -> list[bytes]:
    return [m.data for m in list(lab.messages)
            if address in m.rcpt_tos and needle in m.data.decode("utf-8", "replace")]


async def wait_mail(lab: Any, address: str, needle: str, count: int = 1) -> bytes:
    assert await wait_lab(lab, lambda: len(mails_to(lab, address, needle)) >= count, 15), (
        f"no mail #{count} with {needle!r} for {address}")
    return mails_to(lab, address, needle)[count - 1]


@pytest.fixture
async def stack(lab, relays) -> AsyncIterator[Any]:
    """A relay and a portal sharing a spool and a secure key; the relay's notifications
    link to the portal's URL (its socket is made first, so its port is known). The key
    is the default one, under the test's $XDG_CONFIG_HOME (conftest)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/secure"
    model = replace(make_model(lab), secure_definitions=(DEFINITION,), secure_policies=(
        SecurePolicy("external mail is secure", "Portal test", to=Scope(Applies.EXTERNAL)),))
    relay = await relays(model, replace(FAST, portal_url=url))
    load_secure_key()  # what `connectwiz relay --portal-url` does at start
    portal = Portal(PortalConfig(spool=relay.spool, public_url=url,
                                 relay=("127.0.0.1", relay.port), insecure_cookies=True,
                                 hostname="portal.test", limits=Limits(backoff=0)),
                    EventLog(json_lines=True, stream=io.StringIO()))
    await portal.start("127.0.0.1", 0, sock=sock)
    yield relay, portal, url
    await portal.stop()


async def shoot(page: Any, name: str) -> None:
    folder = os.environ.get("CONNECTWIZ_SCREENSHOTS")
    if folder and folder != "1":  # "1": docs/portal-screenshots, test_browser_recipient's
        Path(folder).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


async def held_link(lab: Any, relay: Any, url: str, rcpts: list[str], tag: str,
                    subject_tag: str = "") -> tuple[str, str]:
    body = (f"From: alice-{tag}@corp.example\r\nTo: {', '.join(rcpts)}\r\n"
            f"Subject: {subject_tag}Statement {tag}\r\nMessage-ID: <{tag}@corp.example>\r\n\r\n"
            f"Account balance payload {tag}\r\n").encode()
    msg_id = await send(relay.port, f"alice-{tag}@corp.example", rcpts, body)
    note = await wait_mail(lab, rcpts[0], url)
    link = re.search(re.escape(url) + r"/m/[0-9A-F]+/[A-Za-z0-9_-]{43}", text_of(note))
    assert link, text_of(note)
    return msg_id, link.group(0)


async def enter_code(page: Any, lab: Any, address: str, link: str, count: int) -> None:
    await page.wait_for_url(link + "/code")
    code = CODE.search(text_of(await wait_mail(lab, address, "one-time code", count)))
    assert code
    await page.get_by_label("One-time code").fill(code.group(1))
    await page.keyboard.press("Enter")
    await page.wait_for_url(link)


async def sign_in(page: Any, lab: Any, address: str, link: str) -> None:
    await page.goto(link)
    button = page.get_by_role("button", name="Send me a code")
    await button.focus()
    await page.keyboard.press("Enter")  # keyboard only
    await enter_code(page, lab, address, link, 1)


async def test_notification_link_code_read_reply_all(lab, stack, browser) -> None:
    relay, portal, url = stack
    tag = token()
    teller, other = f"teller-{tag}@trusted.example", f"other-{tag}@trusted.example"
    bob, alice = f"bob-{tag}@corp.example", f"alice-{tag}@corp.example"
    _, link = await held_link(lab, relay, url, [teller, other, bob], tag)

    page = await browser.new_page()
    await page.goto(link)
    assert f"Account balance payload {tag}" not in await page.content()
    await shoot(page, "landing-desktop")
    await sign_in(page, lab, teller, link)

    await page.get_by_role("heading", name=f"Statement {tag}").wait_for()
    assert f"Account balance payload {tag}" in await page.inner_text("main")
    assert alice in await page.inner_text("dl.headers")
    # Print is not allowed by the definition: no Print button, and printing shows a notice.
    assert await page.get_by_role("link", name="Print").count() == 0
    await page.emulate_media(media="print")
    assert await page.locator(".print-refused").is_visible()
    assert not await page.locator("article.message").is_visible()
    await page.emulate_media(media="screen")
    await shoot(page, "message-desktop")
    await page.set_viewport_size({"width": 390, "height": 844})
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    await shoot(page, "message-phone")
    await page.set_viewport_size({"width": 1280, "height": 800})

    # The read receipt reached the sender, once.
    receipt = await wait_mail(lab, alice, f"Read: Statement {tag}")
    assert teller in text_of(receipt)

    # Reply all: the sender and bob (internal) get it in their mailbox with the banner;
    # the other external recipient gets it held, through a new notification.
    await page.get_by_role("link", name="Reply all").click()
    await page.get_by_label("Message").fill(f"Reply text {tag}")
    await shoot(page, "reply-desktop")
    await page.get_by_role("button", name="Send").click()
    await page.get_by_role("heading", name="Your reply was sent").wait_for()
    got = await wait_mail(lab, alice, f"Reply text {tag}")
    # The banner: Secure Messaging applied, and it names who wrote the reply.
    assert f"sent securely by {teller}" in text_of(got)
    parsed = message_from_bytes(got, policy=email_policy.default)
    assert parsed["From"] == teller and parsed["In-Reply-To"] == f"<{tag}@corp.example>"
    assert "X-Connectwiz-Secure" not in parsed  # the relay removed the client header
    await wait_mail(lab, bob, f"Reply text {tag}")
    await wait_mail(lab, other, url, count=2)  # the reply's own notification
    assert not mails_to(lab, other, f"Reply text {tag}")
    assert not [m for m in lab_messages(lab, f"Account balance payload {tag}")
                if teller in m.rcpt_tos or other in m.rcpt_tos]
    assert len(mails_to(lab, alice, f"Read: Statement {tag}")) == 1
    # The portal's log has what happened, never the token, the code or the content.
    logs = portal.log.stream.getvalue()
    assert "reply-sent" in logs and "code-checked" in logs
    for secret in (link.rsplit("/", 1)[-1], f"Account balance payload {tag}",
                   f"Statement {tag}", f"Reply text {tag}"):
        assert secret not in logs, secret


async def test_expired_tampered_and_wrong_codes(lab, stack, browser) -> None:
    relay, _, url = stack
    tag = token()
    teller = f"teller-{tag}@trusted.example"
    msg_id, link = await held_link(lab, relay, url, [teller], tag)
    page = await browser.new_page()

    # A tampered token.
    last = link[-1]
    await page.goto(link[:-1] + ("A" if last != "A" else "B"))
    assert "This link is not valid" in await page.inner_text("h1")

    # Three wrong codes burn the code.
    await page.goto(link)
    await page.get_by_role("button", name="Send me a code").click()
    code = CODE.search(text_of(await wait_mail(lab, teller, "one-time code")))
    wrong = f"{(int(code.group(1)) + 1) % 10**6:06d}"
    for _ in range(3):
        await page.get_by_label("One-time code").fill(wrong)
        await page.get_by_role("button", name="Open the message").click()
        await page.locator(".error").wait_for()
    assert "Three wrong codes" in await page.inner_text(".error")
    assert await page.get_by_label("One-time code").count() == 0
    await shoot(page, "wrong-codes-desktop")
    # The right code no longer works; a new one does.
    await page.get_by_role("button", name="Send me a new code").click()
    await enter_code(page, lab, teller, link, 2)
    assert f"Account balance payload {tag}" in await page.inner_text("main")

    # Expired: the link says so and the content is deleted.
    store = HeldStore(Spool(relay.spool))
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat(timespec="seconds")

    def expire(record: dict[str, Any]) -> None:
        record["expires_at"] = past.replace("+00:00", "Z")

    store.update(msg_id, expire)
    await page.goto(link)
    assert "This message has expired" in await page.inner_text("h1")
    assert not (relay.spool / "secure" / msg_id / "message.enc").exists()
    await shoot(page, "expired-desktop")
