"""The Mail flow step: per partner domain counts from a real message log (written with the
relay's own MessageLog and Attempt records), its actions, and its pictures at 80x24."""

from __future__ import annotations

import io
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from connectwiz.bundle import Bundle
from connectwiz.policy.model import EncryptionMode, ValidationStatus
from connectwiz.relay import queuectl
from connectwiz.relay.deliver import Attempt
from connectwiz.relay.msglog import MessageLog
from connectwiz.relay.queuefile import QueueEntry, Recipient
from connectwiz.relay.spool import Spool
from connectwiz.tui.components.domain_dialog import DomainValidateDialog
from connectwiz.tui.components.finish_warning import FinishWarningDialog
from connectwiz.tui.screens.domains import DomainsScreen
from connectwiz.tui.screens.mailflow import MailFlowScreen
from tests.tui.helpers import NOW, Setup, wait_for, wizard

DEFERRED_ID = "20261122T083000-DEFER1"
EXPIRED_ERROR = ("TLS required but the certificate is not accepted: certificate expired on "
                 "2026-10-23")


def _at(hours: float) -> str:
    return (NOW - timedelta(hours=hours)).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _attempt(rcpt: str, host: str, *, error: str = "", tls: str | None = "TLSv1.3",
             option: str = "enforced", outcome: str = "delivered") -> dict[str, Any]:
    att = Attempt(host, "127.0.0.12", 25, "Enforced TLS - Strict", option, "strict", "1.2",
                  [rcpt], tls_version=tls, reply="220 ready", outcome=outcome, error=error,
                  policy_domain=rcpt.rpartition("@")[2])
    return {"event": "attempt", "policy": "p", **att.as_record()}


def _message(log: MessageLog, msg_id: str, rcpt: str, hours: float,
             records: list[dict[str, Any]]) -> None:
    received = {"event": "received", "at": _at(hours + 0.01), "mail_from": "alice@corp.example",
                "recipients": [rcpt], "result": "accepted"}
    log.append_many(msg_id, [received, *({"at": _at(hours), **r} for r in records)])


def write_spool(root: Path) -> Path:
    """Mail to four domains over the last week, as the relay logs it."""
    spool = Spool(root)
    spool.create()
    log = MessageLog(root)
    for n, hours in enumerate((1, 5, 20, 72)):
        rcpt = f"bob{n}@trusted.example"
        _message(log, f"20261122T000000-OK{n}", rcpt, hours,
                 [_attempt(rcpt, "mx.trusted.example"),
                  {"event": "delivered", "recipients": [rcpt]}])
    rcpt = "carol@expired.example"
    failed = _attempt(rcpt, "mx.expired.example", error=EXPIRED_ERROR, outcome="temporary")
    deferred = {"event": "deferred", "recipients": [rcpt], "reason": EXPIRED_ERROR}
    _message(log, DEFERRED_ID, rcpt, 2, [failed, deferred, failed, deferred])
    rcpt = "dan@nostarttls.example"
    no_tls = "TLS required but the server does not offer STARTTLS"
    _message(log, "20261120T000000-BOUNCE", rcpt, 48, [
        _attempt(rcpt, "mx.nostarttls.example", error=no_tls, tls=None, outcome="temporary"),
        {"event": "bounced", "recipients": [rcpt], "reason": no_tls}])
    rcpt = "eve@corp.example"  # internal: not a partner domain
    _message(log, "20261122T000000-INTERNAL", rcpt, 1, [
        _attempt(rcpt, "mail.corp.example"), {"event": "delivered", "recipients": [rcpt]}])
    rcpt = "old@trusted.example"  # older than a week: in no window
    _message(log, "20261101T000000-OLD", rcpt, 24 * 9, [
        _attempt(rcpt, "mx.trusted.example"), {"event": "delivered", "recipients": [rcpt]}])
    # The deferred message is in the queue too, so that retry has something to flush.
    entry = QueueEntry(id=DEFERRED_ID, mail_from="alice@corp.example",
                       recipients=[Recipient(rcpt.replace("old@trusted", "carol@expired"))],
                       received_at=time.time())
    spool.accept(entry, b"Subject: hi\r\n\r\nhello\r\n")
    claimed = spool.claim(DEFERRED_ID)
    assert claimed is not None
    spool.defer(claimed[0])
    return root


def _bundle(path: Path, *, never_validated: bool = False) -> Path:
    setup = Setup(domains=["trusted.example", "expired.example", "nostarttls.example",
                           *(["new.example"] if never_validated else [])],
                  domain_checks={"trusted.example": ValidationStatus.STRICT,
                                 "expired.example": ValidationStatus.RELAXED,
                                 "nostarttls.example": ValidationStatus.UNSUPPORTED})
    return setup.write(path)


def _app(bundle_path: Path, spool: Path) -> Any:
    app = wizard(bundle_path)
    app.spool = spool
    return app


async def _loaded(pilot: Pilot[Any]) -> MailFlowScreen:
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, MailFlowScreen)
                   and not pilot.app.screen.loading and bool(pilot.app.screen.flows),
                   what="the mail flow read")
    screen = pilot.app.screen
    assert isinstance(screen, MailFlowScreen)
    return screen


