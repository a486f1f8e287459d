"""Portal fixtures: held messages written into a real spool (encrypted with a test key), a
real SMTP sink on loopback standing in for the relay (it receives the codes, receipts and
replies), and the portal's aiohttp app served by aiohttp's test server."""

from __future__ import annotations

import asyncio
import io
import re
import secrets
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.smtp import SMTP

from connectwiz.portal.app import Portal, PortalConfig
from connectwiz.relay.events import EventLog
from connectwiz.relay.held import HeldStore, load_secure_key, token_hash
from connectwiz.relay.secure_content import header_addresses
from connectwiz.relay.spool import Spool
from tests.relay.conftest import relays  # noqa: F401 - a fixture, used by name

SENDER = "alice@corp.example"
READER = "teller@bank.example"
CODE = re.compile(rb"Your one-time code is: ([0-9]{6})")


@pytest.fixture(autouse=True)
def secure_key_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The secure key defaults to $XDG_CONFIG_HOME: keep it in the test's folder."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


@dataclass
class Sink:
    """A real SMTP server on loopback that keeps every message it accepts."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    port: int = 0
    refuse: bool = False

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if self.refuse:
            return "451 4.3.0 try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [message_from_bytes(data, policy=email_policy.default)  # type: ignore[misc]
                for _, rcpts, data in self.messages if address in rcpts]

    async def wait_code(self, address: str, count: int = 1, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while True:
            codes = [CODE.search(data) for _, rcpts, data in self.messages if address in rcpts]
            codes = [c for c in codes if c]
            if len(codes) >= count:
                return codes[count - 1].group(1).decode()
            assert time.monotonic() < deadline, f"no code #{count} for {address}"
            await asyncio.sleep(0.02)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    handler = Sink()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(handler, hostname="sink.test"), "127.0.0.1", 0)
    handler.port = server.sockets[0].getsockname()[1]
    yield handler
    server.close()
    await server.wait_closed()


def mime(tag: str, *, html: str | None = None, attachment: tuple[str, str, bytes] | None = None,
         cc: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = READER
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = f"Statement {tag}"
    msg["Date"] = "Mon, 23 Nov 2026 07:00:00 +0000"
    msg["Message-ID"] = f"<{tag}@corp.example>"
    msg.set_content(f"Confidential payload {tag}\nSecond line.\n")
    if html is not None:
        msg.add_alternative(html, subtype="html")
    if attachment is not None:
        name, ctype, data = attachment
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(policy=email_policy.SMTP)


def nested(depth: int) -> bytes:
    """A message whose text part sits ``depth`` multiparts deep."""
    head = (f"From: {SENDER}\r\nTo: {READER}\r\nSubject: Deep\r\nMIME-Version: 1.0\r\n")
    opening = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'
                      for i in range(depth))
    closing = "".join(f"\r\n--b{i}--" for i in reversed(range(depth)))
    return (head + opening + "Content-Type: text/plain\r\n\r\ninside" + closing + "\r\n").encode()


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A plain PNG, for the organisation's logo."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


DEFINITION = {"name": "Confidential 7d", "description": "", "allow_print": True,
              "allow_reply": True, "allow_reply_all": False, "expiry_days": 7,
              "max_extension_days": 0, "read_receipt": False, "routing": "external",
              "builtin": False}


def hold(spool: Path, body: bytes, *, recipients: tuple[str, ...] = (READER,),
         expires_in: timedelta = timedelta(days=7), key_file: Path | None = None,
         limit_in: timedelta | None = None, **definition: Any) -> tuple[str, dict[str, str]]:
    """Write a held message as the relay does; returns its id and each recipient's token."""
    store = HeldStore(Spool(spool), key_file)
    (spool / "tmp").mkdir(parents=True, exist_ok=True)
    store.create()
    held = secrets.token_hex(8).upper()
    now = datetime.now(UTC)
    tokens = {r: secrets.token_urlsafe(32) for r in recipients}
    iso = lambda d: d.isoformat(timespec="seconds").replace("+00:00", "Z")  # noqa: E731
    header_to, header_cc = header_addresses(body)
    record = {
        "version": 1, "id": held, "sender": SENDER, "header_from": SENDER,
        "header_to": header_to, "header_cc": header_cc,
        "held_at": iso(now), "expires_at": iso(now + expires_in),
        "initial_expires_at": iso(now + expires_in),
        "limit_at": iso(now + (limit_in or expires_in)),
        "extended_days": 0, "max_retention_days": 365, "revoked_at": None,
        "definition": {**DEFINITION, **definition}, "reason": "test",
        "requested_by_client": None,
        "recipients": [{"address": r, "route_reason": "", "token_sha256": [token_hash(t)],
                        "notifications": [], "first_viewed_at": None,
                        "read_receipt_sent": False} for r, t in tokens.items()],
        "delivered_with_banner": ["bob@corp.example"], "delivered_normally": [],
    }
    with store.locked(held):
        store.write_body(held, body)
        store.write(record)
    return held, tokens


