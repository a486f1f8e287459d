"""What a first-time external recipient (and an attacker) sees, in a real headless Chromium
(Debian's package, driven by Playwright) against the real portal on loopback, with a real
SMTP sink standing in for the relay. Each test walks through some of the portal's states.

With ``CONNECTWIZ_SCREENSHOTS=1`` every state is also saved at 390 px (phone) and 1280 px
(desktop) into docs/portal-screenshots/ (another value names another folder); pngquant
makes them small when it is installed. docs/portal.md shows them."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectwiz.portal.app import Portal, PortalConfig
from connectwiz.portal.limits import Limits
from connectwiz.relay.events import EventLog
from connectwiz.relay.held import HeldStore, load_secure_key, revoke_held
from connectwiz.relay.spool import Spool
from tests.portal.conftest import CHROMIUM, CODE, READER, SENDER, Sink, hold, mime, nested, png

pytestmark = [
    pytest.mark.network,
    pytest.mark.peer,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent (apt-get install chromium; CI installs it)"),
]
ORG = "Corp Bank"
PHONE, DESKTOP = {"width": 390, "height": 844}, {"width": 1280, "height": 800}
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "portal-screenshots"


@dataclass
class Stack:
    portal: Portal
    url: str  # http://127.0.0.1:<port>/secure
    spool: Path
    sink: Sink

    def link(self, held: str, token: str) -> str:
        return f"{self.url}/m/{held}/{token}"


@pytest.fixture
async def stack(tmp_path: Path, sink: Sink) -> AsyncIterator[Stack]:
    spool = tmp_path / "spool"
    (spool / "secure").mkdir(parents=True)
    logo = tmp_path / "logo.png"
    logo.write_bytes(png(48, 24, (31, 95, 191)))
    load_secure_key()  # the relay's set-up makes it; the portal only reads it
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/secure"
    portal = Portal(PortalConfig(spool=spool, public_url=url, relay=("127.0.0.1", sink.port),
                                 insecure_cookies=True, hostname="portal.test",
                                 organisation=ORG, logo=logo,
                                 limits=Limits(lock_after=2, backoff=0, replies_per_hour=1)),
                    EventLog(json_lines=True, stream=io.StringIO()))
    await portal.start("127.0.0.1", 0, sock=sock)
    yield Stack(portal, url, spool, sink)
    await portal.stop()


async def state(page: Any, name: str) -> None:
    """Check what every page must have, then keep a phone and a desktop screenshot when
    asked to: the organisation's name and logo, and no sideways scrolling on a phone."""
    assert ORG in await page.inner_text("header.bar")
    assert await page.evaluate("document.querySelector('img.logo').naturalWidth") == 48
    setting = os.environ.get("CONNECTWIZ_SCREENSHOTS")
    folder = SHOTS if setting == "1" else Path(setting) if setting else None
    await page.set_viewport_size(PHONE)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{name}: the page scrolls sideways on a phone ({width}px)"
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for size, viewport in (("390", PHONE), ("1280", DESKTOP)):
            await page.set_viewport_size(viewport)
            path = folder / f"{name}-{size}.png"
            await page.screenshot(path=str(path))
            if shutil.which("pngquant"):  # ~5x smaller; the docs keep them in git
                subprocess.run(["pngquant", "--force", "--skip-if-larger", "--quality=40-80",
                                "--output", str(path), str(path)], check=False)
    await page.set_viewport_size(DESKTOP)


async def ask_code(page: Any, stack: Stack, address: str = READER) -> str:
    before = len(codes(stack.sink, address))
    await page.get_by_role("button", name="Send me a code").click()
    await page.get_by_label("One-time code").wait_for()
    return await wait_code(stack, address, before + 1)


def codes(sink: Sink, address: str) -> list[str]:
    found = [CODE.search(data) for _, rcpts, data in sink.messages if address in rcpts]
    return [m.group(1).decode() for m in found if m]


async def wait_code(stack: Stack, address: str, count: int) -> str:
    await stack.sink.wait_code(address, count)
    return codes(stack.sink, address)[count - 1]


async def sign_in(page: Any, stack: Stack, link: str, address: str = READER) -> None:
    await page.goto(link)
    code = await ask_code(page, stack, address)
    await page.get_by_label("One-time code").fill(code)
    await page.get_by_role("button", name="Open the message").click()
    await page.wait_for_url(link)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


