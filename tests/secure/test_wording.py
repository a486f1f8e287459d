"""Branding and wording: templates with a small set of placeholders, checked when the bundle
loads, escaped wherever the result is HTML, used by the relay's notifications and banner."""

from __future__ import annotations

from dataclasses import replace
from email import message_from_bytes
from email import policy as email_policy
from pathlib import Path

import pytest

from connectwiz.bundle import Bundle
from connectwiz.bundle.errors import BundleError
from connectwiz.policy.model import Applies, Scope, SecurePolicy, SecureSettings
from connectwiz.policy.wording import Wording, problems, render
from connectwiz.relay.secure_content import add_banner
from tests.relay.conftest import lab_messages, make_model, send, token, wait_lab
from tests.secure.test_relay import SETTINGS, notification_for, text_of


def test_placeholders_are_checked_per_text() -> None:
    assert problems("notification_text", "Open {link} before {expires}") is None
    assert "must contain {link}" in problems("notification_text", "No link here")
    assert "unknown placeholder {code}" in problems("notification_subject", "{code}")
    assert problems("banner", "<style>p {color: red}</style>{sender}") is None  # CSS braces


def test_values_are_escaped_only_for_html() -> None:
    values = {"sender": "<script>x</script>"}
    assert render("by {sender}", values) == "by <script>x</script>"
    assert render("by {sender}", values, for_html=True) == "by &lt;script&gt;x&lt;/script&gt;"


def test_banner_values_cannot_inject_markup() -> None:
    body = (b"From: a@corp.example\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n"
            b"<html><body><p>hi</p></body></html>\r\n")
    evil = {"sender": "<img src=x onerror=alert(1)>"}
    for template in ("Sent by {sender}", "<b>Sent by {sender}</b>"):
        out = add_banner(body, template, evil).decode()
        assert "<img" not in out and "&lt;img" in out, template


BUNDLE = """schema_version = 2
[organisation]
internal_domains = ["corp.example"]
name = "Corp & Co"
[secure_messaging]
{settings}
"""


def load(tmp_path: Path, settings: str) -> Bundle:
    path = tmp_path / "b.toml"
    path.write_text(BUNDLE.format(settings=settings))
    return Bundle.load(path)


def test_bundle_wording_round_trips(tmp_path: Path) -> None:
    m = load(tmp_path, 'accent_colour = "#AA0000"\nbar_colour = "#123"\n'
                       'notification_subject = "{organisation}: a secure message"\n'
                       'default_banner = "<i>Secure, from {sender}</i>"').model
    w = m.secure_settings.wording
    assert (w.accent_colour, w.bar_colour) == ("#aa0000", "#123")
    assert w.notification_subject == "{organisation}: a secure message"
    assert w.banner == "<i>Secure, from {sender}</i>"
    assert w.code_text == Wording().code_text
    Bundle.from_model(m, tmp_path / "copy.toml").save()
    text = (tmp_path / "copy.toml").read_text()
    assert "code_text" not in text  # defaults are not written out
    assert Bundle.load(tmp_path / "copy.toml").model == m


@pytest.mark.parametrize(("settings", "message"), [
    ('accent_colour = "red; background: url(x)"', "accent_colour: must be a colour"),
    ('notification_text = "Read it soon"', "notification_text: must contain {link}"),
    ('code_text = "Code: {code} for {link}"', "code_text: unknown placeholder {link}"),
    ('code_subject = 3', "code_subject"),
])
def test_bundle_wording_errors_are_one_line(tmp_path: Path, settings: str, message: str) -> None:
    with pytest.raises(BundleError) as caught:
        load(tmp_path, settings)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.network
async def test_relay_uses_the_wording_for_notification_and_banner(lab, relays) -> None:
    wording = Wording(notification_subject="{organisation}: secure mail from {sender}",
                      notification_text="Hello {recipient},\nopen {link} by {expires}.",
                      banner="<b>Confidential ({organisation}), from {sender}</b>")
    base = make_model(lab)
    model = replace(base, organisation=replace(base.organisation, name="Corp & Co"),
                    secure_settings=SecureSettings(wording=wording),
                    secure_policies=(SecurePolicy("external", "External Recipients",
                                                  to=Scope(Applies.EXTERNAL)),))
    r = await relays(model, SETTINGS)
    tag = token()
    alice, teller, bob = (f"alice-{tag}@corp.example", f"teller-{tag}@trusted.example",
                          f"bob-{tag}@corp.example")
    data = (f"From: {alice}\r\nSubject: figures\r\nMessage-ID: <{tag}@test>\r\n\r\n"
            f"payload {tag}\r\n").encode()
    await send(r.port, alice, [teller, bob], data)
    note = message_from_bytes(await notification_for(lab, teller), policy=email_policy.default)
    assert note["Subject"] == f"Corp & Co: secure mail from {alice}"
    assert note["From"].startswith("Corp & Co Secure Messaging")
    body = text_of(note.as_bytes())
    assert body.startswith(f"Hello {teller},\nopen https://portal.test/secure/m/")
    assert await wait_lab(lab, lambda: any(bob in m.rcpt_tos for m in lab_messages(lab, tag)))
    [internal] = [m for m in lab_messages(lab, tag) if bob in m.rcpt_tos]
    assert text_of(internal.data).startswith(f"Confidential (Corp & Co), from {alice}")
