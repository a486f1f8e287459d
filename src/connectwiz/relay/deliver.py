"""Delivery: the SMTP client side, under the Secure Delivery policy of each recipient.

- Recipients in an internal domain go to the bundle's inbound routes, in order, with enforced
  TLS at the encryption mode their validation found (a route not yet validated gets
  opportunistic TLS).
- Other recipients go to their domain's MX hosts in preference order (probe.dns, the same
  lookup as ``validate``), under the definition ``PolicyIndex.delivery`` picks:
  opportunistic (STARTTLS when offered, any certificate), enforced strict (TLS at the
  minimum version, chain and host name verified), enforced relaxed (TLS at the minimum
  version, any certificate), none (no TLS).

Where the bundle leaves a destination at Opportunistic TLS, what the partner publishes
(MTA-STS, DANE) can raise the requirement per MX host: relay.published decides.

Enforced TLS never falls back to plaintext: no STARTTLS in the EHLO reply (perhaps stripped
by a man in the middle), a refused STARTTLS or a failed handshake is a temporary failure
for that host, and the message is deferred when no host does better.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dns.asyncresolver
import dns.resolver

from connectwiz.policy.model import (
    DeliveryDefinition,
    DeliveryOption,
    EncryptionMode,
    PolicyModel,
)
from connectwiz.policy.select import MessageContext, PolicyIndex
from connectwiz.probe.certs import TrustStore, trust_store
from connectwiz.probe.dns import DnsError, make_resolver, resolve_addresses, resolve_mx
from connectwiz.probe.options import NetworkOptions
from connectwiz.relay.attempt import (
    Attempt,
    PermFailure,
    Target,
    TempFailure,
    attempt_cached,
    attempt_host,
    client_context,
    rcpt_outcome,
)
from connectwiz.relay.published import PublishedPolicies
from connectwiz.relay.queuefile import QueueEntry, Recipient
from connectwiz.relay.receipt import parse_ip
from connectwiz.relay.sessions import SessionCache

# -- a whole queue entry ----------------------------------------------------------------------

# Awaited with each attempt as it ends and the recipients it delivered.
AttemptHook = Callable[[Attempt, list[Recipient]], Awaitable[None]]


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
    """Delivers queue entries; reusable across entries, so what is costly is done once:
    the trust store is loaded once, each TLS context is built once per kind of definition,
    DNS answers are cached for their TTL (negative answers too; failures are not), and a
    session that delivered is kept a moment for the next message to the same host
    (``relay.sessions``). ``close()`` ends those sessions."""

    def __init__(self, options: NetworkOptions, helo: str) -> None:
        self.options = options
        self.helo = helo
        self._contexts: dict[tuple[str, str, str], asyncio.Future[ssl.SSLContext | None]] = {}
        self._trust: dict[str, asyncio.Future[TrustStore]] = {}
        self._resolver: dns.asyncresolver.Resolver | None = None
        self.sessions = SessionCache()
        self.published = PublishedPolicies(options)
        # The relay's own listening sockets (host, port): never a delivery target.
        self.own_addresses: set[tuple[str, int]] = set()

    async def close(self) -> None:
        """End the sessions kept for reuse (QUIT) and the MTA-STS refreshes under way."""
        await self.sessions.close()
        await self.published.close()

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
        return await self._once(self._contexts, key, client_context, definition)

    async def _trust_store(self) -> TrustStore:
        # The system CA bundle plus --ca-file.
        return await self._once(self._trust, "", _loaded_trust, self.options)

    @staticmethod
    async def _once(built: dict[Any, asyncio.Future[Any]], key: Any,
                    build: Callable[..., Any], *args: Any) -> Any:
        """``build(*args)`` in a worker thread (it reads files), once per ``key``: the first
        delivery builds, deliveries arriving meanwhile await that same build instead of each
        loading the trust store again and crowding the threads the spool's fsyncs need."""
        building = built.get(key)
        if building is None:
            building = built[key] = asyncio.ensure_future(asyncio.to_thread(build, *args))
        try:
            return await asyncio.shield(building)
        except Exception:
            if built.get(key) is building:
                del built[key]  # e.g. an unreadable CA file: try again next time
            raise

    async def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            # The system resolver reads /etc/resolv.conf: once, and off the event loop.
            resolver = await asyncio.to_thread(make_resolver, self.options)
            resolver.cache = dns.resolver.Cache()
            self._resolver = resolver
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
        plan = await self.published.plan(group.domain, group.definition,
                                         [h.name for h in hosts])
        found = [(Target(h.name, a, self.options.smtp_port, plan[h.name][1]), plan[h.name][0])
                 for h in hosts for a in h.addresses]
        if not found:
            raise TempFailure(f"{group.domain}: no MX host has an address")
        return found

    async def deliver_group(self, entry: QueueEntry, body: bytes, group: Group,
                            model: PolicyModel, on_attempt: AttemptHook | None = None
                            ) -> list[Attempt]:
        """Try the group's hosts until every recipient has a final answer or hosts run out.
        Updates the recipients' status and detail; returns the attempts made.

        ``on_attempt(attempt, delivered)`` is awaited as soon as each attempt ends, with the
        recipients it delivered, before the next: the caller records a remote's 250 while
        the next hop is the only one that has seen it."""
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
        trust = await self._trust_store()
        for target, definition in targets:
            if not todo:
                break
            rcpts = [r.address for r in todo]
            att = await attempt_cached(target, definition, self.sessions, entry.mail_from,
                                       rcpts, body)
            if att is None:
                ctx = await self._context(definition)
                att = await attempt_host(target, definition, ctx, entry.mail_from, rcpts, body,
                                         self.helo, self.options.timeout,
                                         self.options.greeting_timeout, trust, self.sessions)
            if att.retry_plain:
                attempts.append(att)
                if on_attempt is not None:
                    await on_attempt(att, [])
                plain = DeliveryDefinition(definition.name, DeliveryOption.NONE)
                att = await attempt_host(target, plain, None, entry.mail_from,
                                         [r.address for r in todo], body, self.helo,
                                         self.options.timeout, self.options.greeting_timeout)
                att.definition, att.option = definition.name, str(definition.option)
            attempts.append(att)
            still, delivered = [], []
            for rcpt in todo:
                outcome = rcpt_outcome(att, rcpt.address)
                detail = att.rcpt_replies.get(rcpt.address) or att.error or att.reply
                where = f"{target.host}[{target.address}]:{target.port}"
                rcpt.detail = f"{where}: {detail}"
                if outcome == "delivered":
                    rcpt.status = "delivered"
                    delivered.append(rcpt)
                elif outcome == "permanent":
                    rcpt.status = "failed"
                else:
                    still.append(rcpt)
            if on_attempt is not None:
                await on_attempt(att, delivered)
            todo = still
        return attempts


def _loaded_trust(options: NetworkOptions) -> TrustStore:
    trust = trust_store(options.ca_file)
    _ = trust.store  # build the OpenSSL store now, in this thread
    return trust


def _is_local_address(address: str) -> bool:
    """An address of this machine: one a socket can bind to."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return True
    return False
