"""The shared SMTP client's DATA writer: RFC 5321-correct towards the next hop whatever the body."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectwiz.smtpclient import DATA_LINE_LIMIT, SmtpClient, encode_data


def _wire(*chunks: bytes) -> bytes:
    return b"".join(encode_data(chunks))


def test_line_ends_become_crlf_and_leading_dots_are_doubled():
    assert _wire(b"a\nb\r\n.c\r\n..d\n") == b"a\r\nb\r\n..c\r\n...d\r\n"
    assert _wire(b"no final newline") == b"no final newline\r\n"
    assert _wire(b"") == b""


def test_long_line_is_broken_like_postfix_with_crlf_space():
    line = b"x" * 2500
    wire = _wire(line + b"\r\n")
    lines = wire.split(b"\r\n")[:-1]
    assert [len(piece) for piece in lines] == [998, 998, 506]
    assert lines[1].startswith(b" ") and lines[2].startswith(b" ")
    # Unfolding (RFC 5322 §2.2.3) gives the text back.
    assert wire.replace(b"\r\n ", b"").rstrip(b"\r\n") == line


def test_a_stuffed_dot_counts_towards_the_limit():
    wire = _wire(b"." + b"y" * 997 + b"\n")
    assert all(len(piece) <= DATA_LINE_LIMIT for piece in wire.split(b"\r\n"))
    assert wire.startswith(b"..")


@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0, max_value=3000), max_size=6))
def test_chunk_boundaries_do_not_change_what_is_sent(body, cuts):
    cuts = sorted({c for c in cuts if c <= len(body)})
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    whole = _wire(body)
    assert _wire(*pieces) == whole
    assert all(len(line) <= DATA_LINE_LIMIT for line in whole.split(b"\r\n"))
    assert b"\r\n.\r\n" not in b"\r\n" + whole  # a body line can never end the message


@pytest.mark.network
async def test_long_lines_and_a_spool_file_reach_the_server_intact(lab, tmp_path):
    host = "mx.trusted.example"
    text = b"Subject: long\n\n.starts with a dot\n" + b"z" * 3000 + b"\nend\n"
    spool = tmp_path / "message"
    spool.write_bytes(text)
    client = await SmtpClient.connect(lab.address_of(host), lab.smtp_port, 5.0)
    try:
        assert (await client.greeting(5.0)).code == 220
        assert (await client.ehlo(client.helo_name)).code == 250
        assert (await client.mail("sender@corp.example", ["long@trusted.example"])).code == 250
        assert (await client.command("RCPT TO:<long@trusted.example>", "rcpt")).code == 250
        assert (await client.command("DATA", "data")).code == 354
        assert (await client.send_message(spool)).code == 250  # streamed from the file
    finally:
        await client.close()
    assert await _received(lab, "long@trusted.example")
    data = next(m.data for m in lab.messages if m.rcpt_tos == ("long@trusted.example",))
    assert all(len(line) <= DATA_LINE_LIMIT for line in data.split(b"\r\n"))
    assert data.replace(b"\r\n ", b"") == text.replace(b"\n", b"\r\n")


async def _received(lab, rcpt: str) -> bool:
    return await asyncio.to_thread(
        lab.wait_for, lambda: any(m.rcpt_tos == (rcpt,) for m in lab.messages))
