"""What the Deliverer keeps between deliveries (TLS contexts, DNS answers, sessions) and
PIPELINING on delivery."""

from __future__ import annotations

import asyncio
import time

import pytest

from connectwiz.policy.model import EncryptionMode, InboundRoute
from connectwiz.relay.deliver import Deliverer, Group
from connectwiz.relay.queuefile import QueueEntry, Recipient
from connectwiz.relay.spool import new_message_id

from .conftest import (
    RELAXED,
    STRICT,
    body,
    forward,
    lab_messages,
    make_model,
    send,
    token,
    wait_lab,
)

pytestmark = pytest.mark.network


async def test_concurrent_first_deliveries_build_one_tls_context(lab_network_options) -> None:
    deliverer = Deliverer(lab_network_options, "relay.test")
    contexts = await asyncio.gather(*(deliverer._context(STRICT) for _ in range(20)))
    assert all(ctx is contexts[0] for ctx in contexts)  # one build, not twenty


def _mx_queries(lab, domain: str) -> int:
    return sum(1 for _, name, rdtype in list(lab.lab.dns.queries)
               if name == f"{domain}." and rdtype == "MX")


async def test_dns_answers_are_reused_within_their_ttl(lab, relays) -> None:
    r = await relays(make_model(lab, delivery={"trusted.example": STRICT}))
    tags = [token(), token()]
    before = _mx_queries(lab, "trusted.example")
    for tag in tags:  # one after the other: the second finds the first's answer cached
        msg_id = await send(r.port, f"alice-{tag}@corp.example", [f"rcpt-{tag}@trusted.example"],
                            body(tag))
        await r.wait_status(msg_id, "delivered")
    assert await wait_lab(lab, lambda: all(lab_messages(lab, t) for t in tags))
    assert _mx_queries(lab, "trusted.example") - before == 1  # the lab's TTL is 60 s


# -- sessions kept for the next message ---------------------------------------------------------


async def _two_in_a_row(r, domain: str) -> tuple[list[dict], list[str]]:
    """Deliver two messages to ``domain`` one after the other; their attempts and tags."""
    r.relay.deliverer.sessions.idle_limit = 60  # the machine may be slow between the two
    attempts, tags = [], [token(), token()]
    for tag in tags:
        msg_id = await send(r.port, f"alice-{tag}@corp.example", [f"rcpt-{tag}@{domain}"],
                            body(tag))
        [attempt] = (await r.wait_status(msg_id, "delivered")).attempts
        attempts.append(attempt)
    return attempts, tags


async def test_the_next_message_to_a_host_reuses_its_verified_session(lab, relays) -> None:
    r = await relays(make_model(lab, delivery={"trusted.example": STRICT}))
    (first, second), tags = await _two_in_a_row(r, "trusted.example")
    assert not first["reused_connection"] and second["reused_connection"]
    # The reused session is the one whose certificate was judged for this host under Strict.
    assert second["certificate_verified"] and second["tls_version"] == first["tls_version"]
    assert await wait_lab(lab, lambda: all(lab_messages(lab, t) for t in tags))
    [one], [two] = (lab_messages(lab, t) for t in tags)
    assert one.session_id == two.session_id and two.tls_version == "TLSv1.3"


def _group(definition, rcpt: str) -> tuple[QueueEntry, Group]:
    entry = QueueEntry(new_message_id(), "alice@corp.example", [Recipient(rcpt)], time.time())
    return entry, Group("mx", "trusted.example", definition, "test", list(entry.recipients))


async def test_a_session_is_not_reused_under_stricter_requirements(lab, lab_network_options
                                                                   ) -> None:
    deliverer = Deliverer(lab_network_options, "relay.test")
    model = make_model(lab)
    tags = [token(), token()]
    try:
        attempts = []
        for definition, tag in zip((RELAXED, STRICT), tags, strict=True):  # unverified first
            entry, group = _group(definition, f"rcpt-{tag}@trusted.example")
            attempts += await deliverer.deliver_group(entry, body(tag), group, model)
        assert [a.outcome for a in attempts] == ["delivered", "delivered"]
        assert not attempts[1].reused_connection and attempts[1].certificate_verified
        assert await wait_lab(lab, lambda: all(lab_messages(lab, t) for t in tags))
        [one], [two] = (lab_messages(lab, t) for t in tags)
        assert one.session_id != two.session_id
    finally:
        await deliverer.close()


class CuttableProxy:
    """Forwards to a lab server; ``cut()`` closes every connection from the relay's side."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        await forward(reader, writer, self.target)

    def cut(self) -> None:
        for writer in self._writers:
            writer.close()

    async def stop(self) -> None:
        self.cut()
        self.server.close()


async def test_a_session_closed_while_idle_is_replaced(lab, relays) -> None:
    proxy = CuttableProxy((lab.address_of("mail.corp.example"), lab.smtp_port))
    port = await proxy.start()
    try:
        route = InboundRoute("127.0.0.1", port, EncryptionMode.RELAXED)
        r = await relays(make_model(lab, routes=[route]))
        r.relay.deliverer.sessions.idle_limit = 60
        tags = [token(), token()]
        msg_id = await send(r.port, "x@partner.example", [f"a-{tags[0]}@corp.example"],
                            body(tags[0]))
        await r.wait_status(msg_id, "delivered")
        proxy.cut()  # the next hop drops the idle session
        msg_id = await send(r.port, "x@partner.example", [f"b-{tags[1]}@corp.example"],
                            body(tags[1]))
        [attempt] = (await r.wait_status(msg_id, "delivered")).attempts
        assert not attempt["reused_connection"] and proxy.connections == 2
        assert await wait_lab(lab, lambda: all(lab_messages(lab, t) for t in tags))
    finally:
        await proxy.stop()


# -- PIPELINING ---------------------------------------------------------------------------------


class ScriptedServer:
    """A plaintext next hop that accepts everything and records, when it reads MAIL FROM,
    the commands that had already arrived behind it (the client did not wait for the reply)."""

    def __init__(self, pipelining: bool) -> None:
        self.pipelining = pipelining
        self.behind_mail: list[bytes] = []
        self.messages = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                offer = b"250-PIPELINING\r\n" if self.pipelining else b""
                writer.write(b"250-scripted\r\n" + offer + b"250 8BITMIME\r\n")
            elif verb == b"MAIL":
                self.behind_mail.append(bytes(reader._buffer))
                writer.write(b"250 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                await reader.readuntil(b"\r\n.\r\n")
                self.messages += 1
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


async def test_commands_are_pipelined_only_when_the_server_offers_it(lab, relays,
                                                                   tmp_path) -> None:
    for pipelining in (True, False):
        server = ScriptedServer(pipelining)
        port = await server.start()
        try:
            route = InboundRoute("127.0.0.1", port, None)  # not validated: no TLS needed here
            r = await relays(make_model(lab, routes=[route]), spool=tmp_path / str(pipelining))
            tag = token()
            msg_id = await send(r.port, "x@partner.example",
                                [f"a-{tag}@corp.example", f"b-{tag}@corp.example"], body(tag))
            await r.wait_status(msg_id, "delivered")
            expected = (f"RCPT TO:<a-{tag}@corp.example>\r\nRCPT TO:<b-{tag}@corp.example>\r\n"
                        "DATA\r\n").encode() if pipelining else b""
            assert server.behind_mail == [expected] and server.messages == 1
        finally:
            server.server.close()
