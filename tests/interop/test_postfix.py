"""The same bundle, enforced by a real Postfix (from `export --format postfix`) and by
connectwiz's relay, against the same lab servers: the outcomes must agree.

Everything runs on loopback; tests/interop/postfix.py explains how Postfix is kept away from
the system resolver. Skipped only when Postfix is absent, we are not root (Postfix's master
must start as root to switch to the postfix user) or mount namespaces are not allowed.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import smtplib
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiosmtplib
import pytest

from connectwiz.bundle import Bundle
from connectwiz.cli import main as cli_main
from connectwiz.lab import LabHandle
from connectwiz.probe.options import NetworkOptions
from connectwiz.relay.msglog import MessageRecord, read_record
from connectwiz.relay.server import Relay
from connectwiz.relay.settings import RelaySettings

from .postfix import PostfixInstance, lab_resolver, peer_missing, running

if TYPE_CHECKING:
    from tests.conftest import EventLogFile

PEER_MISSING = peer_missing()

pytestmark = [
    pytest.mark.network,
    pytest.mark.peer,
    pytest.mark.timeout(180),
    pytest.mark.skipif(PEER_MISSING is not None, reason=PEER_MISSING or ""),
]

STRICT_OK, STRICT_BAD, RELAXED = "trusted.example", "selfsigned.example", "wrongname.example"
# A partner whose MX lives in another domain: mx.hoster.example, certificate for that name only.
HOSTED = "hosted.example"
PARTNERS = (STRICT_OK, STRICT_BAD, RELAXED, HOSTED)
FAST = RelaySettings(hostname="relay.corp.example", backoff_min=30, backoff_max=60,
                     delivery_workers=4, shutdown_grace=2, idle_timeout=5)


def _cli(*argv: str) -> None:
    assert cli_main(list(argv)) == 0, argv


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Made the way an admin would: org set, domains add (strict), one --relaxed."""
    path = tmp_path_factory.mktemp("bundle") / "bundle.toml"
    _cli("org", "set", "--bundle", str(path), "--internal-domain", "corp.example",
         "--authorized-outbound", "127.0.0.0/8")
    _cli("domains", "add", "--bundle", str(path), STRICT_OK, STRICT_BAD, HOSTED)
    _cli("domains", "add", "--bundle", str(path), "--relaxed", RELAXED)
    return path


@pytest.fixture(scope="module")
def postfix(lab: LabHandle, bundle_path: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixInstance]:
    exported = tmp_path_factory.mktemp("export") / "postfix"
    _cli("export", "--bundle", str(bundle_path), "--format", "postfix", "-o", str(exported))
    # Not under pytest's tmp folder: that is private to root, and Postfix's own user must
    # reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="connectwiz-postfix-"))
    instance = PostfixInstance(root, exported, PARTNERS, lab.smtp_port, Path(lab.ca_file),
                               lab_resolver(lab))
    try:
        with running(instance):  # stops Postfix even when a test fails
            yield instance
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def relay(bundle_path: Path, lab_network_options: NetworkOptions,
                tmp_path: Path, event_log: EventLogFile) -> AsyncIterator[RunningRelay]:
    model = Bundle.load(bundle_path).model
    r = Relay(lambda: model, tmp_path / "spool", ("127.0.0.1", 0),
              options=lab_network_options, settings=FAST, log=event_log.log)
    await r.start()
    try:
        yield RunningRelay(r.address[1], tmp_path / "spool")
    finally:
        await r.stop()


@dataclass(frozen=True)
class RunningRelay:
    port: int
    spool: Path


