"""Pure logic of the relay: spool state machine, message log, receipt rules, DSN, backoff."""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import threading
from email import policy as email_policy
from pathlib import Path

import pytest

from connectwiz.errors import UserError
from connectwiz.policy.model import ReceiptOption
from connectwiz.relay import events
from connectwiz.relay.dsn import build_dsn
from connectwiz.relay.events import EventLog
from connectwiz.relay.msglog import MessageLog, list_records, read_record
from connectwiz.relay.queuefile import QueueEntry, Recipient
from connectwiz.relay.receipt import (
    REPLY_STARTTLS_FIRST,
    TlsInfo,
    strictest,
    tls_refusal,
)
from connectwiz.relay.settings import RelaySettings
from connectwiz.relay.smtpd import routing_trick
from connectwiz.relay.spool import Spool, new_message_id


def _entry(msg_id: str | None = None, sender: str = "a@corp.example") -> QueueEntry:
    return QueueEntry(id=msg_id or new_message_id(), mail_from=sender,
                      recipients=[Recipient("b@trusted.example"), Recipient("c@x.example")],
                      received_at=1_700_000_000.0, client_ip="127.0.0.1")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.create()
    return s


def test_accept_writes_body_and_incoming_entry(spool: Spool) -> None:
    entry = _entry()
    spool.accept(entry, b"Subject: hi\r\n\r\nbody\r\n")
    assert spool.read_body(entry.id) == b"Subject: hi\r\n\r\nbody\r\n"
    assert spool.read_entry("incoming", entry.id) == entry
    assert spool.counts() == {"incoming": 1, "active": 0, "deferred": 0}
    assert list((spool.root / "tmp").iterdir()) == []


def test_recover_puts_interrupted_deliveries_back_and_keeps_deferred(spool: Spool) -> None:
    a, b, c = _entry("A1"), _entry("B2"), _entry("C3")
    for e in (a, b, c):
        spool.accept(e, b"x\r\n")
    spool.claim("B2")  # crashed mid-delivery
    spool.claim("C3")
    c.next_attempt = 123.0
    spool.defer(c)
    found = Spool(spool.root).recover()
    assert sorted(e.id for e in found.ready) == ["A1", "B2"]
    assert [e.next_attempt for e in found.deferred] == [123.0]
    assert spool.counts() == {"incoming": 2, "active": 0, "deferred": 1}


def test_recover_prefers_the_later_state_when_a_crash_left_two(spool: Spool) -> None:
    e = _entry("D4")
    spool.accept(e, b"x\r\n")
    spool.claim("D4")
    e.recipients[0].status = "delivered"
    # active -> deferred writes the new file before unlinking the old: simulate the crash
    spool.write_atomic(spool.root / "deferred" / "D4.json", e.to_json())
    found = spool.recover()
    assert found.ready == [] and [d.id for d in found.deferred] == ["D4"]
    assert found.deferred[0].recipients[0].status == "delivered"
    assert not (spool.root / "active" / "D4.json").exists()


def test_recipients_marked_delivered_are_not_delivered_again_after_a_kill(spool: Spool) -> None:
    """What ``mark_delivered`` leaves without any fsync (what a kill -9 keeps) is what the
    next start delivers: the recipients still pending, or nothing once the message is
    settled."""
    e = _entry("E5")
    spool.accept(e, b"x\r\n")
    claimed = spool.claim("E5")
    assert claimed is not None
    entry = claimed[0]
    entry.recipients[0].status = "delivered"
    assert spool.mark_delivered(entry) is False  # one recipient left: the state file says so
    [ready] = Spool(spool.root).recover().ready
    assert [(r.address, r.status) for r in ready.recipients] == [
        ("b@trusted.example", "delivered"), ("c@x.example", "pending")]
    claimed = spool.claim("E5")
    assert claimed is not None
    entry = claimed[0]
    entry.recipients[1].status = "delivered"
    assert spool.mark_delivered(entry) is True  # settled: the queue file is gone
    assert not spool.queue_path("E5").exists()
    found = Spool(spool.root).recover()
    assert found.ready == [] and found.deferred == []
    assert spool.counts() == {"incoming": 0, "active": 0, "deferred": 0}


