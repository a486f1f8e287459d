"""One host's probe against odd servers: scripted ones here, and lab servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from connectwiz.probe.certs import trust_store
from connectwiz.probe.host import ProbeSettings, probe_host
from connectwiz.probe.results import Status

pytestmark = pytest.mark.network

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], object]]:
    """Start a one-behaviour server on 127.0.0.1; returns its port."""
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await script(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


SETTINGS = ProbeSettings(timeout=2.0, trust=trust_store(None))


async def _probe(port: int, settings: ProbeSettings = SETTINGS):
    return await probe_host("mx.odd.example", ("127.0.0.1",), port, 10, settings)


async def test_garbage_greeting_is_an_error(scripted):
    async def script(reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\n")
        await writer.drain()
        await reader.read()

    result = await _probe(await scripted(script))
    assert result.status == Status.ERROR
    assert "not an SMTP reply" in result.reason


async def test_overlong_reply_line_is_an_error(scripted):
    async def script(reader, writer):
        writer.write(b"220 " + b"x" * 70000 + b"\r\n")
        await writer.drain()
        await reader.read()

    result = await _probe(await scripted(script))
    assert result.status == Status.ERROR and "too long" in result.reason


async def test_endless_multiline_reply_is_cut_off(scripted):
    async def script(reader, writer):
        writer.write(b"220-hello\r\n" * 500)
        await writer.drain()
        await reader.read()

    result = await _probe(await scripted(script))
    assert result.status == Status.ERROR and "more than 200 lines" in result.reason


async def test_554_greeting_is_reported_as_such(scripted):
    async def script(reader, writer):
        writer.write(b"554 5.7.1 no service for you\r\n")
        await writer.drain()

    result = await _probe(await scripted(script))
    assert result.status == Status.ERROR
    assert result.reason == "server refused the session: 554 5.7.1 no service for you"


async def test_connection_closed_after_ehlo(scripted):
    async def script(reader, writer):
        writer.write(b"220 ok\r\n")
        await writer.drain()
        await reader.readline()

    result = await _probe(await scripted(script))
    assert result.status == Status.ERROR and "connection closed" in result.reason


async def test_handshake_failure_that_is_not_about_the_version(scripted):
    async def script(reader, writer):
        writer.write(b"220 ok\r\n")
        await writer.drain()
        while line := await reader.readline():
            if line.upper().startswith(b"EHLO"):
                writer.write(b"250-odd\r\n250 STARTTLS\r\n")
            elif line.upper().startswith(b"STARTTLS"):
                writer.write(b"220 go ahead\r\n")
                await writer.drain()
                await reader.read(1)
                writer.write(b"this is not TLS\r\n" * 4)  # answer the ClientHello with junk
            await writer.drain()

    result = await _probe(await scripted(script))
    assert result.status == Status.UNSUPPORTED
    assert result.reason.startswith("TLS handshake failed: ") and result.starttls


async def test_next_address_is_tried_when_the_first_refuses(lab):
    good = lab.address_of("mx.trusted.example")
    refused = lab.address_of("mx.refused.example")  # nothing listens there
    settings = ProbeSettings(timeout=3.0, trust=trust_store(lab.ca_file))
    result = await probe_host("mx.trusted.example", (refused, good), lab.smtp_port, 10, settings)
    assert result.status == Status.STRICT and result.address == good


async def test_host_without_address():
    result = await probe_host("ghost.example", (), 25, 10, SETTINGS)
    assert result.status == Status.ERROR and result.address is None
    assert result.reason == "no address found for ghost.example"


async def test_trickling_server_hits_the_overall_cap(scripted, monkeypatch):
    # Per step 3 s, greeting 1.5 s, overall cap 1.5 + 0.5 x 3 = 3 s. Replies trickle in 0.5 s
    # each (well inside their timeouts) and the handshake stalls from 1.5 s: the cap fires at
    # 3 s, 1.5 s before the stalled step's own timeout would. Wide margins: the machine may
    # be loaded.
    monkeypatch.setattr("connectwiz.probe.host.HOST_CAP_FACTOR", 0.5)

    async def script(reader, writer):
        # Every reply comes well inside the per-step timeout; then the handshake stalls.
        await asyncio.sleep(0.5)
        writer.write(b"220 slow\r\n")
        while line := await reader.readline():
            await asyncio.sleep(0.5)
            if line.upper().startswith(b"EHLO"):
                writer.write(b"250-slow\r\n250 STARTTLS\r\n")
            elif line.upper().startswith(b"STARTTLS"):
                writer.write(b"220 go ahead\r\n")
                await writer.drain()
                await reader.read()  # never answer the ClientHello
            await writer.drain()

    settings = ProbeSettings(timeout=3.0, trust=trust_store(None), greeting_timeout=1.5)
    result = await _probe(await scripted(script), settings)
    assert result.status == Status.ERROR
    assert result.reason == "timed out: no verdict within 3 s overall"


async def test_non_ascii_email_goes_with_smtputf8_when_offered(scripted, lab):
    """RFC 6531: MAIL FROM announces SMTPUTF8, then RCPT TO carries the address as UTF-8."""
    from connectwiz.lab.smtp import server_context

    cert, key = lab.ca.issue(["mx.odd.example"])
    context = server_context(cert, key)
    lines: list[bytes] = []

    async def script(reader, writer):
        writer.write(b"220 utf8 ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                offer = b"250-STARTTLS\r\n" if writer.get_extra_info("ssl_object") is None else b""
                writer.write(b"250-utf8\r\n" + offer + b"250 SMTPUTF8\r\n")
            elif verb == b"STAR":
                writer.write(b"220 go ahead\r\n")
                await writer.drain()
                await writer.start_tls(context)
                continue
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:
                lines.append(line)
                writer.write(b"250 ok\r\n")
            await writer.drain()

    settings = ProbeSettings(timeout=3.0, trust=trust_store(lab.ca_file), email="prøbe@odd.example")
    result = await _probe(await scripted(script), settings)
    assert result.status == Status.STRICT, result.reason
    assert result.rcpt is not None and result.rcpt.code == 250
    assert lines[:2] == [b"MAIL FROM:<> SMTPUTF8\r\n", "RCPT TO:<prøbe@odd.example>\r\n".encode()]
