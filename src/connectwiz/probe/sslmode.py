"""Does a server negotiate TLS at an SSL Mode? One STARTTLS handshake with the very context the
relay delivers with under Enforced TLS at that level (``relay.deliver.client_context``)."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

from connectwiz.policy.model import DeliveryDefinition, DeliveryOption, EncryptionMode, SslMode
from connectwiz.policy.sslmode import LEVELS
from connectwiz.smtpclient import SmtpClient, SmtpProtocolError, StepTimeout


@dataclass(frozen=True, slots=True)
class LevelResult:
    host: str
    address: str
    port: int
    ok: bool
    tls_version: str | None = None
    cipher: str | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "address": self.address, "port": self.port, "ok": self.ok,
                "tls_version": self.tls_version, "cipher": self.cipher, "reason": self.reason}


def level_context(mode: SslMode) -> ssl.SSLContext:
    from connectwiz.relay.deliver import client_context  # the relay's own, not a copy

    definition = DeliveryDefinition(f"SSL Mode {mode}", DeliveryOption.ENFORCED,
                                    EncryptionMode.RELAXED, LEVELS[mode].min_tls, ssl_mode=mode)
    ctx = client_context(definition)
    assert ctx is not None  # enforced always has TLS
    return ctx


async def negotiate_at(mode: SslMode, host: str, address: str, port: int, timeout: float,
                       greeting_timeout: float) -> LevelResult:
    """Connect, EHLO, STARTTLS and handshake at ``mode``; certificates are not judged here
    (the main verdict does that)."""
    try:
        client = await SmtpClient.connect(address, port, timeout)
    except (OSError, StepTimeout) as exc:
        return LevelResult(host, address, port, False, reason=f"cannot connect: {exc}")
    try:
        async with asyncio.timeout(greeting_timeout + 4 * timeout):
            ok, reason = await _handshake(client, mode, host, greeting_timeout)
    except (TimeoutError, StepTimeout, SmtpProtocolError, OSError) as exc:
        ok, reason = False, str(exc) or type(exc).__name__
    version, cipher = client.tls() if ok else (None, None)
    if ok:
        await client.close()
    else:
        client.abort()  # nothing sensible follows a failure; a tarpit would stall a QUIT
    return LevelResult(host, address, port, ok, version, cipher, reason)


async def _handshake(client: SmtpClient, mode: SslMode, host: str,
                     greeting_timeout: float) -> tuple[bool, str]:
    if (await client.greeting(greeting_timeout)).code != 220:
        return False, "greeting refused"
    await client.ehlo(client.helo_name, helo_fallback=True)
    if "STARTTLS" not in client.extensions:
        return False, "STARTTLS not offered"
    reply = await client.command("STARTTLS", "after STARTTLS")
    if reply.code != 220:
        return False, f"STARTTLS refused: {reply}"
    try:
        await client.starttls(level_context(mode), host)
    except (ssl.SSLError, ConnectionError) as exc:
        return False, f"no TLS session at this level: {exc}"
    return True, ""