def test_recover_removes_unacknowledged_files_and_leftover_state(spool: Spool) -> None:
    (spool.root / "tmp" / "ORPHAN.msg").write_bytes(b"CWZQ1 000000000000\nnever committed")
    (spool.root / "active" / "GONE.json").write_bytes(_entry("GONE").to_json())  # finished
    spool.recover()
    assert list((spool.root / "tmp").iterdir()) == []
    assert spool.counts() == {"incoming": 0, "active": 0, "deferred": 0}


def test_recover_quarantines_a_damaged_message_with_its_body(spool: Spool) -> None:
    good, bad = _entry("GOOD"), _entry("BAD")
    spool.accept(good, b"x\r\n")
    spool.accept(bad, b"Subject: keep me\r\n\r\nacknowledged\r\n")
    spool.write_atomic(spool.root / "deferred" / "BAD.json", b"{not json")
    found = spool.recover()
    assert [e.id for e in found.ready] == ["GOOD"] and found.deferred == []
    assert [m for m, _ in found.quarantined] == ["BAD"]
    corrupt = sorted(p.name for p in (spool.root / "corrupt").iterdir())
    assert corrupt == ["BAD.deferred.json", "BAD.queue.msg"]
    # The acknowledged message is kept, body and all, for a person to look at.
    assert b"acknowledged" in (spool.root / "corrupt" / "BAD.queue.msg").read_bytes()
    assert spool.recover().quarantined == [], "set aside once, never retried"


def test_recover_quarantines_a_truncated_queue_file(spool: Spool) -> None:
    e = _entry("TORN")
    spool.accept(e, b"Subject: x\r\n\r\n" + b"y" * 1000)
    path = spool.queue_path("TORN")
    path.write_bytes(path.read_bytes()[:500])  # outside damage: the envelope is gone
    found = spool.recover()
    assert found.ready == [] and [m for m, _ in found.quarantined] == ["TORN"]
    assert (spool.root / "corrupt" / "TORN.queue.msg").exists()


def test_recover_imports_a_legacy_spool_and_sets_aside_an_entry_without_body(
        spool: Spool) -> None:
    (spool.root / "messages").mkdir()
    old, lost = _entry("OLD"), _entry("LOST")
    old.next_attempt = 99.0
    (spool.root / "messages" / "OLD.eml").write_bytes(b"Subject: old\r\n\r\nbody\r\n")
    (spool.root / "deferred" / "OLD.json").write_bytes(old.to_json())
    (spool.root / "incoming" / "LOST.json").write_bytes(lost.to_json())  # body missing
    found = spool.recover()
    assert [e.id for e in found.deferred] == ["OLD"] and found.ready == []
    assert spool.read_body("OLD") == b"Subject: old\r\n\r\nbody\r\n"
    assert (spool.root / "corrupt" / "LOST.incoming.json").exists()
    assert not (spool.root / "messages").exists()


def test_finish_forgets_body_but_not_log(spool: Spool) -> None:
    e = _entry()
    spool.accept(e, b"x\r\n")
    MessageLog(spool.root).append(e.id, "received", result="accepted", recipients=[])
    assert spool.claim(e.id) is not None
    spool.finish(e.id)
    assert not spool.queue_path(e.id).exists()
    assert spool.counts() == {"incoming": 0, "active": 0, "deferred": 0}
    assert read_record(spool.root, e.id).received["result"] == "accepted"


def test_message_log_skips_a_torn_last_line_and_derives_status(spool: Spool) -> None:
    log = MessageLog(spool.root)
    log.append("M1", "received", result="accepted", recipients=["b@x.example"])
    log.append("M1", "attempt", host="mx.x.example", outcome="temporary")
    log.append("M1", "deferred", recipients=["b@x.example"], reason="4xx")
    with open(spool.root / "log" / "M1.jsonl", "a") as f:
        f.write('{"event": "deliv')  # crash mid-append
    record = read_record(spool.root, "m1")
    assert record.status == "deferred"
    assert len(record.attempts) == 1
    log.append("M1", "delivered", recipients=["b@x.example"])
    assert [r.status for r in list_records(spool.root)] == ["delivered"]


