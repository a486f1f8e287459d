"""Deeper content examination through the real relay: an attachment type and a regular
expression hold messages; a catastrophic-backtracking pattern over a large body neither
holds the message nor stalls the relay."""

from __future__ import annotations

import time
from dataclasses import replace
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from connectwiz.policy.model import (
    ConditionField,
    ConditionKind,
    SecureCondition,
    SecureTrigger,
)
from tests.relay.conftest import lab_messages, make_model, send, token
from tests.secure.test_relay import SETTINGS, events

pytestmark = pytest.mark.network

TRIGGER = SecureTrigger("deep content", "External Recipients", (
    SecureCondition(ConditionField.SUBJECT, r"\bINV-\d{6}\b", kind=ConditionKind.MATCHES),
    SecureCondition(ConditionField.ATTACHMENT_NAME, "*.xlsx"),
    SecureCondition(ConditionField.BODY, "(a+)+$", kind=ConditionKind.MATCHES,
                    case_sensitive=True),
))


def mail(tag: str, subject: str, body: str, attachment: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"alice-{tag}@corp.example"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{tag}@test>"
    msg.set_content(body)
    if attachment:
        msg.add_attachment(b"PK\x03\x04", maintype="application", subtype="octet-stream",
                           filename=attachment)
    return msg.as_bytes(policy=SMTP)


async def test_regex_and_attachment_hold_hostile_body_passes_quickly(lab, relays) -> None:
    r = await relays(replace(make_model(lab), secure_triggers=(TRIGGER,)), SETTINGS)
    tag = token()
    teller = f"teller-{tag}@trusted.example"
    sender = f"alice-{tag}@corp.example"

    by_subject = await send(r.port, sender, [teller], mail(tag, "Re: inv-204518", "hi"))
    rec = await r.wait_status(by_subject, "held")
    assert r"subject matches /\bINV-\d{6}\b/" in events(rec, "secure")[0]["reason"]

    by_file = await send(r.port, sender, [teller], mail(tag, "figures", "see file",
                                                        attachment="Q3.XLSX"))
    rec = await r.wait_status(by_file, "held")
    assert "an attachment is named like '*.xlsx'" in events(rec, "secure")[0]["reason"]

    # 2 MB of "a" then "b": Python's re would backtrack for ever on (a+)+$; RE2 does not.
    # (The payload line ends in "." so that a token ending in "a" does not match it.)
    started = time.monotonic()
    hostile = await send(r.port, sender, [teller],
                         mail(tag, "plain", "a" * 2_000_000 + "b\n" + f"payload {tag}."))
    rec = await r.wait_status(hostile, "delivered", timeout=60)
    assert time.monotonic() - started < 60  # generous: the machine is shared
    assert not events(rec, "held")
    assert any(f"payload {tag}" in m.data.decode("latin-1") for m in lab_messages(lab, tag))
