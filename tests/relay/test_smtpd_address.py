"""The receipt's quick path for plain addresses gives exactly aiosmtpd's answer."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP

from connectwiz.relay.smtpd import RelaySMTP

CASES = [
    "<a.b-c+d@corp.example> SIZE=100", "<x@partner.example>", "<>", "<a@b>  ",
    "<bob@corp.example>SIZE=1", ' <a@b> BODY=8BITMIME SMTPUTF8', "<a@b> \t", "a@b",
    '<"q uoted"@corp.example>', "<a..b@corp.example>", "<.a@corp.example>",
    "<a@corp.example.>", "<a@[127.0.0.1]>", "<@route:a@b>", "<a(comment)@b>", "<jöe@b>",
    "<a@-b.c>", "<a@b..c>", "<a@b c>", "<a b@c>", "<" + "l" * 70 + "@corp.example>", "",
]


@pytest.mark.parametrize("limit", [0, 64])
def test_plain_addresses_parse_as_aiosmtpd_parses_them(limit: int) -> None:
    session = RelaySMTP.__new__(RelaySMTP)  # only the parser is exercised
    session.local_part_limit = limit
    for arg in CASES:
        assert RelaySMTP._getaddr(session, arg) == SMTP._getaddr(session, arg), arg
