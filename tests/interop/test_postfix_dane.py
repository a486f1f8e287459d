"""DANE (RFC 7672) with a real Postfix, from `export --format postfix --dane`, against the
relay with ``--dnssec-resolver`` on the same lab name server: the outcomes must agree.

The lab name server plays the validating resolver: it sets the AD bit on the answers it
marks authenticated (lab.runner._add_tlsa: the MX lookups of dane-ok.example and
dane-bad.example, their MX hosts' addresses and TLSA records) when the query asks for DNSSEC.
Postfix with ``smtp_dns_support_level = dnssec`` asks (DO bit) and, told to trust the AD bit
(``options trust-ad`` in its private resolv.conf, tests/interop/postfix.py), does DANE.

One wiring difference, as for the rest of tests/interop: the lab listens on its own port,
not 25, and Postfix looks TLSA records up at ``_<port>._tcp.<mx>`` for the port it connects
to, while the relay always asks ``_25._tcp.<mx>``. The module copies the lab's ``_25``
records (and their AD marking) to the lab's port; the records themselves are the lab's.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dns.name
import dns.rdatatype
import pytest

from connectwiz.lab import LabHandle
from connectwiz.probe.options import NetworkOptions

from . import test_postfix
from .postfix import PostfixInstance, in_lab_namespace, lab_resolver, running
from .test_postfix import _cli, _lab_got, _relay_status, _send_to_postfix, _send_to_relay
from .test_postfix import pytestmark as _interop_marks

pytestmark = _interop_marks
relay = test_postfix.relay  # the same fixture, over this module's bundle and options

MATCH, MISMATCH = "dane-ok.example", "dane-bad.example"
POSTTLS_FINGER = shutil.which("posttls-finger") or "/usr/sbin/posttls-finger"

# --dane exports Opportunistic TLS as `dane`: the default level (dane-ok.example has no
# policy) and the table entry of an opportunistic delivery policy (dane-bad.example).
BUNDLE = f"""\
schema_version = 1

[organisation]
internal_domains = ["corp.example"]
authorized_outbound = ["127.0.0.0/8"]

[[delivery_definitions]]
name = "Opportunistic"
option = "opportunistic"

[[delivery_policies]]
narrative = "Opportunistic to {MISMATCH}"
definition = "Opportunistic"
to = {{ applies = "domain", specifically = ["{MISMATCH}"] }}
"""


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "bundle.toml"
    path.write_text(BUNDLE)
    return path


@pytest.fixture
def lab_network_options(lab: LabHandle, lab_network_options: NetworkOptions) -> NetworkOptions:
    """The relay names the lab's name server as its validating resolver."""
    return replace(lab_network_options, dnssec_resolver=lab.nameserver)


def _tlsa_names(lab: LabHandle, domain: str) -> list[dns.name.Name]:
    return [dns.name.from_text(f"_{port}._tcp.mx.{domain}.") for port in (25, lab.smtp_port)]


@pytest.fixture(scope="module")
def tlsa_on_lab_port(lab: LabHandle) -> None:
    zone = lab.lab.zone
    for domain in (MATCH, MISMATCH):
        at_25, at_port = _tlsa_names(lab, domain)
        for record in zone.records[at_25][dns.rdatatype.TLSA]:
            lab.add_record(at_port.to_text(), "TLSA", record)
        zone.authenticated.add(at_port)


@pytest.fixture(scope="module")
def postfix(lab: LabHandle, bundle_path: Path, tlsa_on_lab_port: None,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixInstance]:
    exported = tmp_path_factory.mktemp("export") / "postfix"
    _cli("export", "--bundle", str(bundle_path), "--format", "postfix", "-o", str(exported),
         "--dane")
    assert f"{MISMATCH}\tdane protocols=>=TLSv1.2" in (exported / "tls_policy").read_text()
    root = Path(tempfile.mkdtemp(prefix="connectwiz-postfix-"))
    # An smtp process keeps TLSA answers for their TTL: one delivery per process, so each
    # test meets the records as the lab answers them now.
    instance = PostfixInstance(root, exported, (MATCH, MISMATCH), lab.smtp_port,
                               Path(lab.ca_file), lab_resolver(lab), extra=("max_use = 1",))
    try:
        with running(instance):
            yield instance
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _finger(postfix: PostfixInstance, lab: LabHandle, domain: str) -> str:
    """posttls-finger at level dane-only (no usable TLSA records: no connection), resolving
    through Postfix's private resolv.conf."""
    done = subprocess.run(
        in_lab_namespace([POSTTLS_FINGER, "-t30", "-l", "dane-only", "-c",
                          "-F", str(lab.ca_file), f"{domain}:{lab.smtp_port}"],
                         postfix.resolv_conf),
        capture_output=True, text=True, timeout=60, check=False)
    return done.stdout + done.stderr


