"""SSL Mode and pinned client certificates as a real Postfix enforces them from
`export --format postfix`: the same outcomes as connectwiz's relay (tests/relay).

Delivery: a lab server offering only TLS 1.2 with RSA key exchange and CBC ciphers gets mail
under Strong (ciphers=high) but not under Very Strong (exclude=kRSA:SHA1:...). Receipt: a
sender whose receipt policy pins a self-signed client certificate is accepted with it and
refused without it (check_ccert_access in a restriction class).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import smtplib
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from connectwiz.cli import main as cli_main
from connectwiz.lab import LabHandle
from tests.probe.certfactory import make_leaf

from .postfix import POSTFIX, PostfixInstance, running

pytestmark = [
    pytest.mark.network,
    pytest.mark.peer,
    pytest.mark.timeout(180),
    pytest.mark.skipif(POSTFIX is None, reason="Postfix is not installed "
                       "(apt-get install postfix; .ci/run installs it on CI)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="starting a Postfix instance needs root"),
]

STRONG, VERY_STRONG = "strong.sslmode-pf.example", "verystrong.sslmode-pf.example"


def _cli(*argv: str) -> None:
    assert cli_main(list(argv)) == 0, argv


def _pair(folder: Path, name: str, usage: object) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` and its key, as PEM files in ``folder``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_leaf([name], None, key=key, eku=(usage,))
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return folder / f"{name}.pem", folder / f"{name}.key"


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _pair(tmp_path_factory.mktemp("client"), "mx.partner.example",
                 ExtendedKeyUsageOID.CLIENT_AUTH)


@pytest.fixture(scope="module")
def postfix(lab: LabHandle, client_cert: tuple[Path, Path],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixInstance]:
    for domain in (STRONG, VERY_STRONG):
        lab.add_sink([domain], "rsakx")
    folder = tmp_path_factory.mktemp("bundle")
    shutil.copy(client_cert[0], folder / "partner.pem")
    bundle = folder / "bundle.toml"
    _cli("org", "set", "--bundle", str(bundle), "--internal-domain", "corp.example",
         "--authorized-outbound", "127.0.0.0/8")
    for name, mode, domain in (("Strong", "strong", STRONG),
                               ("Very strong", "very_strong", VERY_STRONG)):
        _cli("policies", "add", "definition", "--bundle", str(bundle), f"name={name}",
             "option=enforced", "encryption_mode=relaxed", f"ssl_mode={mode}")
        _cli("policies", "add", "delivery", "--bundle", str(bundle), f"narrative={name}",
             f"definition={name}", f'to={{ applies = "domain", specifically = ["{domain}"] }}')
    _cli("policies", "add", "receipt", "--bundle", str(bundle), "narrative=Pinned partner",
         "option=enforced", 'from={ applies = "domain", specifically = ["partner.example"] }',
         "client_certificate=partner.pem")
    exported = tmp_path_factory.mktemp("export") / "postfix"
    _cli("export", "--bundle", str(bundle), "--format", "postfix", "-o", str(exported))
    routes = {d: (lab.address_of(d), lab.smtp_port) for d in (STRONG, VERY_STRONG)}
    root = Path(tempfile.mkdtemp(prefix="connectwiz-postfix-"))
    server_cert, server_key = _pair(folder, "postfix.interop.test", ExtendedKeyUsageOID.SERVER_AUTH)
    extra = (f"smtpd_tls_cert_file = {server_cert}", f"smtpd_tls_key_file = {server_key}")
    instance = PostfixInstance(root, exported, routes, Path(lab.ca_file), extra=extra)
    try:
        with running(instance):
            yield instance
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _send(port: int, tag: str, domain: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(f"alice-{tag}@corp.example", [f"rcpt-{tag}@{domain}"],
                        f"Subject: {tag}\r\n\r\npayload {tag}\r\n".encode())


async def test_postfix_delivers_under_strong_and_defers_under_very_strong(
        lab, postfix) -> None:
    tag = secrets.token_hex(6)
    await asyncio.to_thread(_send, postfix.port, tag, STRONG)
    await asyncio.to_thread(postfix.wait_log, rf"to=<rcpt-{tag}@{STRONG}>.*status=sent")
    await asyncio.to_thread(_send, postfix.port, tag, VERY_STRONG)
    line = await asyncio.to_thread(
        postfix.wait_log, rf"to=<rcpt-{tag}@{VERY_STRONG}>.*status=(\w+)")
    assert line.group(1) == "deferred", line.group(0)
    got = [m for m in list(lab.messages) if tag.encode() in m.data]
    assert len(got) == 1 and got[0].tls_version == "TLSv1.2"


def _rcpt(port: int, sender: str, ctx: ssl.SSLContext | None) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        if ctx is not None:
            client.starttls(context=ctx)
            client.ehlo("client.test")
        client.mail(sender)
        code, _ = client.rcpt("bob@corp.example")
        return code


def _context(cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


async def test_postfix_requires_the_pinned_client_certificate(postfix, client_cert) -> None:
    port = postfix.port
    assert await asyncio.to_thread(_rcpt, port, "a@partner.example", _context(client_cert)) \
        == 250
    assert await asyncio.to_thread(_rcpt, port, "a@partner.example", _context(None)) == 554
    assert await asyncio.to_thread(_rcpt, port, "a@partner.example", None) == 530
    assert await asyncio.to_thread(_rcpt, port, "a@elsewhere.example", _context(None)) == 250