def test_message_log_unknown_id_is_a_user_error(spool: Spool) -> None:
    with pytest.raises(UserError, match="no message"):
        read_record(spool.root, "NOPE")
    with pytest.raises(UserError, match="not a relay spool"):
        list_records(spool.root / "elsewhere")


@pytest.mark.parametrize("address, refused", [
    ("<@a.example,@b.example:user@c.example>", True),
    ("<user%c.example@relay.example>", True),
    ("<c.example!user@relay.example>", True),
    ('<"user@c.example"@relay.example>', True),
    ("<user@c.example> SIZE=100", False),
    ("<>", False),
    ("<first.last+tag@c.example>", False),
])
def test_routing_tricks_are_recognised(address: str, refused: bool) -> None:
    assert (routing_trick(address) is not None) is refused


TLS13 = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)


@pytest.mark.parametrize("option, tls, refused", [
    (ReceiptOption.OPPORTUNISTIC, None, False),
    (ReceiptOption.ENFORCED, None, True),
    (ReceiptOption.ENFORCED, TlsInfo("TLSv1", "ECDHE-RSA-AES256-SHA", 256), False),
    (ReceiptOption.TLS12_NCSC, None, True),
    (ReceiptOption.TLS12_NCSC, TLS13, False),
    (ReceiptOption.TLS12_NCSC, TlsInfo("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", 128), False),
    (ReceiptOption.TLS12_NCSC, TlsInfo("TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305", 256), False),
    (ReceiptOption.TLS12_NCSC, TlsInfo("TLSv1.2", "AES128-SHA", 128), True),
    (ReceiptOption.TLS12_NCSC, TlsInfo("TLSv1.2", "ECDHE-RSA-AES128-SHA", 128), True),
    (ReceiptOption.TLS12_NCSC, TlsInfo("TLSv1.1", "ECDHE-RSA-AES256-SHA", 256), True),
])
def test_tls_refusal_per_receipt_option(option: ReceiptOption, tls: TlsInfo | None,
                                        refused: bool) -> None:
    reply = tls_refusal(option, tls)
    assert (reply is not None) is refused
    if tls is None and refused:
        assert reply == REPLY_STARTTLS_FIRST


def test_strictest_receipt_option_wins() -> None:
    opt = ReceiptOption
    assert strictest([opt.OPPORTUNISTIC, opt.TLS12_NCSC, opt.ENFORCED]) is opt.TLS12_NCSC
    assert strictest([opt.OPPORTUNISTIC, opt.ENFORCED]) is opt.ENFORCED
    assert strictest([]) is opt.OPPORTUNISTIC


def test_backoff_doubles_and_is_clamped() -> None:
    s = RelaySettings(backoff_min=300, backoff_max=4000)
    assert [s.backoff(n) for n in (1, 2, 3, 4, 5, 9)] == [300, 600, 1200, 2400, 4000, 4000]


def test_dsn_is_an_rfc3464_report_naming_the_failure() -> None:
    entry = _entry("E5")
    failed = [Recipient("b@trusted.example", "failed",
                        "mx.trusted.example[127.0.0.10]:25: 550 5.7.1 Go away")]
    original = b"From: a@corp.example\r\nSubject: report\r\n\r\nsecret body\r\n"
    raw = build_dsn(entry, failed, original, "relay.corp.example", expired=False)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=email_policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "a@corp.example"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert "550 5.7.1 Go away" in parts[0].get_content()
    status = raw.decode()
    assert "Final-Recipient: rfc822; b@trusted.example" in status
    assert "Status: 5.7.1" in status and "Action: failed" in status
    assert "Subject: report" in status and "secret body" not in status