async def _postfix_outcome(postfix: PostfixInstance, tag: str, domain: str) -> tuple[str, str]:
    await asyncio.to_thread(_send_to_postfix, postfix.port, tag, domain)
    line = await asyncio.to_thread(
        postfix.wait_log, rf"to=<rcpt-{tag}@{domain}>.*status=(\w+) \((.*)\)")
    return line.group(1), line.group(2)


async def test_matching_tlsa_delivers_verified_by_dane_in_both(lab, postfix, relay) -> None:
    tag = secrets.token_hex(6)
    status, reason = await _postfix_outcome(postfix, tag, MATCH)
    assert status == "sent", reason
    mx = lab.address_of(f"mx.{MATCH}")
    # "Verified" at level dane: the TLSA record matched (level may would say "Trusted").
    await asyncio.to_thread(
        postfix.wait_log, rf"Verified TLS connection established to mx\.{MATCH}\[{mx}\]")
    assert "Verified TLS connection established" in await asyncio.to_thread(
        _finger, postfix, lab, MATCH)

    msg_id = await _send_to_relay(relay.port, f"{tag}r", MATCH)
    record = await _relay_status(relay.spool, msg_id, "delivered")
    assert record.attempts[-1]["decided_by"] == "dane"
    assert record.attempts[-1]["certificate_verified"] is True
    assert await asyncio.to_thread(lab.wait_for, lambda: len(_lab_got(lab, tag)) == 2, 10)


async def test_tlsa_not_matching_defers_in_both(lab, postfix, relay) -> None:
    tag = secrets.token_hex(6)
    status, reason = await _postfix_outcome(postfix, tag, MISMATCH)
    assert status == "deferred", reason
    mx = lab.address_of(f"mx.{MISMATCH}")
    await asyncio.to_thread(postfix.wait_log, rf"verification failed for mx\.{MISMATCH}\[{mx}\]"
                            r"\S*: num=\d+:no matching DANE TLSA records")
    finger = await asyncio.to_thread(_finger, postfix, lab, MISMATCH)
    assert "no matching DANE TLSA records" in finger, finger
    assert "Verified TLS connection established" not in finger, finger

    msg_id = await _send_to_relay(relay.port, f"{tag}r", MISMATCH)
    record = await _relay_status(relay.spool, msg_id, "deferred")
    assert record.attempts[0]["decided_by"] == "dane"
    assert record.attempts[0]["policy_failure"] == "validation-failure"
    assert _lab_got(lab, tag) == []


@contextlib.contextmanager
def _unauthenticated(lab: LabHandle, domain: str) -> Iterator[None]:
    """The domain's TLSA records answered without the AD bit (as an unsigned zone would)."""
    names = _tlsa_names(lab, domain)
    authenticated = lab.lab.zone.authenticated
    for name in names:
        authenticated.discard(name)
    try:
        yield
    finally:
        authenticated.update(names)


async def test_tlsa_without_the_ad_bit_is_ignored_in_both(lab, postfix, relay) -> None:
    # The mismatching records of the test above, now unauthenticated: both fall back to the
    # domain's level (opportunistic) and deliver over TLS.
    tag = secrets.token_hex(6)
    with _unauthenticated(lab, MISMATCH):
        status, reason = await _postfix_outcome(postfix, tag, MISMATCH)
        assert status == "sent", reason
        msg_id = await _send_to_relay(relay.port, f"{tag}r", MISMATCH)
        record = await _relay_status(relay.spool, msg_id, "delivered")
    assert record.attempts[-1]["policy_type"] == "no-policy-found"
    assert record.attempts[-1]["decided_by"] == "bundle"
    mx = lab.address_of(f"mx.{MISMATCH}")
    assert f"Verified TLS connection established to mx.{MISMATCH}[{mx}]" not in postfix.log()
    assert await asyncio.to_thread(lab.wait_for, lambda: len(_lab_got(lab, tag)) == 2, 10)
    assert all(m.tls_version is not None for m in _lab_got(lab, tag))