@dataclass
class PortalClient:
    portal: Portal
    client: TestClient
    logs: io.StringIO
    spool: Path

    def link(self, held: str, token: str, tail: str = "") -> str:
        return f"/secure/m/{held}/{token}{tail}"

    async def csrf(self, path: str) -> str:
        """The CSRF token of the form on the page at ``path``."""
        resp = await self.client.get(path)
        found = re.search(r'name="_csrf" value="([0-9a-f]+)"', await resp.text())
        assert found, f"no form on {path}"
        return found.group(1)

    async def sign_in(self, sink: Sink, held: str, token: str, address: str = READER) -> None:
        link = self.link(held, token)
        csrf = await self.csrf(link)
        before = len([1 for _, rcpts, data in sink.messages
                      if address in rcpts and CODE.search(data)])
        resp = await self.client.post(link + "/code", data={"_csrf": csrf},
                                      allow_redirects=False)
        assert resp.status == 303, await resp.text()
        code = await sink.wait_code(address, before + 1)
        resp = await self.client.post(link + "/verify", data={"_csrf": csrf, "code": code},
                                      allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == link


@pytest.fixture
async def portal_client(tmp_path: Path, sink: Sink) -> AsyncIterator[Callable[..., Any]]:
    """``await portal_client(**config)`` -> PortalClient on an http://127.0.0.1 test server
    (so cookies go without Secure, as --insecure-cookies allows)."""
    made: list[tuple[Portal, TestClient]] = []

    async def make(**overrides: Any) -> PortalClient:
        spool = tmp_path / "spool"
        (spool / "secure").mkdir(parents=True, exist_ok=True)
        config = PortalConfig(spool=spool, public_url="http://127.0.0.1/secure",
                              relay=("127.0.0.1", sink.port), insecure_cookies=True,
                              hostname="portal.test")
        logs = io.StringIO()
        load_secure_key(overrides.get("key_file"))  # made by the relay's set-up, as in use
        portal = Portal(replace(config, **overrides), EventLog(json_lines=True, stream=logs))
        server = TestServer(portal.app)
        await server.start_server(access_log_class=portal.access_log_class())
        client = TestClient(server)
        await client.start_server()
        made.append((portal, client))
        return PortalClient(portal, client, logs, spool)

    yield make
    for _, client in made:
        await client.close()


CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/system-packages.txt)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium, driven by Playwright, with a fresh profile, 1280 x 800."""
    # Skipped here, not at import: a skip while collecting escapes the `peer` guard on CI.
    async_playwright = pytest.importorskip("playwright.async_api").async_playwright
    profile = tempfile.mkdtemp(prefix="connectwiz-chromium-")
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True,
            viewport={"width": 1280, "height": 800},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        context.set_default_timeout(10_000)
        try:
            yield context
        finally:
            await context.close()
            shutil.rmtree(profile, ignore_errors=True)