def test_dsn_does_not_hand_back_the_secure_messaging_request() -> None:
    original = (b"From: a@corp.example\r\nX-Connectwiz-Secure: External Recipients\r\n"
                b"Subject: s\r\n\r\nbody\r\n")
    failed = [Recipient("b@x.example", "failed", "550 5.1.1 unknown")]
    raw = build_dsn(_entry(), failed, original, "relay.example", expired=False)
    assert b"Subject: s" in raw and b"X-Connectwiz-Secure" not in raw


def test_dsn_after_lifetime_says_expired() -> None:
    failed = [Recipient("b@x.example", "failed", "gave up after 3 attempts; last error: "
                        "TLS required but the server does not offer STARTTLS")]
    raw = build_dsn(_entry(), failed, b"Subject: s\r\n\r\n", "relay.example", expired=True)
    assert b"Status: 5.4.7" in raw and b"does not offer STARTTLS" in raw


def test_queue_entry_json_round_trip() -> None:
    e = _entry()
    e.recipients[1].status = "delivered"
    assert QueueEntry.from_json(e.to_json()) == e
    assert json.loads(e.to_json())["recipients"][1]["status"] == "delivered"


def test_one_relay_per_spool(spool: Spool) -> None:
    spool.lock()
    other = Spool(spool.root)
    with pytest.raises(UserError, match="in use by another relay"):
        other.lock()
    spool.unlock()
    other.lock()  # free again once the first lets go
    other.unlock()


