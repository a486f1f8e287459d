"""The sender's view in a real headless Chromium, end to end: an internal sender asks for
Secure Messaging with a subject tag, the relay holds the message (tag removed), the
recipient reads it, and the sender signs in with a code to their own address, sees that it
was read, extends it and withdraws it; the recipient's link then says it was withdrawn."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.portal import test_browser
from tests.portal.conftest import CHROMIUM
from tests.portal.test_browser import CODE, held_link, shoot, sign_in, text_of, wait_mail
from tests.relay.conftest import token

pytestmark = [
    pytest.mark.network,
    pytest.mark.peer,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent (apt-get install chromium; CI installs it)"),
]
stack = test_browser.stack  # the relay + portal and the browser, as test_browser has them


async def test_sender_sees_read_status_extends_and_withdraws(lab, stack, browser) -> None:
    relay, _, url = stack
    tag = token()
    teller, alice = f"teller-{tag}@trusted.example", f"alice-{tag}@corp.example"
    held, link = await held_link(lab, relay, url, [teller], tag,
                                 subject_tag="[secure:expiry=2d] ")

    reader = await browser.new_page()
    await sign_in(reader, lab, teller, link)
    await reader.get_by_role("heading", name=f"Statement {tag}").wait_for()

    page = await browser.new_page()
    await page.goto(url + "/sender")
    await page.get_by_label("Your e-mail address").fill(alice)
    await page.get_by_role("button", name="Send me a code").click()
    code = CODE.search(text_of(await wait_mail(lab, alice, "one-time code")))
    assert code
    await page.get_by_label("One-time code").fill(code.group(1))
    await page.keyboard.press("Enter")
    await page.wait_for_url(url + "/sender")

    row = page.locator(f"#msg-{held}")
    # The tag was removed before the message was held; the sender's options are shown.
    await row.get_by_role("heading", name=f"Statement {tag}", exact=True).wait_for()
    text = await row.inner_text()
    assert re.search(rf"{re.escape(teller)}: read ", text), text
    assert "expiry=2d" in text
    # The definition: 7 days, no extension; asking for 2 days leaves 5 to extend.
    assert "at most 5" in text
    await shoot(page, "sender-desktop")
    await page.set_viewport_size({"width": 390, "height": 844})
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    await page.set_viewport_size({"width": 1280, "height": 800})

    await row.get_by_label("Extend by").fill("3")
    await row.get_by_role("button", name="Extend").click()
    await page.get_by_text("The expiry was extended.").wait_for()
    assert "at most 2" in await page.locator(f"#msg-{held}").inner_text()

    await page.locator(f"#msg-{held}").get_by_role("button", name="Withdraw").click()
    await page.get_by_text("The message was withdrawn").wait_for()
    assert "withdrawn" in await page.locator(f"#msg-{held}").inner_text()

    await reader.goto(link)
    await reader.get_by_role("heading", name="This message was withdrawn").wait_for()
