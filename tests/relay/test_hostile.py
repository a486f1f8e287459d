"""Receipt under hostile input, over real sockets: long lines, pipelining after DATA,
hostile headers, per-client limits, mail loops, odd addresses."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiosmtplib
import pytest

from connectwiz.relay.spool import Spool

from .conftest import FAST, make_model, token

pytestmark = pytest.mark.network

DEFERRING = {"routes": []}  # no inbound route: internal mail waits in the queue


async def _reply(reader: asyncio.StreamReader, timeout: float = 30) -> bytes:
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        assert line, "connection closed"
        if line[3:4] != b"-":
            return line


async def _session(port: int, source: str = "127.0.0.1"
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    assert (await _reply(reader)).startswith(b"220")
    return reader, writer


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   line: bytes) -> bytes:
    writer.write(line)
    await writer.drain()
    return await _reply(reader)


async def _envelope(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    rcpt: bytes = b"bob@corp.example") -> None:
    for line in (b"EHLO t\r\n", b"MAIL FROM:<alice@corp.example>\r\n",
                 b"RCPT TO:<" + rcpt + b">\r\n"):
        assert (await _command(reader, writer, line)).startswith(b"250")
    assert (await _command(reader, writer, b"DATA\r\n")).startswith(b"354")


def _queue_id(reply: bytes) -> str:
    assert reply.startswith(b"250 2.0.0"), reply
    return reply.split()[-1].decode()


# -- item 1 / 6: streamed DATA --------------------------------------------------------------


async def test_a_5000_character_line_is_accepted_and_spooled_intact(lab, relays) -> None:
    r = await relays(make_model(lab, **DEFERRING))
    tag = token()
    line = ("<p>" + "x" * 4990 + tag + "</p>").encode()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False, timeout=10)
    await client.connect()
    try:
        _, reply = await client.sendmail("alice@corp.example", ["bob@corp.example"],
                                         b"Subject: html\r\n\r\n" + line + b"\r\n.dot\r\n")
    finally:
        client.close()
    msg_id = reply.rsplit(" ", 1)[-1]
    stored = await asyncio.to_thread(Spool(r.spool).read_body, msg_id)
    assert stored.endswith(b"Subject: html\r\n\r\n" + line + b"\r\n.dot\r\n")


async def test_commands_pipelined_after_the_end_of_data_are_answered(lab, relays) -> None:
    r = await relays(make_model(lab, **DEFERRING))
    reader, writer = await _session(r.port)
    try:
        await _envelope(reader, writer)
        # The end of DATA and the next commands in one write, as a pipelining client does.
        writer.write(b"Subject: p\r\n\r\n..x\r\n.\r\nNOOP\r\nMAIL FROM:<a@corp.example>\r\n")
        first = _queue_id(await _reply(reader))
        assert (await _reply(reader)).startswith(b"250")
        assert (await _reply(reader)).startswith(b"250")
    finally:
        writer.close()
    stored = await asyncio.to_thread(Spool(r.spool).read_body, first)
    assert stored.endswith(b"Subject: p\r\n\r\n.x\r\n")


async def test_too_big_message_is_refused_while_streaming_and_leaves_nothing(lab,
                                                                          relays) -> None:
    r = await relays(make_model(lab, **DEFERRING), replace(FAST, max_message_size=100_000))
    reader, writer = await _session(r.port)
    try:
        await _envelope(reader, writer)
        writer.write(b"Subject: big\r\n\r\n" + b"y" * 300_000 + b"\r\n.\r\n")
        assert (await _reply(reader)).startswith(b"552 5.3.4")
        assert (await _command(reader, writer, b"NOOP\r\n")).startswith(b"250")
    finally:
        writer.close()
    assert not list((r.spool / "queue").iterdir())
    assert not await asyncio.to_thread(lambda: list((r.spool / "tmp").iterdir()))
