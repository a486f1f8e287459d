"""Published policies with Postfix, from `export --format postfix --mta-sts`: the bundle's
table answers first, then postfix-mta-sts-resolver's socketmap, wired as README says, and the
relay reaches the same outcomes from the lab's real MTA-STS publications.

The daemon is the real one (tests/interop/sts_resolver.py: it resolves and fetches the lab's
publications itself). Postfix keys TLS policy on the next hop, which tests/interop/postfix.py
makes ``domain:port``; the daemon drops the port itself, as it does for any next hop.
DANE with Postfix: tests/interop/test_postfix_dane.py.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectwiz.lab import LabHandle
from connectwiz.lab.zones import STS_TESTING_FAILING

from . import test_postfix
from .postfix import PostfixInstance, lab_resolver, running
from .sts_resolver import StsResolverDaemon
from .test_postfix import (
    _cli,
    _lab_got,
    _relay_status,
    _send_to_postfix,
    _send_to_relay,
)
from .test_postfix import pytestmark as _interop_marks

pytestmark = _interop_marks
relay = test_postfix.relay  # the same fixture, over this module's bundle_path

ENFORCED, PLAIN = "sts-relaxed.example", "trusted.example"  # both publish MTA-STS enforce
TESTING = STS_TESTING_FAILING  # publishes testing; its MX's certificate is self-signed

BUNDLE = f"""\
schema_version = 1

[organisation]
internal_domains = ["corp.example"]
authorized_outbound = ["127.0.0.0/8"]

[[delivery_definitions]]
name = "No TLS"
option = "none"

[[delivery_policies]]
narrative = "Plaintext to {PLAIN}"
definition = "No TLS"
to = {{ applies = "domain", specifically = ["{PLAIN}"] }}
"""


@pytest.fixture(scope="module")
def sts_daemon(lab: LabHandle,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[StsResolverDaemon]:
    daemon = StsResolverDaemon(tmp_path_factory.mktemp("mta-sts-daemon"), lab,
                               lab_resolver(lab))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "bundle.toml"
    path.write_text(BUNDLE)
    return path


@pytest.fixture(scope="module")
def postfix(lab: LabHandle, bundle_path: Path, sts_daemon: StsResolverDaemon,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixInstance]:
    exported = tmp_path_factory.mktemp("export") / "postfix"
    address = sts_daemon.socketmap
    _cli("export", "--bundle", str(bundle_path), "--format", "postfix", "-o", str(exported),
         "--mta-sts", address)
    maps = next(line for line in (exported / "main.cf").read_text().splitlines()
                if line.startswith("smtp_tls_policy_maps = "))
    assert maps.endswith(f"/tls_policy, socketmap:{address}:postfix")
    root = Path(tempfile.mkdtemp(prefix="connectwiz-postfix-"))
    instance = PostfixInstance(root, exported, (ENFORCED, PLAIN, TESTING), lab.smtp_port,
                               Path(lab.ca_file), lab_resolver(lab))
    try:
        with running(instance):
            yield instance
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_published_enforce_defers_an_unverified_mx_in_both(lab, postfix, relay,
                                                                 sts_daemon) -> None:
    tag = secrets.token_hex(6)
    await asyncio.to_thread(_send_to_postfix, postfix.port, tag, ENFORCED)
    line = await asyncio.to_thread(
        postfix.wait_log, rf"to=<rcpt-{tag}@{ENFORCED}>.*status=(\w+) \((.*)\)")
    # Without the daemon's "secure" Postfix would deliver (the default level is may).
    assert line.group(1) == "deferred", line.group(0)
    assert "certificate" in line.group(2).lower(), line.group(0)
    assert f"{ENFORCED}:{lab.smtp_port}" in await asyncio.to_thread(sts_daemon.lookups)
    assert f"OK secure match=mx.{ENFORCED} servername=hostname" in sts_daemon.log()
    msg_id = await _send_to_relay(relay.port, f"{tag}r", ENFORCED)
    record = await _relay_status(relay.spool, msg_id, "deferred")
    assert record.attempts[0]["decided_by"] == "mta-sts"
    assert _lab_got(lab, tag) == []


async def test_published_testing_delivers_despite_a_failing_mx_in_both(lab, postfix, relay,
                                                                      sts_daemon) -> None:
    # The same self-signed kind of MX as above, under testing: delivered as before.
    tag = secrets.token_hex(6)
    await asyncio.to_thread(_send_to_postfix, postfix.port, tag, TESTING)
    await asyncio.to_thread(postfix.wait_log, rf"to=<rcpt-{tag}@{TESTING}>.*status=sent")
    assert f"{TESTING}:{lab.smtp_port}" in await asyncio.to_thread(sts_daemon.lookups)
    msg_id = await _send_to_relay(relay.port, f"{tag}r", TESTING)
    record = await _relay_status(relay.spool, msg_id, "delivered")
    attempt = record.attempts[-1]
    assert attempt["policy_type"] == "sts" and attempt["decided_by"] == "bundle"
    assert attempt["policy_failure"] == "certificate-not-trusted"  # noted, not enforced
    assert await asyncio.to_thread(lab.wait_for, lambda: len(_lab_got(lab, tag)) == 2, 10)
    assert all(m.tls_version is not None for m in _lab_got(lab, tag))


async def test_bundle_no_tls_answers_before_mta_sts_in_both(lab, postfix, relay,
                                                            sts_daemon) -> None:
    tag = secrets.token_hex(6)
    await asyncio.to_thread(_send_to_postfix, postfix.port, tag, PLAIN)
    await asyncio.to_thread(postfix.wait_log, rf"to=<rcpt-{tag}@{PLAIN}>.*status=sent")
    hop = f"{PLAIN}:{lab.smtp_port}"
    assert hop not in await asyncio.to_thread(sts_daemon.lookups)  # the bundle answered
    msg_id = await _send_to_relay(relay.port, f"{tag}r", PLAIN)
    await _relay_status(relay.spool, msg_id, "delivered")
    assert await asyncio.to_thread(lab.wait_for, lambda: len(_lab_got(lab, tag)) == 2, 10)
    assert all(m.tls_version is None for m in _lab_got(lab, tag))
