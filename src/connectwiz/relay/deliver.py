"""Delivery: the SMTP client side, under the Secure Delivery policy of each recipient.

- Recipients in an internal domain go to the bundle's inbound routes, in order, with enforced
  TLS at the encryption mode their validation found (a route not yet validated gets
  opportunistic TLS).
- Other recipients go to their domain's MX hosts in preference order (probe.dns, the same
  lookup as ``validate``), under the definition ``PolicyIndex.delivery`` picks:
  opportunistic (STARTTLS when offered, any certificate), enforced strict (TLS at the
  minimum version, chain and host name verified), enforced relaxed (TLS at the minimum
  version, any certificate), none (no TLS).

Enforced TLS never falls back to plaintext: no STARTTLS in the EHLO reply (perhaps stripped
by a man in the middle), a refused STARTTLS or a failed handshake is a temporary failure
for that host, and the message is deferred when no host does better.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import dns.asyncresolver

from connectwiz.policy.model import (
    DeliveryDefinition,
    DeliveryOption,
    EncryptionMode,
    PolicyModel,
)
from connectwiz.policy.select import MessageContext, PolicyIndex
from connectwiz.probe.dns import DnsError, make_resolver, resolve_addresses, resolve_mx
from connectwiz.probe.options import NetworkOptions
from connectwiz.relay.receipt import parse_ip
from connectwiz.relay.spool import QueueEntry, Recipient

_TLS_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3,
}


class TempFailure(Exception):
    """This host could not take the message now; try the next host or later."""


class PermFailure(Exception):
    """The destination refused the message for good (5xx, no such domain)."""


@dataclass(frozen=True, slots=True)
class Target:
    host: str  # name to verify the certificate against
    address: str
    port: int


@dataclass(slots=True)
class Attempt:
    """One try at one host: the Receipt/Delivery view's ``attempt`` record."""

    host: str
    address: str
    port: int
    definition: str
    option: str
    encryption_mode: str
    min_tls: str
    recipients: list[str]
    tls_version: str | None = None
    tls_cipher: str | None = None
    certificate_verified: bool = False
    reply: str = ""
    outcome: str = "temporary"  # delivered | temporary | permanent
    error: str = ""
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    # Opportunistic TLS failed here after STARTTLS: the host is tried again in plaintext.
    retry_plain: bool = False
    elapsed_s: float = 0.0  # connect to close, for the latency metrics

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


# -- TLS contexts ------------------------------------------------------------------------------


def client_context(definition: DeliveryDefinition, ca_file: str | None) -> ssl.SSLContext | None:
    """The TLS context a definition asks for; None means no TLS at all."""
    if definition.option is DeliveryOption.NONE:
        return None
    enforced = definition.option is DeliveryOption.ENFORCED
    strict = enforced and definition.encryption_mode is EncryptionMode.STRICT
    if strict:
        ctx = ssl.create_default_context()
        if ca_file:
            ctx.load_verify_locations(cafile=ca_file)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if enforced:
            ctx.minimum_version = _TLS_VERSIONS.get(definition.min_tls, ssl.TLSVersion.TLSv1_2)
        else:
            # Opportunistic: any TLS beats plaintext, so accept what the server has.
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


# -- a small SMTP client -----------------------------------------------------------------------


class SmtpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.extensions: set[str] = set()

    @classmethod
    async def connect(cls, address: str, port: int, timeout: float) -> SmtpClient:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address, port), timeout)
        except (OSError, TimeoutError) as exc:
            raise TempFailure(f"connection to {address}:{port} failed: {_describe(exc)}") from None
        return cls(reader, writer, timeout)

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            try:
                raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                raise TempFailure(f"lost connection: {_describe(exc)}") from None
            if not raw:
                raise TempFailure("connection closed by the server")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit():
                raise TempFailure(f"bad SMTP reply {line[:80]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), f"{line[:3]} " + " / ".join(lines)

    async def command(self, line: str) -> tuple[int, str]:
        self.writer.write(line.encode("utf-8") + b"\r\n")
        await self._drain()
        return await self.reply()

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise TempFailure(f"lost connection: {_describe(exc)}") from None

    async def ehlo(self, name: str) -> None:
        code, text = await self.command(f"EHLO {name}")
        if code != 250:
            code, text = await self.command(f"HELO {name}")
            if code != 250:
                raise TempFailure(f"HELO refused: {text}")
            self.extensions = set()
            return
        self.extensions = {part.split()[0].upper()
                           for part in text[4:].split(" / ")[1:] if part.strip()}

    async def starttls(self, ctx: ssl.SSLContext, server_hostname: str) -> None:
        await self.writer.start_tls(ctx, server_hostname=server_hostname,
                                    ssl_handshake_timeout=self.timeout)

    async def send_data(self, body: bytes) -> tuple[int, str]:
        lines = body.split(b"\r\n")
        if lines and lines[-1] == b"":
            lines.pop()
        stuffed = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
        self.writer.write(stuffed + b".\r\n")
        await self._drain()
        return await self.reply()

    def tls(self) -> tuple[str | None, str | None]:
        obj = self.writer.get_extra_info("ssl_object")
        if obj is None:
            return None, None
        cipher = obj.cipher()
        return obj.version(), cipher[0] if cipher else None

    async def close(self) -> None:
        try:
            if not self.writer.is_closing():
                self.writer.write(b"QUIT\r\n")
                await asyncio.wait_for(self.writer.drain(), 1)
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 1)
        except (OSError, TimeoutError, ssl.SSLError):
            pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class _RetryPlain(TempFailure):
    """Opportunistic TLS failed at this host: the caller tries it once more in plaintext."""


# -- one attempt at one host -------------------------------------------------------------------


