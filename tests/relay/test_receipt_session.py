"""Receipt's session handling: PIPELINING offered and honoured, STARTTLS on the loop's TLS."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import body, lab_messages, make_model, no_verify, token, wait_lab

pytestmark = pytest.mark.network


async def _replies(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """The next ``count`` replies (a multi-line reply counts once, by its last line)."""
    found = []
    while len(found) < count:
        line = await asyncio.wait_for(reader.readline(), 30)
        assert line, f"connection closed after {found}"
        if line[3:4] != b"-":
            found.append(line)
    return found


async def test_pipelined_commands_are_answered_in_order(lab, relays) -> None:
    r = await relays(make_model(lab, authorized="192.0.2.1/32"))  # this client may not relay
    tag = token()
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    try:
        await _replies(reader, 1)
        writer.write(b"EHLO client.test\r\n")
        ehlo = b""
        while not (line := await reader.readline()).startswith(b"250 "):
            ehlo += line
        assert b"250-PIPELINING\r\n" in ehlo
        # RFC 2920: the whole envelope and DATA in one write, replies read afterwards.
        writer.write(f"MAIL FROM:<x@partner.example>\r\nRCPT TO:<a-{tag}@corp.example>\r\n"
                     f"RCPT TO:<nobody@partner.example>\r\nRCPT TO:<b-{tag}@corp.example>\r\n"
                     "DATA\r\n".encode())
        mail, a, relaying, b, data = await _replies(reader, 5)
        assert (mail[:3], a[:3], relaying[:3], b[:3], data[:3]) == (
            b"250", b"250", b"554", b"250", b"354")  # the relay refusal stays in its place
        writer.write(body(tag) + b".\r\nQUIT\r\n")  # QUIT right behind the message's end
        queued, bye = await _replies(reader, 2)
        assert queued.startswith(b"250 2.0.0") and bye.startswith(b"221")
    finally:
        writer.close()
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    assert lab_messages(lab, tag)[0].rcpt_tos == (f"a-{tag}@corp.example",
                                                  f"b-{tag}@corp.example")


async def test_plaintext_sent_behind_starttls_is_not_read_over_tls(lab, relays) -> None:
    r = await relays(make_model(lab))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    try:
        await _replies(reader, 1)
        writer.write(b"EHLO client.test\r\n")
        await _replies(reader, 1)
        # A man in the middle appends an EHLO to the client's STARTTLS.
        writer.write(b"STARTTLS\r\nEHLO injected.example\r\n")
        [ready] = await _replies(reader, 1)
        assert ready.startswith(b"220")
        await writer.start_tls(no_verify())
        writer.write(b"MAIL FROM:<x@partner.example>\r\n")
        [reply] = await _replies(reader, 1)
        # The injected EHLO was dropped: the TLS session has had no EHLO yet.
        assert reply.startswith(b"503"), reply
        writer.write(b"EHLO client.test\r\n")
        await _replies(reader, 1)
        writer.write(b"MAIL FROM:<x@partner.example>\r\n")
        assert (await _replies(reader, 1))[0].startswith(b"250")
    finally:
        writer.close()


async def test_a_failed_tls_handshake_is_logged_with_its_reason(lab, relays, event_log
                                                                ) -> None:
    r = await relays(make_model(lab))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    try:
        await _replies(reader, 1)
        writer.write(b"EHLO client.test\r\n")
        await _replies(reader, 1)
        writer.write(b"STARTTLS\r\n")
        await _replies(reader, 1)
        writer.write(b"this is not a TLS ClientHello\r\n")
        assert await asyncio.wait_for(reader.read(), 30) == b""  # the relay hangs up
    finally:
        writer.close()
    assert "TLS handshake failed: [SSL" in event_log.text()
    # ... and goes on serving.
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    assert (await _replies(reader, 1))[0].startswith(b"220")
    writer.close()
