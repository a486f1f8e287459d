"""Fixtures for relay tests: an in-process relay on an ephemeral port, wired to the lab.

The relay's policy is a PolicyModel built in each test (``make_model``), so every test
states exactly which policies apply. Outcomes are observed through the message log (the
Receipt/Delivery view) and through the lab servers' records; both are polled, never slept on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiosmtplib
import pytest

from connectwiz.lab import LabHandle
from connectwiz.lab.smtp import LabMessage
from connectwiz.policy.model import (
    Applies,
    DeliveryDefinition,
    DeliveryOption,
    DeliveryPolicy,
    EncryptionMode,
    InboundRoute,
    Organisation,
    PolicyModel,
    ReceiptOption,
    ReceiptPolicy,
    Scope,
)
from connectwiz.probe.options import NetworkOptions
from connectwiz.relay.msglog import MessageRecord, read_record
from connectwiz.relay.server import Relay
from connectwiz.relay.settings import RelaySettings

if TYPE_CHECKING:
    from tests.conftest import EventLogFile

INTERNAL = "corp.example"
STRICT = DeliveryDefinition("Enforced TLS - Strict", DeliveryOption.ENFORCED,
                            EncryptionMode.STRICT, "1.2")
RELAXED = DeliveryDefinition("Enforced TLS - Relaxed", DeliveryOption.ENFORCED,
                             EncryptionMode.RELAXED, "1.2")
OPPORTUNISTIC = DeliveryDefinition("Opportunistic TLS", DeliveryOption.OPPORTUNISTIC)
NO_TLS = DeliveryDefinition("No TLS", DeliveryOption.NONE)


def make_model(
    lab: LabHandle,
    delivery: dict[str, DeliveryDefinition] | None = None,
    receipt: dict[str, ReceiptOption] | None = None,
    routes: list[InboundRoute] | None = None,
    authorized: str = "127.0.0.1/32",
) -> PolicyModel:
    """``delivery``: recipient domain -> definition; ``receipt``: sender domain -> option.
    Inbound mail for corp.example goes to the lab's trusted internal server by default."""
    definitions = {d.name: d for d in (delivery or {}).values()}
    return PolicyModel(
        organisation=Organisation(
            internal_domains=(INTERNAL,),
            authorized_outbound=(ipaddress.ip_network(authorized),)),
        inbound_routes=tuple(routes if routes is not None else [
            InboundRoute("mail.corp.example", lab.smtp_port, EncryptionMode.STRICT)]),
        delivery_definitions=tuple(definitions.values()),
        delivery_policies=tuple(
            DeliveryPolicy(f"{d.name} to {domain}", d.name,
                           to=Scope(Applies.DOMAIN, (domain,)))
            for domain, d in (delivery or {}).items()),
        receipt_policies=tuple(
            ReceiptPolicy(f"{option} from {domain}", option,
                          from_=Scope(Applies.DOMAIN, (domain,)),
                          to=Scope(Applies.INTERNAL))
            for domain, option in (receipt or {}).items()),
    )


FAST = RelaySettings(hostname="relay.corp.example", backoff_min=0.2, backoff_max=0.4,
                     max_lifetime=3600, delivery_workers=4, shutdown_grace=2,
                     idle_timeout=5)


@dataclass
class RunningRelay:
    relay: Relay
    spool: Path

    @property
    def port(self) -> int:
        return self.relay.address[1]

    async def record(self, msg_id: str) -> MessageRecord:
        return await asyncio.to_thread(read_record, self.spool, msg_id)

    async def wait_status(self, msg_id: str, *statuses: str, timeout: float = 15) -> MessageRecord:
        deadline = time.monotonic() + timeout
        while True:
            record = await self.record(msg_id)
            if record.status in statuses:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"{msg_id}: status {record.status!r}, wanted {statuses}; "
                                     f"events: {record.events}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def relays(tmp_path: Path, lab_network_options: NetworkOptions, event_log: EventLogFile
                 ) -> AsyncIterator[Callable[..., object]]:
    """``await relays(model, settings=FAST, spool=None, tls=None, clock=time.time,
    options=lab_network_options)`` -> RunningRelay; all stopped after the test. They log to
    ``event_log`` (tests/conftest.py)."""
    started: list[Relay] = []

    async def start(model: PolicyModel, settings: RelaySettings = FAST,
                    spool: Path | None = None,
                    tls: tuple[Path, Path] | None = None,
                    clock: Callable[[], float] = time.time,
                    options: NetworkOptions | None = None) -> RunningRelay:
        spool = spool or tmp_path / "spool"
        relay = Relay(lambda: model, spool, ("127.0.0.1", 0),
                      options=options or lab_network_options,
                      settings=settings, log=event_log.log,
                      tls_cert=tls[0] if tls else None, tls_key=tls[1] if tls else None,
                      clock=clock)
        await relay.start()
        started.append(relay)
        return RunningRelay(relay, spool)

    yield start
    for relay in started:
        await relay.stop()


def token() -> str:
    """A unique marker to find this test's messages among everything the shared lab saw."""
    return secrets.token_hex(6)


def body(tag: str, sender: str = "alice@corp.example") -> bytes:
    return (f"From: {sender}\r\nSubject: test {tag}\r\nMessage-ID: <{tag}@test>\r\n\r\n"
            f"payload {tag}\r\n.leading dot line\r\n").encode()


def no_verify() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def send(port: int, sender: str, rcpts: list[str], data: bytes, *, tls: bool = False,
               tls_context: ssl.SSLContext | None = None, source: str = "127.0.0.1") -> str:
    """Send one message with aiosmtplib; returns the queue id from the 250 reply."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False,
                             timeout=10, source_address=(source, 0),
                             local_hostname="client.test")
    await client.connect()
    try:
        if tls:
            await client.starttls(tls_context=tls_context or no_verify())
        errors, reply = await client.sendmail(sender, rcpts, data)
        assert not errors, errors
        return reply.rsplit(" ", 1)[-1]
    finally:
        client.close()


def lab_messages(lab: LabHandle, tag: str) -> list[LabMessage]:
    return [m for m in list(lab.messages) if tag.encode() in m.data]


async def wait_lab(lab: LabHandle, predicate: Callable[[], bool], timeout: float = 10) -> bool:
    return await asyncio.to_thread(lab.wait_for, predicate, timeout)


async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  target: tuple[str, int]) -> None:
    """Relay bytes both ways between a client and ``target`` until either side closes:
    the body of the test proxies that stand between the relay and the lab."""
    up_reader, up_writer = await asyncio.open_connection(*target)

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            dst.close()

    await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
