"""Secure Messaging end to end: the real relay, the lab's DNS and SMTP servers as next hops.

External recipients must never get the message by SMTP: only a notification with a
personal link. Internal recipients get it through the inbound route, with the banner.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import sys
from dataclasses import replace
from email import message_from_bytes
from email import policy as email_policy
from pathlib import Path

import pytest

from connectwiz.cli import main as cli_main
from connectwiz.policy.model import (
    Applies,
    ConditionField,
    Scope,
    SecureBypass,
    SecureCondition,
    SecureDefinition,
    SecurePolicy,
    SecureTrigger,
)
from connectwiz.relay.held import HeldStore, find_recipient
from connectwiz.relay.spool import Spool
from tests.relay.conftest import FAST, lab_messages, make_model, send, token, wait_lab
from tests.relay.test_process import BUNDLE, start_relay

pytestmark = pytest.mark.network

PORTAL = "https://portal.test/secure"
SETTINGS = replace(FAST, portal_url=PORTAL)
EXTERNAL = Scope(Applies.EXTERNAL)
LINK = re.compile(re.escape(PORTAL) + r"/m/([0-9A-F]+)/([A-Za-z0-9_-]{43})")


def message(tag: str, subject: str = "", headers: str = "") -> bytes:
    return (f"From: alice-{tag}@corp.example\r\nSubject: {subject or 'test ' + tag}\r\n"
            f"{headers}Message-ID: <{tag}@test>\r\n\r\npayload {tag}\r\n").encode()


def text_of(data: bytes) -> str:
    msg = message_from_bytes(data, policy=email_policy.default)
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def record(spool: Path, held_id: str) -> dict:
    return json.loads((spool / "secure" / held_id / "record.json").read_text())


def events(rec, kind: str) -> list[dict]:
    return [e for e in rec.events if e.get("event") == kind]


async def notification_for(lab, address: str) -> bytes:
    def found() -> bool:
        return any(address in m.rcpt_tos for m in list(lab.messages))
    assert await wait_lab(lab, found)
    return next(m.data for m in list(lab.messages) if address in m.rcpt_tos)


async def test_policy_holds_external_recipient_notifies_and_banners_internal(
        lab, relays, capsys, event_log) -> None:
    model = replace(make_model(lab), secure_policies=(
        SecurePolicy("external mail is secure", "External Recipients", to=EXTERNAL),))
    r = await relays(model, SETTINGS)
    tag = token()
    teller, bob = f"teller-{tag}@trusted.example", f"bob-{tag}@corp.example"
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [teller, bob], message(tag))
    rec = await r.wait_status(msg_id, "held")

    [secure] = events(rec, "secure")
    assert secure["applied"] is True and secure["definition"] == "External Recipients"
    assert "#1 'external mail is secure'" in secure["reason"]
    assert secure["routes"] == {teller: "portal", bob: "banner"}
    [held] = events(rec, "held")
    assert held["recipients"] == [teller]

    # The internal recipient: the message itself, through the route, with the banner.
    assert await wait_lab(lab, lambda: any(bob in m.rcpt_tos for m in lab_messages(lab, tag)))
    [internal] = [m for m in lab_messages(lab, tag) if bob in m.rcpt_tos]
    assert internal.server == "mail.corp.example"
    text = text_of(internal.data)
    assert text.startswith(f"This message was sent securely by alice-{tag}@corp.example")
    assert f"payload {tag}" in text

    # The external recipient: a notification only, never the content.
    note = await notification_for(lab, teller)
    assert f"payload {tag}" not in note.decode("utf-8", "replace")
    assert not [m for m in lab_messages(lab, f"payload {tag}") if teller in m.rcpt_tos]
    held_id, link_token = LINK.search(text_of(note)).groups()
    assert held_id == msg_id
    stored = record(r.spool, msg_id)
    [slot] = stored["recipients"]
    assert slot["address"] == teller
    assert slot["token_sha256"] == [hashlib.sha256(link_token.encode()).hexdigest()]
    assert find_recipient(stored, link_token) is slot
    other = link_token[:-1] + ("B" if link_token.endswith("A") else "A")
    assert find_recipient(stored, other) is None
    assert link_token not in json.dumps(stored)
    assert stored["definition"]["name"] == "External Recipients"
    assert stored["delivered_with_banner"] == [bob]
    # Held content is encrypted at rest with the key outside the spool.
    sealed = (r.spool / "secure" / msg_id / "message.enc").read_bytes()
    assert f"payload {tag}".encode() not in sealed
    assert f"payload {tag}".encode() in HeldStore(Spool(r.spool)).read_body(msg_id)
    # Neither the relay's log nor the message log holds the token or the content.
    logged = event_log.text() + (r.spool / "log" / f"{msg_id}.jsonl").read_text()
    assert f'"held": "{msg_id}"' in logged  # the relay's log is the one read here
    assert link_token not in logged and f"payload {tag}" not in logged
    # The receipt/delivery view says that Secure Messaging applied, with what and why.
    assert cli_main(["log", "--spool", str(r.spool), msg_id]) == 0
    view = capsys.readouterr().out
    assert "Secure Messaging  applies, 'External Recipients'" in view
    assert "secure policy #1 'external mail is secure'" in view
    assert "Held" in view and teller in view


async def test_subject_trigger_holds_the_message(lab, relays) -> None:
    model = replace(make_model(lab), secure_triggers=(SecureTrigger(
        "confidential subject", "External Recipients",
        (SecureCondition(ConditionField.SUBJECT, "confidential"),)),))
    r = await relays(model, SETTINGS)
    tag = token()
    teller = f"teller-{tag}@trusted.example"
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [teller],
                        message(tag, subject=f"CONFIDENTIAL figures {tag}"))
    rec = await r.wait_status(msg_id, "held")
    assert "content trigger #1 'confidential subject' matched" in events(rec, "secure")[0]["reason"]
    assert LINK.search(text_of(await notification_for(lab, teller)))


@pytest.mark.parametrize(("banner", "expected"), [
    ("Custom notice for mail from {sender}", "Custom notice for mail from alice-"),
    ("", None),
])
async def test_client_header_custom_and_removed_banner_header_stripped(
        lab, relays, banner: str, expected: str | None) -> None:
    definition = SecureDefinition("Confidential", banner=banner)
    model = replace(make_model(lab), secure_definitions=(definition,))
    r = await relays(model, SETTINGS)
    tag = token()
    bob = f"bob-{tag}@corp.example"
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [bob],
                        message(tag, headers="X-Connectwiz-Secure: Confidential\r\n"))
    rec = await r.wait_status(msg_id, "delivered")
    assert events(rec, "secure")[0]["definition"] == "Confidential"
    assert "the sender's client asked" in events(rec, "secure")[0]["reason"]
    [delivered] = lab_messages(lab, tag)
    assert b"x-connectwiz-secure" not in delivered.data.lower()
    text = text_of(delivered.data)
    if expected is None:
        assert text.startswith(f"payload {tag}")
    else:
        assert text.startswith(expected) and f"payload {tag}" in text


async def test_bypass_delivers_to_the_external_recipient_as_usual(lab, relays) -> None:
    model = replace(make_model(lab),
                    secure_policies=(SecurePolicy("all external", "External Recipients",
                                                  to=EXTERNAL),),
                    secure_bypass=(SecureBypass("trusted partner exempt", to=Scope(
                        Applies.DOMAIN, ("trusted.example",))),))
    r = await relays(model, SETTINGS)
    tag = token()
    teller = f"teller-{tag}@trusted.example"
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [teller],
                        message(tag, headers="X-Connectwiz-Secure: All Recipients\r\n"))
    rec = await r.wait_status(msg_id, "delivered")
    assert not events(rec, "held")
    assert "bypass policy #1 'trusted partner exempt'" in events(rec, "secure")[0]["reason"]
    [delivered] = lab_messages(lab, tag)
    assert f"payload {tag}" in text_of(delivered.data)
    assert b"x-connectwiz-secure" not in delivered.data.lower()
    assert not (r.spool / "secure" / msg_id).exists()


# Runs the relay (argv after ours) and SIGKILLs it at the first file it opens for writing,
# outside secure/, once a held record (secure/<id>/record.json) has been renamed into place:
# the moment between writing the record and queuing the notification. Audit hooks see the
# process's own file operations, so this needs no knowledge of the relay's functions.
KILL_AFTER_RECORD = """\
import os, runpy, signal, sys
SECURE = os.path.join({spool!r}, "secure") + os.sep
armed = False
def hook(event, args):
    global armed
    if event == "os.rename" and str(args[1]).startswith(SECURE) \\
            and str(args[1]).endswith("record.json"):
        armed = True
    elif event == "open" and armed and not str(args[0]).startswith(SECURE) and (
            args[2] & (os.O_WRONLY | os.O_RDWR) or any(c in (args[1] or "") for c in "wax+")):
        os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