async def test_counts_per_domain_from_the_log(bundle_path: Path, tmp_path: Path) -> None:
    app = _app(_bundle(bundle_path), write_spool(tmp_path / "spool"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("m")
        screen = await _loaded(pilot)
        flows = {f.domain: f for f in screen.flows}
        assert set(flows) == {"trusted.example", "expired.example", "nostarttls.example"}
        trusted = flows["trusted.example"]
        assert trusted.day == {"delivered": 3, "deferred": 0, "bounced": 0}
        assert trusted.week == {"delivered": 4, "deferred": 0, "bounced": 0}
        expired = flows["expired.example"]
        # deferred twice, but one recipient
        assert expired.day == {"delivered": 0, "deferred": 1, "bounced": 0}
        assert expired.last_failure == f"certificate-expired: {EXPIRED_ERROR}"
        assert [d.id for d in expired.deferred] == [DEFERRED_ID]
        assert expired.deferred[0].attempts == 2
        nostarttls = flows["nostarttls.example"]
        assert nostarttls.day == {"delivered": 0, "deferred": 0, "bounced": 0}
        assert nostarttls.week == {"delivered": 0, "deferred": 0, "bounced": 1}
        assert nostarttls.last_failure.startswith("starttls-not-supported: ")


async def test_key_on_a_domain_opens_mail_flow_there(bundle_path: Path, tmp_path: Path) -> None:
    app = _app(_bundle(bundle_path), write_spool(tmp_path / "spool"))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(DomainsScreen())
        await wait_for(pilot, lambda: isinstance(app.screen, DomainsScreen), what="domains")
        await pilot.press("down")  # expired.example
        await pilot.press("m")
        screen = await _loaded(pilot)
        selected = screen.selected()
        assert selected is not None and selected.domain == "expired.example"
        await pilot.press("v")  # validate again: the domain's validation dialog
        await wait_for(pilot, lambda: isinstance(app.screen, DomainValidateDialog)
                       and app.screen.domain == "expired.example", what="validate dialog")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="back on mail flow")
        await pilot.press("b")
        assert isinstance(app.screen, DomainsScreen)


async def test_relaxed_asks_as_finish_does_then_saves(bundle_path: Path,
                                                      tmp_path: Path) -> None:
    path = _bundle(bundle_path, never_validated=True)
    app = _app(path, write_spool(tmp_path / "spool"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("m")
        screen = await _loaded(pilot)
        screen.query_one("DataTable").move_cursor(row=0)  # expired.example, enforced Strict
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, FinishWarningDialog),
                       what="the Finish warning")
        await pilot.press("escape")  # Go back: nothing changes
        await wait_for(pilot, lambda: app.screen is screen, what="back on mail flow")
        assert app.state.domain("expired.example").encryption_mode is EncryptionMode.STRICT
        assert not app.state.unsaved()
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, FinishWarningDialog),
                       what="the Finish warning")
        await pilot.press("a")  # Finish anyway: saved
        await wait_for(pilot, lambda: not app.state.unsaved()
                       and Bundle.load(path).model.external_domains[1].encryption_mode
                       is EncryptionMode.RELAXED, what="the bundle saved")


async def test_retry_now_flushes_the_domains_deferred_mail(bundle_path: Path,
                                                           tmp_path: Path) -> None:
    spool = write_spool(tmp_path / "spool")
    app = _app(_bundle(bundle_path), spool)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("m")
        screen = await _loaded(pilot)
        screen.query_one("DataTable").move_cursor(row=0)
        await pilot.press("t")
        # No relay runs on this spool: queue control moves it under the spool lock.
        await wait_for(pilot, lambda: queuectl.state_of(Spool(spool), DEFERRED_ID)
                       == "incoming", what="the message queued again")


def _at_expired(pilot: Pilot[Any]) -> Any:
    async def run() -> None:
        await pilot.press("m")
        screen = await _loaded(pilot)
        screen.query_one("DataTable").move_cursor(row=0)
        await pilot.pause()
    return run()


def test_snapshot_mail_flow(snap_compare: Any, bundle_path: Path, tmp_path: Path) -> None:
    app = _app(_bundle(bundle_path), write_spool(tmp_path / "spool"))
    assert snap_compare(app, terminal_size=(80, 24), run_before=_at_expired)


def test_snapshot_mail_flow_empty(snap_compare: Any, bundle_path: Path, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create()
    app = _app(_bundle(bundle_path), spool.root)

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, MailFlowScreen)
                       and not pilot.app.screen.loading, what="the mail flow read")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


@pytest.mark.network
async def test_retry_now_makes_the_running_relay_try_again(lab, lab_network_options,
                                                           bundle_path: Path,
                                                           tmp_path: Path) -> None:
    """End to end: a real relay defers mail to a lab domain whose certificate expired (and
    would not retry for an hour); t on its row has the relay try it again at once."""
    from dataclasses import replace

    from connectwiz.relay.events import EventLog
    from connectwiz.relay.msglog import read_record
    from connectwiz.relay.server import Relay
    from tests.relay.conftest import FAST, STRICT, body, make_model, send

    spool = tmp_path / "relay-spool"
    relay = Relay(lambda: make_model(lab, delivery={"expired.example": STRICT}), spool,
                  ("127.0.0.1", 0), options=lab_network_options,
                  settings=replace(FAST, backoff_min=3600, backoff_max=3600),
                  log=EventLog(json_lines=True, stream=io.StringIO()))
    await relay.start()
    try:
        msg_id = await send(relay.address[1], "a@corp.example", ["x@expired.example"],
                            body("retry"))

        def attempts() -> int:
            record = read_record(spool, msg_id)
            return len(record.attempts) if record.status == "deferred" else 0

        app = _app(_bundle(bundle_path), spool)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: attempts() == 1, what="the first attempt")
            await pilot.press("m")
            screen = await _loaded(pilot)
            assert [d.id for d in screen.flows[0].deferred] == [msg_id]
            await pilot.press("t")
            await wait_for(pilot, lambda: attempts() == 2, what="the relay trying again")
    finally:
        await relay.stop()