WIDE = "".join(f"<td>Column {n} amount 1,234,567.89 EUR</td>" for n in range(12))
HTML = (f"<html><body><p>Dear customer, your statement:</p>"
        f'<p><img src="https://tracker.example/pixel.gif" alt="Corp Bank logo" width="200" '
        f'height="60"></p><table><tr>{WIDE}</tr><tr>{WIDE}</tr></table>'
        f"<p>Kind regards</p></body></html>")


async def test_first_visit_code_message_and_the_wrong_code_states(stack, browser) -> None:
    held, tokens = hold(stack.spool, mime("b1", html=HTML, cc="Auditor <auditor@audit.example>",
                                          attachment=("Statement March 2026.pdf",
                                                      "application/pdf", b"%PDF-1.4")),
                        recipients=(READER, "auditor@audit.example", "hidden@else.example"),
                        allow_reply_all=True, allow_print=True)
    link = stack.link(held, tokens[READER])
    page = await browser.new_page()

    await page.goto(link)
    assert f"at {ORG}" in await page.inner_text("main")
    await state(page, "01-landing")

    code = await ask_code(page, stack)
    main = await page.inner_text("main")
    assert "t****@bank.example" in main and "spam" in main
    await state(page, "02-code")
    await page.get_by_label("One-time code").fill(wrong(code))
    async with page.expect_navigation():
        await page.get_by_role("button", name="Open the message").click()
    assert "2 tries left" in await page.inner_text(".error")
    await state(page, "03-code-wrong")
    await page.get_by_label("One-time code").fill(code)
    await page.get_by_role("button", name="Open the message").click()
    await page.wait_for_url(link)

    # Remote images: a note, not a broken image; every image shown is complete.
    note = page.get_by_text("remote image is not loaded, for your privacy")
    assert await note.is_visible()
    assert await page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth)")
    assert await page.locator(".body img").count() == 0
    assert "Statement March 2026.pdf" in await page.inner_text(".attachments")
    await state(page, "04-message-html")

    # The wide table scrolls inside its own box on a phone, with a visible cue at the edge.
    await page.set_viewport_size(PHONE)
    wrap = page.locator(".table-wrap")
    assert await wrap.evaluate("w => w.scrollWidth > w.clientWidth")
    assert "gradient" in await wrap.evaluate("w => getComputedStyle(w).backgroundImage")
    await page.set_viewport_size(DESKTOP)

    # Reply all names the visible To/Cc only, never who was Bcc'd.
    await page.get_by_role("link", name="Reply all").click()
    form = await page.inner_text("main")
    assert "auditor@audit.example" in form and SENDER in form
    assert "hidden@else.example" not in form and "bob@corp.example" not in form
    await page.get_by_label("Message").fill("Thank you, received.")
    await state(page, "05-reply-all")
    await page.get_by_role("button", name="Send").click()
    await page.get_by_role("heading", name="Your reply was sent").wait_for()
    await state(page, "06-reply-sent")
    await page.get_by_role("link", name="Back to the message").click()
    await page.get_by_role("link", name="Reply", exact=True).click()
    await page.get_by_label("Message").fill("One more thing.")
    await page.get_by_role("button", name="Send").click()
    await page.get_by_role("heading", name="Too many replies").wait_for()
    await state(page, "07-reply-limit")

    # Print: the wide table wraps to the paper instead of being cut off.
    await page.goto(link + "/print")
    await page.set_viewport_size({"width": 760, "height": 1000})  # about A4 at 96 dpi
    await page.emulate_media(media="print")
    assert await page.locator(".table-wrap").evaluate("w => w.scrollWidth <= w.clientWidth")
    await page.emulate_media(media="screen")
    await page.set_viewport_size(DESKTOP)
    await state(page, "08-print-view")

    # Sign-out ends the session on the server: the copied cookie no longer opens it.
    await page.goto(link)
    copied = await browser.cookies()
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_role("heading", name="You are signed out").wait_for()
    await state(page, "09-signed-out")
    await browser.add_cookies(copied)
    await page.goto(link)
    assert "Send me a code" in await page.inner_text("main")
    assert "Dear customer" not in await page.content()