assert sys.argv[2:4] == ["-m", "connectwiz"], sys.argv
sys.argv = ["connectwiz", *sys.argv[4:]]
runpy.run_module("connectwiz", run_name="__main__", alter_sys=True)
"""

SECURE_POLICY = """
[[secure_policies]]
narrative = "External mail is secure"
definition = "External Recipients"
to = { applies = "external" }
"""


async def test_held_message_survives_a_kill_9_and_restart(lab, tmp_path: Path) -> None:
    """The relay process is killed (SIGKILL) after writing the held record, before queuing
    the notification; after a restart the record is intact and the recipient is notified
    with a working link, once."""
    bundle, spool, killer = tmp_path / "bundle.toml", tmp_path / "spool", tmp_path / "kill.py"
    bundle.write_text(BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port)
                      .replace("schema_version = 1", "schema_version = 2") + SECURE_POLICY)
    killer.write_text(KILL_AFTER_RECORD.format(spool=str(spool)))
    portal = ("--portal-url", PORTAL)
    # One process: the hook kills the process it runs in, which is then the relay itself
    # (with workers the parent would stop the others and exit 1; tests/relay/test_workers).
    first = await start_relay(lab, bundle, spool, *portal, "--workers", "1",
                              wrapper=[sys.executable, str(killer)])
    tag = token()
    teller = f"teller-{tag}@trusted.example"
    try:
        msg_id = await send(first.port, f"alice-{tag}@corp.example", [teller], message(tag))
        await first.wait_exit()
    finally:
        await first.kill()
    assert first.proc.returncode == -signal.SIGKILL, first.stderr_lines
    before = record(spool, msg_id)
    assert len(before["recipients"][0]["token_sha256"]) == 1
    assert not [m for m in list(lab.messages) if teller in m.rcpt_tos]

    second = await start_relay(lab, bundle, spool, *portal)
    try:
        assert (await second.wait_event("listening"))["recovered"] == 1
        note = await notification_for(lab, teller)
        _, link_token = LINK.search(text_of(note)).groups()
        await second.wait_event("done")
        after = record(spool, msg_id)
        assert after["held_at"] == before["held_at"]
        assert after["expires_at"] == before["expires_at"]
        hashes = after["recipients"][0]["token_sha256"]
        assert hashes[0] == before["recipients"][0]["token_sha256"][0]
        assert hashlib.sha256(link_token.encode()).hexdigest() in hashes
        assert (spool / "secure" / msg_id / "message.enc").is_file()
        assert not [m for m in lab_messages(lab, f"payload {tag}") if teller in m.rcpt_tos]
        # A clean restart after that holds nothing again and sends no second notification.
        second.proc.send_signal(signal.SIGTERM)
        assert await second.wait_exit() == 0
    finally:
        await second.kill()
    third = await start_relay(lab, bundle, spool, *portal)
    try:
        listening = await third.wait_event("listening")
        assert (listening["recovered"], listening["deferred"]) == (0, 0)
    finally:
        third.proc.send_signal(signal.SIGTERM)
        assert await third.wait_exit() == 0
    assert record(spool, msg_id) == after
    assert len([m for m in list(lab.messages) if teller in m.rcpt_tos]) == 1


async def test_header_from_an_external_sender_is_removed_and_changes_nothing(lab,
                                                                             relays) -> None:
    r = await relays(make_model(lab), SETTINGS)
    tag = token()
    bob = f"bob-{tag}@corp.example"
    msg_id = await send(r.port, f"someone-{tag}@bank.example", [bob],
                        message(tag, headers="X-Connectwiz-Secure: All Recipients\r\n"))
    rec = await r.wait_status(msg_id, "delivered")
    [secure] = events(rec, "secure")
    assert secure["applied"] is False and "not internal" in secure["reason"]
    [delivered] = lab_messages(lab, tag)
    assert b"x-connectwiz-secure" not in delivered.data.lower()
    assert text_of(delivered.data).startswith(f"payload {tag}")  # no banner


async def test_secure_cli_lists_shows_extends_and_revokes(lab, relays, capsys) -> None:
    definition = SecureDefinition("Week", expiry_days=7, max_extension_days=3)
    model = replace(make_model(lab), secure_definitions=(definition,), secure_policies=(
        SecurePolicy("external", "Week", to=EXTERNAL),))
    r = await relays(model, SETTINGS)
    tag = token()
    teller = f"teller-{tag}@trusted.example"
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [teller], message(tag))
    await r.wait_status(msg_id, "held")
    await notification_for(lab, teller)
    spool = str(r.spool)
    capsys.readouterr()

    def cli(*argv: str) -> tuple[int, str, str]:
        code = cli_main(["secure", *argv, "--spool", spool])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = cli("list", "--json")
    [listed] = json.loads(out)
    assert code == 0 and listed["id"] == msg_id and listed["status"] == "held"
    assert listed["recipients"][0]["address"] == teller
    assert "token_sha256" not in out

    async def note_delivered() -> bool:
        _, out, _ = cli("show", msg_id, "--json")
        return json.loads(out)["recipients"][0]["notifications"][0]["status"] == "delivered"
    for _ in range(100):
        if await note_delivered():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("notification never shown as delivered")

    code, out, _ = cli("show", msg_id)
    assert code == 0 and "Definition  Week (expires after 7 days" in out and teller in out

    before = record(r.spool, msg_id)["expires_at"]
    code, out, _ = cli("extend", msg_id, "--days", "2", "--json")
    assert code == 0 and json.loads(out)["extended_days"] == 2
    assert record(r.spool, msg_id)["expires_at"] > before
    code, _, err = cli("extend", msg_id, "--days", "2")
    assert code == 2 and "at most 1 more days" in err
    assert record(r.spool, msg_id)["extended_days"] == 2  # a refused extension changes nothing

    code, out, _ = cli("revoke", msg_id, "--json")
    assert code == 0 and json.loads(out)["status"] == "revoked"
    assert not (r.spool / "secure" / msg_id / "message.enc").exists()
    code, _, err = cli("extend", msg_id, "--days", "1")
    assert code == 2 and "revoked" in err
    code, _, err = cli("show", "NOSUCHID")
    assert code == 2 and "no held message" in err


async def test_all_recipients_holds_internal_recipients_too(lab, relays) -> None:
    model = replace(make_model(lab), secure_policies=(
        SecurePolicy("everything secure", "All Recipients"),))
    r = await relays(model, SETTINGS)
    tag = token()
    teller, bob = f"teller-{tag}@trusted.example", f"bob-{tag}@corp.example"
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [teller, bob], message(tag))
    rec = await r.wait_status(msg_id, "held")
    assert sorted(events(rec, "held")[0]["recipients"]) == sorted([teller, bob])
    internal_note = await notification_for(lab, bob)
    assert LINK.search(text_of(internal_note))
    assert f"payload {tag}".encode() not in internal_note
    assert not lab_messages(lab, f"payload {tag}")
    assert sorted(s["address"] for s in record(r.spool, msg_id)["recipients"]) == sorted(
        [teller, bob])


async def test_held_record_keeps_the_visible_to_and_cc_never_the_bccs(lab, relays) -> None:
    model = replace(make_model(lab), secure_policies=(
        SecurePolicy("external mail is secure", "External Recipients", to=EXTERNAL),))
    r = await relays(model, SETTINGS)
    tag = token()
    teller, auditor = f"teller-{tag}@trusted.example", f"auditor-{tag}@trusted.example"
    hidden, bob = f"hidden-{tag}@trusted.example", f"bob-{tag}@corp.example"
    headers = f"To: Teller <{teller}>\r\nCc: {auditor}\r\n"  # hidden and bob are Bcc'd
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [teller, auditor, hidden, bob],
                        message(tag, headers=headers))
    await r.wait_status(msg_id, "held")
    stored = record(r.spool, msg_id)
    assert stored["header_to"] == [teller] and stored["header_cc"] == [auditor]
    assert hidden not in json.dumps([stored["header_to"], stored["header_cc"]])


async def test_banner_of_a_portal_reply_names_its_external_author(lab, relays) -> None:
    """A portal reply has the original (internal) sender as envelope sender and the
    external recipient who wrote it in From:; the banner must name the writer."""
    r = await relays(make_model(lab), SETTINGS)
    tag = token()
    teller, bob = f"teller-{tag}@trusted.example", f"bob-{tag}@corp.example"
    body = (f"From: {teller}\r\nTo: alice-{tag}@corp.example\r\nCc: {bob}\r\n"
            f"Subject: Re: figures\r\nX-Connectwiz-Secure: External Recipients\r\n"
            f"Message-ID: <{tag}@portal.test>\r\n\r\npayload {tag}\r\n").encode()
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [bob], body)
    await r.wait_status(msg_id, "delivered")
    [delivered] = lab_messages(lab, tag)
    assert text_of(delivered.data).startswith(f"This message was sent securely by {teller}")
