"""The streaming DATA decoder and the bounded header reader (pure logic, no network)."""

from __future__ import annotations

import random
import re
import sys

import pytest

from connectwiz.relay.data import (
    QUICK_FROM,
    QUICK_HEAD,
    DotDecoder,
    HeadCollector,
    read_head,
)


def _reference(raw: bytes) -> tuple[bytes, bool, bytes]:
    """What DATA means, line by line as RFC 5321 says: (message, bare newline seen, rest)."""
    end = raw.index(b".\r\n") if raw.startswith(b".\r\n") else raw.index(b"\r\n.\r\n") + 2
    body, rest = raw[:end], raw[end + 3:]
    bare = bool(re.search(rb"\r(?!\n)|(?<!\r)\n", body))
    lines = body.split(b"\r\n")
    return b"\r\n".join(ln[1:] if ln.startswith(b".") else ln for ln in lines), bare, rest


def _decode(raw: bytes, sizes: list[int]) -> tuple[bytes, bool, bytes]:
    decoder, out, pos = DotDecoder(), bytearray(), 0
    for size in sizes:
        content, rest = decoder.feed(raw[pos:pos + size])
        out += content
        pos += size
        if rest is not None:
            return bytes(out), decoder.bare_newline, rest + raw[pos:]
    raise AssertionError("no end of data found")


CASES = [
    b".\r\nNOOP\r\n",  # empty message
    b"Subject: a\r\n\r\n..leading dot\r\n.\r\n",
    b"a\r\n..\r\n...x\r\n.\r\nQUIT\r\n",
    b"x" * 5000 + b"\r\n.\r\n",  # one long line
    b"\r\n" * 3000 + b".\r\n",
    b"first\n.\nMAIL FROM:<e@x>\r\n.\r\n",  # bare LF smuggling
    b"first\r.\r\nbare CR\r\n.\r\n",
    b"a\r\n.\rb\r\n.\r\nRSET\r\n",
    b"line\r\n.x\r\n" * 50 + b".\r\n",
]


@pytest.mark.parametrize("raw", CASES)
def test_decoder_matches_the_line_by_line_reading_for_any_chunking(raw: bytes) -> None:
    want = _reference(raw)
    rng = random.Random(raw)
    for sizes in ([len(raw)], [1] * len(raw), [2, 3] * len(raw),
                  [rng.randint(1, 9) for _ in range(len(raw))]):
        assert _decode(raw, sizes) == want, sizes


def test_decoder_holds_a_bounded_amount_whatever_the_shape() -> None:
    decoder = DotDecoder()
    for chunk in (b"\r\n" * 32768, b"y" * 262144):  # empty lines, then one endless line
        for _ in range(40):  # 2.5 MB and 10 MB
            decoder.feed(chunk)
            assert len(decoder._pending) < 2 * 65536 + len(chunk)
    assert decoder.size == 40 * (65536 + 262144)


def test_head_collector_stops_at_the_blank_line_or_the_limit() -> None:
    head = HeadCollector(100)
    head.feed(b"From: a@b.example\r\nSubj")
    head.feed(b"ect: x\r\n\r\nbody")
    assert bytes(head.data) == b"From: a@b.example\r\nSubject: x\r\n" and head.done
    big = HeadCollector(100)
    big.feed(b"X-Long: " + b"z" * 500)
    assert len(big.data) == 100 and big.done


def test_read_head_survives_hostile_from_headers() -> None:
    nested = b"From: " + b"(" * 10_000 + b"a@b.example\r\n"
    assert sys.getrecursionlimit() < 10_000  # so the parser would recurse too deep
    assert read_head(nested).header_from is None  # no exception: no From, not a 500
    folded = (b"From: Some\r\n" + b"\tName\r\n" * 1000 + b" <x@y.example>\r\n"
              b"Received: a\r\nreceived : b\r\n")
    facts = read_head(folded)
    assert facts.header_from == "x@y.example" and facts.received == 2


def test_only_a_small_header_is_read_where_the_caller_is() -> None:
    """A usual header is read at once (on the event loop); a long From: or a large header,
    which a hostile client can make slow to read, is left for a thread (None)."""
    short = b"From: Alice Example <alice@partner.example>\r\nReceived: x\r\n\r\n"
    facts = read_head(short, quick=True)
    assert facts is not None
    assert (facts.header_from, facts.received) == ("alice@partner.example", 1)
    hostile = b"From: " + b"<" * (QUICK_FROM + 1) + b"\r\n\r\n"
    assert read_head(hostile, quick=True) is None
    assert read_head(hostile) is not None  # in the thread: read, whatever it yields
    large = b"X: y\r\n" * (QUICK_HEAD // 6) + b"From: a@b.example\r\n\r\n"
    assert read_head(large, quick=True) is None
    assert read_head(large).header_from == "a@b.example"
    assert read_head(b"Subject: none\r\n\r\n", quick=True) is not None
