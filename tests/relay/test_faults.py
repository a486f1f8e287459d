"""Spool faults with a running relay: a failed claim, a failed log append, damaged queue
files. Faults are made for real (a folder replaced by a file), never mocked."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import aiosmtplib
import pytest

from connectwiz.cli import main as cli_main
from connectwiz.relay.queuefile import QueueEntry, Recipient
from connectwiz.relay.spool import Spool

from .conftest import FAST, body, lab_messages, make_model, send, token, wait_lab

pytestmark = pytest.mark.network


def _break(folder: Path) -> Path:
    """Replace a spool folder by a file: every write into it fails (as root, where
    permissions would not stop us). Returns where the folder was put aside."""
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    folder.write_text("not a folder")
    return aside


def _mend(folder: Path, aside: Path) -> None:
    folder.unlink()
    aside.rename(folder)


async def test_a_message_stranded_by_a_failed_claim_is_delivered_by_the_rescan(
        lab, relays) -> None:
    r = await relays(make_model(lab), replace(FAST, queue_run_delay=0.3))
    active = r.spool / "active"
    aside = _break(active)
    tag = token()
    msg_id = await send(r.port, "alice@corp.example", ["bob@corp.example"], body(tag))
    # The claim fails (active/ is not a folder): the message stays waiting in the queue.
    while Spool(r.spool).ids("incoming") != [msg_id] or msg_id in r.relay._queued:
        await asyncio.sleep(0.05)
    _mend(active, aside)
    # No restart: the periodic rescan finds it.
    await r.wait_status(msg_id, "delivered")
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)


async def test_a_failed_log_append_answers_451_and_keeps_no_copy(lab, relays) -> None:
    r = await relays(make_model(lab))
    log_dir = r.spool / "log"
    aside = _break(log_dir)
    tag = token()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False, timeout=10)
    await client.connect()
    try:
        with pytest.raises(aiosmtplib.SMTPResponseException) as info:
            await client.sendmail("alice@corp.example", ["bob@corp.example"], body(tag))
        assert info.value.code == 451
    finally:
        client.close()
    assert Spool(r.spool).counts() == {"incoming": 0, "active": 0, "deferred": 0}
    _mend(log_dir, aside)
    # The sender retries: exactly one copy arrives.
    msg_id = await send(r.port, "alice@corp.example", ["bob@corp.example"], body(tag))
    await r.wait_status(msg_id, "delivered")
    await r.relay.idle()
    assert len(lab_messages(lab, tag)) == 1


def _cut_envelope(spool: Spool) -> None:
    path = spool.queue_path("0DAMAGED")
    path.write_bytes(path.read_bytes()[:-10])


def _no_envelope(spool: Spool) -> None:
    path = spool.queue_path("0DAMAGED")
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"keep me\r\n") + 9])


def _another_message(spool: Spool) -> None:
    path = spool.queue_path("0DAMAGED")
    path.write_bytes(path.read_bytes().replace(b'"id": "0DAMAGED"', b'"id": "0ELSEWHR"'))


def _torn_state_file(spool: Spool) -> None:
    (spool.root / "deferred" / "0DAMAGED.json").write_bytes(b'{"id": "0DAM')


@pytest.mark.parametrize(("damage", "why"), [
    (_cut_envelope, "0DAMAGED: queue file damaged"),
    (_no_envelope, "0DAMAGED: queue file damaged (bad header)"),
    (_another_message, "0DAMAGED: queue file holds message 0ELSEWHR"),
    (_torn_state_file, "0DAMAGED: deferred entry damaged"),
])
async def test_damaged_queue_file_is_quarantined_with_its_body_logged_and_listed(
        lab, relays, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, why) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create()
    entry = QueueEntry(id="0DAMAGED", mail_from="alice@corp.example",
                       recipients=[Recipient("bob@corp.example")], received_at=1.0)
    spool.accept(entry, b"Subject: acknowledged\r\n\r\nkeep me\r\n")
    damage(spool)  # outside damage
    await relays(make_model(lab), spool=spool.root)
    kept = spool.root / "corrupt" / "0DAMAGED.queue.msg"
    assert b"keep me" in kept.read_bytes(), "the acknowledged body is kept, not deleted"
    assert spool.counts() == {"incoming": 0, "active": 0, "deferred": 0}
    capsys.readouterr()
    assert cli_main(["log", "--spool", str(spool.root)]) == 0
    listed = capsys.readouterr().out
    assert "0DAMAGED" in listed and "quarantined" in listed
    assert cli_main(["log", "--spool", str(spool.root), "0DAMAGED"]) == 0
    shown = capsys.readouterr().out
    assert "Quarantined" in shown and str(spool.root / "corrupt") in shown
    # Says what is wrong, so a person knows what to look at.
    assert why in shown


async def test_an_entry_whose_body_is_missing_is_set_aside_not_retried(lab, relays,
                                                                      tmp_path: Path) -> None:
    # A spool from before queue files, where the body of a queued message went missing.
    root = tmp_path / "spool"
    Spool(root).create()
    (root / "messages").mkdir()
    entry = QueueEntry(id="0NOBODY", mail_from="alice@corp.example",
                       recipients=[Recipient("bob@corp.example")], received_at=1.0)
    (root / "deferred" / "0NOBODY.json").write_bytes(entry.to_json())
    r = await relays(make_model(lab), spool=root)
    assert (root / "corrupt" / "0NOBODY.deferred.json").exists()
    record = await r.record("0NOBODY")
    assert record.status == "quarantined"
    assert [e["reason"] for e in record.events if e["event"] == "quarantined"] \
        == ["message body missing"]
    assert not r.relay._queued and not r.relay._timers


async def test_a_write_failing_while_data_streams_in_is_451_and_the_session_stays_in_step(
        lab, relays) -> None:
    """Guards the streamed write: a failure half-way must not leave the rest of DATA to be
    read as commands."""
    r = await relays(make_model(lab))
    aside = _break(r.spool / "tmp")
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    try:
        await reader.readline()
        for line in (b"EHLO t\r\n", b"MAIL FROM:<alice@corp.example>\r\n",
                     b"RCPT TO:<bob@corp.example>\r\n", b"DATA\r\n"):
            writer.write(line)
            while (await asyncio.wait_for(reader.readline(), 10))[3:4] == b"-":
                pass
        # Well past the first flush (256 KiB), with lines that look like commands.
        writer.write(b"Subject: big\r\n\r\n" + b"RSET\r\n" * 200_000 + b".\r\nNOOP\r\n")
        assert (await asyncio.wait_for(reader.readline(), 30)).startswith(b"451 4.3.0")
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"250")
    finally:
        writer.close()
    _mend(r.spool / "tmp", aside)
    assert Spool(r.spool).counts() == {"incoming": 0, "active": 0, "deferred": 0}