def _send_to_postfix(port: int, tag: str, domain: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(f"alice-{tag}@corp.example", [f"rcpt-{tag}@{domain}"],
                        f"Subject: {tag}\r\n\r\npayload {tag}\r\n".encode())


async def _send_to_relay(port: int, tag: str, domain: str) -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
    await client.connect()
    try:
        _, reply = await client.sendmail(f"alice-{tag}@corp.example", [f"rcpt-{tag}@{domain}"],
                                         f"Subject: {tag}\r\n\r\npayload {tag}\r\n".encode())
    finally:
        client.close()
    return reply.rsplit(" ", 1)[-1]


async def _relay_status(spool: Path, msg_id: str, wanted: str) -> MessageRecord:
    deadline = time.monotonic() + 30
    while True:
        record = await asyncio.to_thread(read_record, spool, msg_id)
        if record.status == wanted:
            return record
        assert time.monotonic() < deadline, f"relay: {record.status}, wanted {wanted}"
        await asyncio.sleep(0.05)


def _lab_got(lab: LabHandle, tag: str) -> list:
    return [m for m in list(lab.messages) if tag.encode() in m.data]


async def test_strict_domain_is_delivered_with_verified_tls_by_both(lab, postfix, relay) -> None:
    tag = secrets.token_hex(6)
    await asyncio.to_thread(_send_to_postfix, postfix.port, tag, STRICT_OK)
    mx = lab.address_of(f"mx.{STRICT_OK}")
    await asyncio.to_thread(
        postfix.wait_log, rf"Verified TLS connection established to mx\.{STRICT_OK}\[{mx}\]")
    await asyncio.to_thread(postfix.wait_log, rf"to=<rcpt-{tag}@{STRICT_OK}>.*status=sent")

    msg_id = await _send_to_relay(relay.port, f"{tag}r", STRICT_OK)
    record = await _relay_status(relay.spool, msg_id, "delivered")
    assert record.attempts[-1]["certificate_verified"] is True

    assert await asyncio.to_thread(lab.wait_for, lambda: len(_lab_got(lab, tag)) == 2, 10)
    assert all(m.tls_version in ("TLSv1.2", "TLSv1.3") for m in _lab_got(lab, tag))


async def test_strict_partner_hosted_elsewhere_is_delivered_verified_by_both(
        lab, postfix, relay) -> None:
    """hosted.example's MX is mx.hoster.example, whose certificate names only itself: the
    relay verifies the MX host name, and so must the exported Postfix (verify
    match=hostname). The old export, secure match=hosted.example:.hosted.example, deferred
    this mail while the relay delivered it."""
    tag = secrets.token_hex(6)
    assert "verify match=hostname" in (postfix.conf / "connectwiz" / "tls_policy").read_text()
    await asyncio.to_thread(_send_to_postfix, postfix.port, tag, HOSTED)
    mx = lab.address_of("mx.hoster.example")
    await asyncio.to_thread(postfix.wait_log,
                            rf"Verified TLS connection established to mx\.hoster\.example\[{mx}\]")
    await asyncio.to_thread(postfix.wait_log, rf"to=<rcpt-{tag}@{HOSTED}>.*status=sent")

    msg_id = await _send_to_relay(relay.port, f"{tag}r", HOSTED)
    record = await _relay_status(relay.spool, msg_id, "delivered")
    assert record.attempts[-1]["certificate_verified"] is True
    assert await asyncio.to_thread(lab.wait_for, lambda: len(_lab_got(lab, tag)) == 2, 10)
    assert {m.server for m in _lab_got(lab, tag)} == {"mx.hoster.example"}


async def test_strict_domain_with_a_failing_certificate_is_deferred_by_both(
        lab, postfix, relay) -> None:
    tag = secrets.token_hex(6)
    await asyncio.to_thread(_send_to_postfix, postfix.port, tag, STRICT_BAD)
    line = await asyncio.to_thread(
        postfix.wait_log, rf"to=<rcpt-{tag}@{STRICT_BAD}>.*status=(\w+) \((.*)\)")
    assert line.group(1) == "deferred", line.group(0)
    assert "certificate" in line.group(2).lower() or "verification" in line.group(2).lower()

    msg_id = await _send_to_relay(relay.port, f"{tag}r", STRICT_BAD)
    await _relay_status(relay.spool, msg_id, "deferred")
    assert _lab_got(lab, tag) == []  # neither sent the message over an unverified channel


async def test_relaxed_domain_is_delivered_encrypted_by_both(lab, postfix, relay) -> None:
    tag = secrets.token_hex(6)
    await asyncio.to_thread(_send_to_postfix, postfix.port, tag, RELAXED)
    await asyncio.to_thread(postfix.wait_log, rf"to=<rcpt-{tag}@{RELAXED}>.*status=sent")
    msg_id = await _send_to_relay(relay.port, f"{tag}r", RELAXED)
    await _relay_status(relay.spool, msg_id, "delivered")
    assert await asyncio.to_thread(lab.wait_for, lambda: len(_lab_got(lab, tag)) == 2, 10)
    assert all(m.tls_version is not None for m in _lab_got(lab, tag))


async def test_plaintext_from_a_partner_is_refused_by_both(postfix, relay) -> None:
    def postfix_reply() -> int:
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=10) as client:
            client.ehlo("client.test")
            client.mail(f"someone@{STRICT_OK}")
            code, _ = client.rcpt("bob@corp.example")
            return code

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False,
                             timeout=10)
    await client.connect()
    try:
        await client.ehlo()
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await client.mail(f"someone@{STRICT_OK}")
            await client.rcpt("bob@corp.example")
    finally:
        client.close()
    assert refused.value.code == 530
    assert await asyncio.to_thread(postfix_reply) == 530