async def attempt_host(target: Target, definition: DeliveryDefinition, ctx: ssl.SSLContext | None,
                       mail_from: str, recipients: list[str], body: bytes, helo: str,
                       timeout: float) -> Attempt:
    """Try to hand ``body`` to one host. Never raises for SMTP or TLS trouble: the outcome
    and per-recipient replies are in the returned Attempt."""
    att = Attempt(target.host, target.address, target.port, definition.name,
                  str(definition.option), str(definition.encryption_mode), definition.min_tls,
                  list(recipients))
    enforced = definition.option is DeliveryOption.ENFORCED
    client: SmtpClient | None = None
    started = time.monotonic()
    try:
        client = await SmtpClient.connect(target.address, target.port, timeout)
        code, text = await client.reply()
        att.reply = text
        if code != 220:
            raise TempFailure(f"greeting refused: {text}")
        await client.ehlo(helo)
        if ctx is not None:
            if "STARTTLS" not in client.extensions:
                if enforced:
                    raise TempFailure("TLS required but the server does not offer STARTTLS")
            else:
                code, text = await client.command("STARTTLS")
                if code != 220:
                    if enforced:
                        raise TempFailure(f"TLS required but STARTTLS was refused: {text}")
                    raise _RetryPlain(f"STARTTLS refused: {text}")
                try:
                    await client.starttls(ctx, target.host)
                except (ssl.SSLError, ssl.CertificateError, OSError, TimeoutError) as exc:
                    if enforced:
                        raise TempFailure(f"TLS required but the handshake failed: "
                                          f"{_describe(exc)}") from None
                    raise _RetryPlain(f"TLS handshake failed: {_describe(exc)}") from None
                att.tls_version, att.tls_cipher = client.tls()
                att.certificate_verified = ctx.verify_mode == ssl.CERT_REQUIRED
                await client.ehlo(helo)
        code, text = await client.command(f"MAIL FROM:<{mail_from}>")
        att.reply = text
        if code != 250:
            _fail(code, f"MAIL FROM refused: {text}")
        accepted = []
        for rcpt in recipients:
            code, text = await client.command(f"RCPT TO:<{rcpt}>")
            att.rcpt_replies[rcpt] = text
            if code in (250, 251):
                accepted.append(rcpt)
        if not accepted:
            codes = {int(t[:3]) // 100 for t in att.rcpt_replies.values()}
            att.outcome = "permanent" if codes == {5} else "temporary"
            att.reply = "every recipient refused"
            return att
        code, text = await client.command("DATA")
        if code != 354:
            _fail(code, f"DATA refused: {text}")
        code, text = await client.send_data(body)
        att.reply = text
        if code != 250:
            _fail(code, f"message refused: {text}")
        for rcpt in accepted:
            att.rcpt_replies[rcpt] = text
        att.outcome = "delivered"
    except PermFailure as exc:
        att.outcome, att.error = "permanent", str(exc)
    except _RetryPlain as exc:
        att.outcome, att.error, att.retry_plain = "temporary", str(exc), True
    except TempFailure as exc:
        att.outcome, att.error = "temporary", str(exc)
    finally:
        if client is not None:
            await client.close()
        att.elapsed_s = round(time.monotonic() - started, 4)
    return att


def _fail(code: int, text: str) -> None:
    raise (PermFailure if 500 <= code < 600 else TempFailure)(text)


def rcpt_outcome(att: Attempt, rcpt: str) -> str:
    """delivered | temporary | permanent for one recipient of an attempt."""
    if att.outcome != "delivered":
        reply = att.rcpt_replies.get(rcpt, "")
        if reply[:1] == "5":
            return "permanent"
        return att.outcome if att.outcome == "permanent" else "temporary"
    reply = att.rcpt_replies.get(rcpt, "")
    if reply[:1] == "2":
        return "delivered"
    return "permanent" if reply[:1] == "5" else "temporary"


# -- a whole queue entry ----------------------------------------------------------------------


@dataclass(slots=True)
class Group:
    """Recipients that share a destination and a definition: one transaction per host."""

    kind: str  # route | mx
    domain: str
    definition: DeliveryDefinition
    policy: str
    recipients: list[Recipient] = field(default_factory=list)
    variant: str = ""  # which copy of the message they get ('' as received; see relay.secure)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def route_definition(mode: EncryptionMode | None, host: str) -> DeliveryDefinition:
    if mode is None:
        return DeliveryDefinition(f"Inbound route {host} (not validated)",
                                  DeliveryOption.OPPORTUNISTIC)
    return DeliveryDefinition(f"Inbound route {host} (Enforced TLS, {mode.value.title()})",
                              DeliveryOption.ENFORCED, mode, "1.2")


def group_recipients(entry: QueueEntry, model: PolicyModel, index: PolicyIndex,
                     variant_of: Callable[[str], str] | None = None) -> list[Group]:
    """``variant_of`` names the copy of the message each recipient gets (Secure Messaging
    banners); recipients of different copies never share a transaction."""
    groups: dict[tuple[str, str, str, str], Group] = {}
    now = datetime.now(UTC)
    for rcpt in entry.pending():
        variant = variant_of(rcpt.address) if variant_of else ""
        if index.is_internal(rcpt.address):
            key = ("route", "", "", variant)
            groups.setdefault(key, Group("route", "", DeliveryDefinition("inbound routes"),
                                         "inbound routes", variant=variant)
                              ).recipients.append(rcpt)
            continue
        decision = index.delivery(MessageContext(
            envelope_from=entry.mail_from, header_from=entry.header_from,
            recipient=rcpt.address, client_ip=parse_ip(entry.client_ip), at=now))
        domain = _domain(rcpt.address)
        key = ("mx", domain, decision.definition.name, variant)
        policy = decision.policy.narrative if decision.policy else "default (opportunistic)"
        groups.setdefault(key, Group("mx", domain, decision.definition, policy, variant=variant)
                          ).recipients.append(rcpt)
    return list(groups.values())


class Deliverer:
    """Delivers queue entries; reusable across entries (caches TLS contexts)."""

    def __init__(self, options: NetworkOptions, helo: str) -> None:
        self.options = options
        self.helo = helo
        self._contexts: dict[tuple[str, str, str], ssl.SSLContext | None] = {}
        self._resolver: dns.asyncresolver.Resolver | None = None
        # The relay's own listening sockets (host, port): never a delivery target.
        self.own_addresses: set[tuple[str, int]] = set()

    def is_own(self, target: Target) -> bool:
        """True when ``target`` is this relay: a next hop that would loop the mail back."""
        for host, port in self.own_addresses:
            if target.port != port:
                continue
            if host in ("0.0.0.0", "::"):
                return _is_local_address(target.address)
            if parse_ip(host) == parse_ip(target.address):
                return True
        return False

    async def _context(self, definition: DeliveryDefinition) -> ssl.SSLContext | None:
        key = (str(definition.option), str(definition.encryption_mode), definition.min_tls)
        if key not in self._contexts:
            ca = str(self.options.ca_file) if self.options.ca_file else None
            # Loading the system trust store reads files: keep it off the event loop.
            self._contexts[key] = await asyncio.to_thread(client_context, definition, ca)
        return self._contexts[key]

    async def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            # The system resolver reads /etc/resolv.conf: once, and off the event loop.
            self._resolver = await asyncio.to_thread(make_resolver, self.options)
        return self._resolver

    async def targets(self, group: Group, model: PolicyModel
                      ) -> list[tuple[Target, DeliveryDefinition]]:
        """Hosts to try, in order, each with the definition that applies to it."""
        resolver = await self._get_resolver()
        if group.kind == "route":
            if not model.inbound_routes:
                raise TempFailure("no inbound routes configured for internal mail")
            found = []
            for route in model.inbound_routes:
                definition = route_definition(route.encryption_mode, route.host)
                if parse_ip(route.host) is not None:
                    addresses: tuple[str, ...] = (route.host,)
                else:
                    try:
                        addresses = await resolve_addresses(route.host, self.options, resolver)
                    except DnsError:
                        addresses = ()
                found += [(Target(route.host, a, route.port), definition) for a in addresses]
            if not found:
                raise TempFailure("no inbound route has an address")
            return found
        try:
            hosts = await resolve_mx(group.domain, self.options, resolver)
        except DnsError as exc:
            if "NXDOMAIN" in exc.reason or "null MX" in exc.reason:
                raise PermFailure(f"{group.domain}: {exc.reason}") from None
            raise TempFailure(f"{group.domain}: {exc.reason}") from None
        found = [(Target(h.name, a, self.options.smtp_port), group.definition)
                 for h in hosts for a in h.addresses]
        if not found:
            raise TempFailure(f"{group.domain}: no MX host has an address")
        return found

    async def deliver_group(self, entry: QueueEntry, body: bytes, group: Group,
                            model: PolicyModel) -> list[Attempt]:
        """Try the group's hosts until every recipient has a final answer or hosts run out.
        Updates the recipients' status and detail; returns the attempts made."""
        attempts: list[Attempt] = []
        try:
            targets = await self.targets(group, model)
        except (TempFailure, PermFailure) as exc:
            status = "failed" if isinstance(exc, PermFailure) else "pending"
            for rcpt in group.recipients:
                rcpt.status, rcpt.detail = status, str(exc)
            return attempts
        mine = [t for t, _ in targets if self.is_own(t)]
        targets = [(t, d) for t, d in targets if not self.is_own(t)]
        if mine and not targets:
            where = group.domain or "the inbound routes"
            for rcpt in group.recipients:
                rcpt.status = "failed"
                rcpt.detail = (f"mail for {where} loops back to myself "
                               f"({mine[0].address}:{mine[0].port})")
            return attempts
        todo = list(group.recipients)
        for target, definition in targets:
            if not todo:
                break
            ctx = await self._context(definition)
            att = await attempt_host(target, definition, ctx, entry.mail_from,
                                     [r.address for r in todo], body, self.helo,
                                     self.options.timeout)
            if att.retry_plain:
                attempts.append(att)
                plain = DeliveryDefinition(definition.name, DeliveryOption.NONE)
                att = await attempt_host(target, plain, None, entry.mail_from,
                                         [r.address for r in todo], body, self.helo,
                                         self.options.timeout)
                att.definition, att.option = definition.name, str(definition.option)
            attempts.append(att)
            still = []
            for rcpt in todo:
                outcome = rcpt_outcome(att, rcpt.address)
                detail = att.rcpt_replies.get(rcpt.address) or att.error or att.reply
                where = f"{target.host}[{target.address}]:{target.port}"
                rcpt.detail = f"{where}: {detail}"
                if outcome == "delivered":
                    rcpt.status = "delivered"
                elif outcome == "permanent":
                    rcpt.status = "failed"
                else:
                    still.append(rcpt)
            todo = still
        return attempts


def _is_local_address(address: str) -> bool:
    """An address of this machine: one a socket can bind to."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return True
    return False
