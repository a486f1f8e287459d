"""Senders choose per message through the real relay: the subject tag is removed from
every copy, its options are in the held record, and a refused request is logged."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from email import message_from_bytes
from email import policy as email_policy

import pytest

from connectwiz.policy.model import Requesters, SecureDefinition
from connectwiz.relay.held import HeldStore
from connectwiz.relay.spool import Spool
from tests.relay.conftest import lab_messages, make_model, send, token, wait_lab
from tests.secure.test_relay import SETTINGS, events, notification_for, record

pytestmark = pytest.mark.network

WEEK = SecureDefinition("Week", expiry_days=7, max_extension_days=14)
BOARD = SecureDefinition("Board only", requesters=Requesters(addresses=("ceo@corp.example",)))


def subject_of(data: bytes) -> str:
    return str(message_from_bytes(data, policy=email_policy.default)["Subject"])


def days(rec: dict, start: str, end: str) -> float:
    return (datetime.fromisoformat(rec[end].replace("Z", "+00:00"))
            - datetime.fromisoformat(rec[start].replace("Z", "+00:00"))).total_seconds() / 86400


@pytest.mark.parametrize("subject", [
    "[secure:Week, reply=no, expiry=3d] Q3 figures",
    # The tag inside an encoded subject goes too.
    "=?utf-8?q?=5Bsecure=3AWeek=2C_reply=3Dno=2C_expiry=3D3d=5D_Q3_figures?=",
])
async def test_subject_tag_applies_options_and_is_removed(lab, relays, subject: str) -> None:
    r = await relays(replace(make_model(lab), secure_definitions=(WEEK,)), SETTINGS)
    tag = token()
    teller, bob = f"teller-{tag}@trusted.example", f"bob-{tag}@corp.example"
    data = (f"From: alice-{tag}@corp.example\r\nSubject: {subject}\r\n"
            f"Message-ID: <{tag}@test>\r\n\r\npayload {tag}\r\n").encode()
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [teller, bob], data)
    rec = await r.wait_status(msg_id, "held")
    [secure] = events(rec, "secure")
    assert secure["definition"] == "Week" and secure["options"] == "reply=no, expiry=3d"
    assert "[secure] in the subject" in secure["reason"]

    stored = record(r.spool, msg_id)
    assert stored["definition"]["allow_reply"] is False
    assert stored["sender_options"] == "reply=no, expiry=3d"
    assert round(days(stored, "held_at", "expires_at")) == 3
    assert round(days(stored, "held_at", "limit_at")) == 21  # the definition's latest date
    held = HeldStore(Spool(r.spool)).read_body(msg_id)
    assert subject_of(held) == "Q3 figures"
    # The internal copy (with the banner) has lost the tag too.
    assert await wait_lab(lab, lambda: any(bob in m.rcpt_tos for m in lab_messages(lab, tag)))
    [internal] = [m for m in lab_messages(lab, tag) if bob in m.rcpt_tos]
    assert subject_of(internal.data) == "Q3 figures"
    assert b"[secure" not in internal.data and b"=5Bsecure" not in internal.data
    assert await notification_for(lab, teller)


async def test_request_outside_definition_access_falls_back_and_is_logged(lab, relays) -> None:
    r = await relays(replace(make_model(lab), secure_definitions=(BOARD,)), SETTINGS)
    tag = token()
    teller = f"teller-{tag}@trusted.example"
    data = (f"From: alice-{tag}@corp.example\r\nSubject: figures\r\n"
            f"X-Connectwiz-Secure: Board only\r\nMessage-ID: <{tag}@test>\r\n\r\nx\r\n").encode()
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [teller], data)
    rec = await r.wait_status(msg_id, "held")
    [secure] = events(rec, "secure")
    assert secure["definition"] == "External Recipients"
    assert any(f"<alice-{tag}@corp.example> may not request 'Board only'" in n
               for n in secure["notes"])