async def test_restricted_text_message_with_links(stack, browser) -> None:
    body = mime("b2").replace(b"Second line.",
                              b"Answers: https://help.corp.example/secure?id=7. Thanks.")
    held, tokens = hold(stack.spool, body, allow_reply=False, allow_print=False)
    link = stack.link(held, tokens[READER])
    page = await browser.new_page()
    await sign_in(page, stack, link)
    anchor = page.get_by_role("link", name="https://help.corp.example/secure?id=7")
    assert await anchor.get_attribute("href") == "https://help.corp.example/secure?id=7"
    assert await anchor.get_attribute("rel") == "noopener noreferrer"
    assert await page.get_by_role("link", name="Reply").count() == 0
    note = page.locator(".locked-note")
    assert await note.is_visible()
    assert f"{ORG} does not allow replies or printing" in await note.inner_text()
    await state(page, "10-message-restricted")


async def test_locked_link_backoff_and_rate_limit_pages(stack, browser) -> None:
    held, tokens = hold(stack.spool, mime("b3"))
    link = stack.link(held, tokens[READER])
    page = await browser.new_page()
    await page.goto(link)
    for n in (1, 2):  # lock_after=2: two burnt codes lock the link
        code = await ask_code(page, stack) if n == 1 else await resend(page, stack)
        for _ in range(3):
            await page.get_by_label("One-time code").fill(wrong(code))
            async with page.expect_navigation():
                await page.get_by_role("button", name="Open the message").click()
        if n == 1:
            assert "Three wrong codes" in await page.inner_text(".error")
            await state(page, "11-code-burnt")
    await page.get_by_role("heading", name="This link is locked").wait_for()
    await state(page, "12-link-locked")

    # Codes asked for too often, with no code alive: the page does not claim one works.
    other, other_tokens = hold(stack.spool, mime("b4"))
    olink = stack.link(other, other_tokens[READER])
    await page.goto(olink)
    for _ in range(3):
        await ask_code(page, stack)
        await page.goto(olink)
    await page.get_by_role("button", name="Send me a code").click()
    await page.get_by_role("heading", name="Too many codes requested").wait_for()
    assert "The last code we sent still works" in await page.inner_text("main")
    await state(page, "13-too-many-codes")


async def resend(page: Any, stack: Stack) -> str:
    before = len(codes(stack.sink, READER))
    await page.get_by_role("button", name="Send me a new code").click()
    await page.get_by_label("One-time code").wait_for()
    return await wait_code(stack, READER, before + 1)


async def test_links_that_no_longer_work_and_errors(stack, browser) -> None:
    page = await browser.new_page()
    held, tokens = hold(stack.spool, mime("b5"))
    link = stack.link(held, tokens[READER])
    await page.goto(link[:-1] + ("A" if link[-1] != "A" else "B"))
    assert await page.inner_text("h1") == "This link is not valid"
    await state(page, "14-link-not-valid")

    await page.goto(stack.url + "/nowhere")
    assert await page.inner_text("h1") == "This page does not exist"
    await state(page, "15-page-not-found")

    expired, expired_tokens = hold(stack.spool, mime("b6"), expires_in=timedelta(seconds=-1))
    await page.goto(stack.link(expired, expired_tokens[READER]))
    assert await page.inner_text("h1") == "This message has expired"
    await state(page, "16-expired")

    revoke_held(HeldStore(Spool(stack.spool)), held, datetime.now(UTC))
    await page.goto(link)
    assert await page.inner_text("h1") == "This message was withdrawn"
    await state(page, "17-withdrawn")

    # Deep MIME nesting: the portal's notice, not an error.
    deep, deep_tokens = hold(stack.spool, nested(1200))
    deep_link = stack.link(deep, deep_tokens[READER])
    await sign_in(page, stack, deep_link)
    assert "too many nested parts" in await page.inner_text(".body")
    await state(page, "18-too-deeply-nested")

    # An unexpected failure: the portal's own page, with its look and security headers.
    HeldStore(Spool(stack.spool)).update(deep, lambda r: r.pop("definition"))
    response = await page.goto(deep_link)
    assert response.status == 500
    assert "default-src 'self'" in (await response.all_headers())["content-security-policy"]
    assert await page.inner_text("h1") == "This message cannot be shown right now"
    await state(page, "19-error")
