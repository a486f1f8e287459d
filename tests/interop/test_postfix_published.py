"""Published policies with Postfix, from `export --format postfix --mta-sts`: the bundle's
table answers first, then the MTA-STS socketmap (what postfix-mta-sts-resolver serves), and
the relay reaches the same outcomes from the lab's real MTA-STS publication.

The socketmap here is a stand-in for postfix-mta-sts-resolver speaking Postfix's socketmap
protocol (netstrings "postfix KEY" -> "OK secure match=..."), answering what that daemon
answers for the lab's ``enforce`` policies. Postfix keys TLS policy on the next hop, which
tests/interop/postfix.py makes ``[ip]:port``, so the stand-in maps hops back to domains.
What this proves: the exported map order (bundle first, so its No TLS wins; MTA-STS raises
an unlisted domain to ``secure``). Not proven here: the daemon itself, and DANE (Postfix
would need DNSSEC answers from the resolver of /etc/resolv.conf, which is not on loopback).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socketserver
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectwiz.lab import LabHandle

from . import test_postfix
from .postfix import MASTER_CF, PostfixInstance, lab_resolver, running
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


def _netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


class _StsSocketmap(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers  # lookup key (a next hop) -> policy
        self.keys: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(socketserver.StreamRequestHandler):
    server: _StsSocketmap

    def handle(self) -> None:
        while True:
            length = b""
            while (c := self.rfile.read(1)) not in (b":", b""):
                length += c
            if not c or not length.isdigit():
                return
            request = self.rfile.read(int(length)).decode()
            self.rfile.read(1)  # the netstring's ","
            _, _, key = request.partition(" ")
            self.server.keys.append(key)
            answer = self.server.answers.get(key)
            self.wfile.write(_netstring(f"OK {answer}".encode() if answer else b"NOTFOUND "))


@pytest.fixture(scope="module")
def socketmap(lab: LabHandle) -> Iterator[_StsSocketmap]:
    # Keyed by Postfix's next hop, the domain and the lab's port (tests/interop/postfix.py).
    answers = {f"{d}:{lab.smtp_port}": f"secure match=mx.{d} servername=hostname"
               for d in (ENFORCED, PLAIN)}
    server = _StsSocketmap(answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "bundle.toml"
    path.write_text(BUNDLE)
    return path


@pytest.fixture(scope="module")
def postfix(lab: LabHandle, bundle_path: Path, socketmap: _StsSocketmap,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixInstance]:
    exported = tmp_path_factory.mktemp("export") / "postfix"
    address = f"inet:127.0.0.1:{socketmap.server_address[1]}"
    _cli("export", "--bundle", str(bundle_path), "--format", "postfix", "-o", str(exported),
         "--mta-sts", address)
    maps = next(line for line in (exported / "main.cf").read_text().splitlines()
                if line.startswith("smtp_tls_policy_maps = "))
    assert maps.endswith(f"/tls_policy, socketmap:{address}:postfix")
    root = Path(tempfile.mkdtemp(prefix="connectwiz-postfix-"))
    # The exported maps line as is, but with the test's rekeyed copy of the table.
    instance = PostfixInstance(root, exported, (ENFORCED, PLAIN), lab.smtp_port,
                               Path(lab.ca_file), lab_resolver(lab),
                               extra=(maps.replace("/tls_policy,", "/tls_policy.lab,"),))
    try:
        with running(instance):
            yield instance
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_published_enforce_defers_an_unverified_mx_in_both(lab, postfix, relay,
                                                                 socketmap) -> None:
    tag = secrets.token_hex(6)
    await asyncio.to_thread(_send_to_postfix, postfix.port, tag, ENFORCED)
    line = await asyncio.to_thread(
        postfix.wait_log, rf"to=<rcpt-{tag}@{ENFORCED}>.*status=(\w+) \((.*)\)")
    # Without the socketmap's "secure" Postfix would deliver (default level may).
    assert line.group(1) == "deferred", line.group(0)
    assert f"{ENFORCED}:{lab.smtp_port}" in socketmap.keys
    msg_id = await _send_to_relay(relay.port, f"{tag}r", ENFORCED)
    record = await _relay_status(relay.spool, msg_id, "deferred")
    assert record.attempts[0]["decided_by"] == "mta-sts"
    assert _lab_got(lab, tag) == []


async def test_bundle_no_tls_answers_before_mta_sts_in_both(lab, postfix, relay,
                                                            socketmap) -> None:
    tag = secrets.token_hex(6)
    await asyncio.to_thread(_send_to_postfix, postfix.port, tag, PLAIN)
    await asyncio.to_thread(postfix.wait_log, rf"to=<rcpt-{tag}@{PLAIN}>.*status=sent")
    hop = f"{PLAIN}:{lab.smtp_port}"
    assert hop not in socketmap.keys  # the bundle's table answered first
    msg_id = await _send_to_relay(relay.port, f"{tag}r", PLAIN)
    await _relay_status(relay.spool, msg_id, "delivered")
    assert await asyncio.to_thread(lab.wait_for, lambda: len(_lab_got(lab, tag)) == 2, 10)
    assert all(m.tls_version is None for m in _lab_got(lab, tag))


def test_postfix_reads_the_dane_export(tmp_path: Path) -> None:
    # DANE delivery itself needs DNSSEC answers through /etc/resolv.conf (not on loopback
    # here): what is proven is only that Postfix parses the exported settings without a
    # warning and finds the dane entry in the exported table.
    bundle = tmp_path / "bundle.toml"
    bundle.write_text(BUNDLE.replace('"none"', '"opportunistic"'))
    out = tmp_path / "postfix"
    _cli("export", "--bundle", str(bundle), "--format", "postfix", "-o", str(out), "--dane")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "master.cf").write_text(MASTER_CF.format(listen="127.0.0.1:2525"))
    (conf / "main.cf").write_text((out / "main.cf").read_text().replace(
        "${config_directory}/connectwiz", str(out)))
    shown = subprocess.run(
        ["postconf", "-c", str(conf), "-n", "smtp_tls_security_level", "smtp_dns_support_level"],
        capture_output=True, text=True, check=True)
    assert "warning" not in shown.stderr, shown.stderr
    assert shown.stdout.splitlines() == ["smtp_tls_security_level = dane",
                                         "smtp_dns_support_level = dnssec"]
    looked_up = subprocess.run(["postmap", "-q", PLAIN, f"texthash:{out / 'tls_policy'}"],
                               capture_output=True, text=True, check=True)
    assert looked_up.stdout.strip() == "dane protocols=>=TLSv1.2"