def _hold_lock(spool: Spool, owner: int | None) -> subprocess.Popen[str]:
    """Another process holding the spool lock, as a relay's worker does, with ``owner``
    (None: itself) in the lock file; it lets go when its stdin closes."""
    code = ("import fcntl, os, sys\n"
            f"fd = os.open({str(spool.root / 'lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            f"os.write(fd, b'%d\\n' % {owner or 'os.getpid()'})\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_the_lock_waits_for_the_workers_of_a_dead_relay_and_refuses_a_live_one(
        spool: Spool) -> None:
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    live = _hold_lock(spool, None)
    try:
        with pytest.raises(UserError, match="in use by another relay"):
            spool.lock(wait=60)  # at once, not after 60 s: that relay still runs
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait()
    orphans = _hold_lock(spool, dead)  # the lock file names a relay that is gone
    told = []

    def waiting(pid: int) -> None:
        told.append(pid)
        assert orphans.stdin is not None
        orphans.stdin.close()  # the workers finish and exit

    try:
        spool.lock(wait=60, waiting=waiting)
    finally:
        orphans.kill()
        orphans.wait()
    assert told == [dead]
    assert (spool.root / "lock").read_text() == f"{os.getpid()}\n"
    spool.unlock()


def test_failed_write_leaves_nothing_behind(spool: Spool) -> None:
    with pytest.raises(OSError):
        spool.write_atomic(spool.root / "no-such-dir" / "x.json", b"data")
    assert list((spool.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("extra, message", [
    (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
    (["--backoff-min", "10", "--backoff-max", "5"], "--backoff-max must not be smaller"),
    (["--max-size", "0"], "--max-size must be positive"),
    (["--listen", "127.0.0.1:99999"], "bad port"),
])
def test_relay_command_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           extra: list[str], message: str) -> None:
    from connectwiz.cli import main

    bundle = tmp_path / "bundle.toml"
    bundle.write_text("schema_version = 1\n")
    (tmp_path / "cert.pem").write_text("not used")
    args = ["relay", "--bundle", str(bundle), "--spool", str(tmp_path / "spool"), *extra]
    args = [a if a != "cert.pem" else str(tmp_path / "cert.pem") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("connectwiz: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "spool").exists(), "nothing created for a refused start"


def test_client_ips_from_a_dual_stack_listener_compare_as_ipv4() -> None:
    from ipaddress import ip_address

    from connectwiz.relay.receipt import parse_ip

    assert parse_ip("::ffff:10.1.2.3") == ip_address("10.1.2.3")
    assert parse_ip("::1") == ip_address("::1")
    assert parse_ip("not an ip") is None


def test_event_log_human_lines_quote_values_and_never_split() -> None:
    import io


    stream = io.StringIO()
    log = EventLog(stream=stream)
    log("refused", client="127.0.0.2", reason="530 5.7.0 Must\r\nfake=line", policy=None,
        helo="", n=3)
    [line] = stream.getvalue().splitlines()
    stamp, event, fields = line.split(" ", 2)
    assert event == "refused" and stamp.endswith("Z")
    # None is left out; empty, spaced or '='-holding values are quoted, CR/LF escaped.
    assert fields == 'client=127.0.0.2 reason="530 5.7.0 Must\\r\\nfake=line" helo="" n=3'


def test_message_status_from_the_recipients_fates(spool: Spool) -> None:
    log = MessageLog(spool.root)
    a, b = "a@x.example", "b@y.example"
    log.append("P1", "received", result="accepted", recipients=[a, b])
    log.append("P1", "delivered", recipients=[a])
    assert read_record(spool.root, "P1").status == "queued"  # b has no fate yet
    log.append("P1", "bounced", recipients=[b], reason="550")
    assert read_record(spool.root, "P1").status == "partly bounced"
    log.append("P2", "received", result="accepted", recipients=[a, b])
    log.append("P2", "expired", recipients=[a, b])
    assert read_record(spool.root, "P2").status == "bounced"
    log.append("P3", "received", result="530 5.7.0 Must issue a STARTTLS command first",
               recipients=[a])
    assert read_record(spool.root, "P3").status == "refused"


def test_a_spool_that_cannot_be_created_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from connectwiz.cli import main

    bundle = tmp_path / "bundle.toml"
    bundle.write_text("schema_version = 1\n")
    (tmp_path / "afile").write_text("a file where a folder should be")
    spool = tmp_path / "afile" / "spool"
    assert main(["relay", "--bundle", str(bundle), "--spool", str(spool),
                 "--listen", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("connectwiz: cannot create the spool") and err.count("\n") == 1
    assert "Traceback" not in err
    # Which folder and why, in the system's words.
    assert err.endswith(f"{spool / 'tmp'}: Not a directory\n"), err


class _Recording:
    """A stream that notes which thread wrote what."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []

    def write(self, text: str) -> None:
        self.writes.append((threading.current_thread().name, text))

    def flush(self) -> None:
        pass


def test_lines_logged_behind_are_written_by_the_log_thread_in_order_and_all() -> None:
    stream = _Recording()
    log = EventLog(stream=stream)
    with log.writing_behind():
        log("first", n=1)
        workers = [threading.Thread(target=lambda i=i: log("worker", n=i)) for i in range(20)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        log("last", n=99)
    text = "".join(t for _, t in stream.writes)
    lines = text.splitlines()
    assert len(lines) == 22 and "first n=1" in lines[0] and "last n=99" in lines[-1]
    assert sorted(int(line.rsplit("=", 1)[1]) for line in lines[1:-1]) == list(range(20))
    assert {name for name, _ in stream.writes} == {"log"}, "the logging thread wrote itself"
    log("after", n=100)  # written at once again
    assert stream.writes[-1][0] == threading.current_thread().name


def test_logging_behind_a_stalled_stream_waits_instead_of_growing(monkeypatch) -> None:
    """A journal that stops reading must not make the relay's memory grow without bound:
    past the limit, logging waits for the writer, as a direct write would."""
    monkeypatch.setattr(events, "BEHIND_LIMIT", 3)
    stalled = threading.Event()

    class Stalled(_Recording):
        def write(self, text: str) -> None:
            stalled.wait()
            super().write(text)

    stream = Stalled()
    log = EventLog(stream=stream)
    logged: list[int] = []

    def many() -> None:
        for n in range(100):
            log("line", n=n)
            logged.append(n)

    with log.writing_behind():
        logger = threading.Thread(target=many)
        logger.start()
        try:
            logger.join(0.5)
            # (the writer holds one batch, the queue three more, the logger waits for room)
            waited = logger.is_alive() and len(logged) < 100
        finally:
            stalled.set()
        logger.join(5)
    assert waited, f"logging did not wait: {len(logged)} lines logged"
    assert len(logged) == 100
    assert len("".join(t for _, t in stream.writes).splitlines()) == 100
