"""The portal uses the bundle's wording: the code e-mail's texts and the colours."""

from __future__ import annotations

import pytest

from connectwiz.policy.wording import Wording
from tests.portal.conftest import READER, hold, mime

pytestmark = pytest.mark.network


async def test_code_mail_and_colours_follow_the_wording(portal_client, sink) -> None:
    wording = Wording(accent_colour="#aa0000", bar_colour="#003300",
                      code_subject="{organisation} code",
                      code_text="Code for {sender}: {code}\nValid {minutes} min.")
    pc = await portal_client(wording=wording, organisation="Corp & Co")
    held, tokens = hold(pc.spool, mime("w1"))
    link = pc.link(held, tokens[READER])
    csrf = await pc.csrf(link)
    await pc.client.post(link + "/code", data={"_csrf": csrf})
    [mail] = [m for m in [*sink.to(READER)] if m["Subject"] == "Corp & Co code"]
    assert mail.get_content().startswith("Code for alice@corp.example: ")
    assert "Valid 10 min." in mail.get_content()

    page = await (await pc.client.get(link)).text()
    assert 'href="/secure/brand.css"' in page
    css = await pc.client.get("/secure/brand.css")
    assert css.content_type == "text/css"
    assert await css.text() == ":root { --accent: #aa0000; --bar: #003300; }\n"
