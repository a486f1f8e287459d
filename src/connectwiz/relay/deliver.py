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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dns.asyncresolver
from cryptography.hazmat.primitives.serialization import Encoding

from connectwiz.policy.model import (
    DeliveryDefinition,
    DeliveryOption,
    EncryptionMode,
    PolicyModel,
)
from connectwiz.policy.select import MessageContext, PolicyIndex
from connectwiz.probe.certs import TrustStore, judge_chain, trust_store
from connectwiz.probe.dns import DnsError, make_resolver, resolve_addresses, resolve_mx
from connectwiz.probe.options import NetworkOptions
from connectwiz.probe.tls import client_context as tls_client_context
from connectwiz.probe.tls import peer_chain
from connectwiz.relay.published import Published, PublishedPolicies, result_type
from connectwiz.relay.receipt import parse_ip
from connectwiz.relay.spool import QueueEntry, Recipient
from connectwiz.smtpclient import NeedsSmtpUtf8, SmtpClient, SmtpProtocolError, StepTimeout

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
    # What the partner publishes for this MX host (MTA-STS, DANE); None for inbound routes.
    published: Published | None = field(default=None, compare=False)


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
    # The published policy of the destination (read by TLS-RPT) and what decided TLS here.
    policy_type: str = "no-policy-found"  # sts | tlsa | no-policy-found (RFC 8460)
    policy_domain: str = ""
    decided_by: str = "bundle"  # bundle | mta-sts | dane
    policy_failure: str = ""  # RFC 8460 result type when the published policy was not met
    policy_detail: str = ""  # ... and why, for the admin

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


# -- TLS contexts ------------------------------------------------------------------------------


def client_context(definition: DeliveryDefinition) -> ssl.SSLContext | None:
    """The TLS context a definition asks for; None means no TLS at all.

    No context verifies in the handshake: under Enforced Strict the presented chain is judged
    after it by ``probe.certs.judge_chain``, the judgement ``validate`` reports, so the
    verdict and delivery cannot disagree.
    """
    if definition.option is DeliveryOption.NONE:
        return None
    if definition.option is DeliveryOption.ENFORCED:
        version = _TLS_VERSIONS.get(definition.min_tls, ssl.TLSVersion.TLSv1_2)
        return tls_client_context(verify=False, minimum=version)
    # Opportunistic: any TLS beats plaintext, so accept what the server has.
    return tls_client_context(verify=False, legacy=True)


# -- one attempt at one host -------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class _RetryPlain(TempFailure):
    """Opportunistic TLS failed at this host: the caller tries it once more in plaintext."""


async def attempt_host(target: Target, definition: DeliveryDefinition, ctx: ssl.SSLContext | None,
                       mail_from: str, recipients: list[str], body: bytes | Path,
                       helo: str, timeout: float, greeting_timeout: float | None = None,
                       trust: TrustStore | None = None) -> Attempt:
    """Try to hand ``body`` (the message, or the spool file holding it) to one host.

    Never raises for SMTP or TLS trouble: the outcome and per-recipient replies are in the
    returned Attempt. ``greeting_timeout`` (default ``timeout``) bounds the wait for the
    greeting alone. ``trust`` (default: the system store) judges certificates under Enforced
    Strict."""
    att = Attempt(target.host, target.address, target.port, definition.name,
                  str(definition.option), str(definition.encryption_mode), definition.min_tls,
                  list(recipients))
    published = target.published
    if published is not None:
        att.policy_type, att.policy_domain = published.policy_type, published.policy_domain
        att.decided_by, att.policy_failure = published.decided_by, published.failure_type
        att.policy_detail = published.refuse or published.noted
    client: SmtpClient | None = None
    try:
        if published is not None and published.refuse:
            raise TempFailure(published.refuse)  # never connect: the policy excludes the host
        try:
            client = await SmtpClient.connect(target.address, target.port, timeout)
        except (OSError, StepTimeout) as exc:
            raise TempFailure(f"connection to {target.address}:{target.port} failed: "
                              f"{_describe(exc)}") from None
        await _converse(client, att, target, definition, ctx, mail_from, recipients, body, helo,
                        greeting_timeout or timeout, trust)
    except PermFailure as exc:
        att.outcome, att.error = "permanent", str(exc)
    except _RetryPlain as exc:
        att.outcome, att.error, att.retry_plain = "temporary", str(exc), True
    except TempFailure as exc:
        att.outcome, att.error = "temporary", str(exc)
    except (SmtpProtocolError, StepTimeout) as exc:
        att.outcome, att.error = "temporary", str(exc)
    except (OSError, ssl.SSLError) as exc:
        att.outcome, att.error = "temporary", f"lost connection: {_describe(exc)}"
    finally:
        if client is not None:
            await client.close()
    return att


async def _converse(client: SmtpClient, att: Attempt, target: Target,
                    definition: DeliveryDefinition, ctx: ssl.SSLContext | None, mail_from: str,
                    recipients: list[str], body: bytes | Path,
                    helo: str, greeting_timeout: float, trust: TrustStore | None) -> None:
    enforced = definition.option is DeliveryOption.ENFORCED
    strict = enforced and definition.encryption_mode is EncryptionMode.STRICT
    published = target.published
    testing = published is not None and published.sts_mode == "testing"
    reply = await client.greeting(greeting_timeout)
    att.reply = reply.transcript
    if reply.code != 220:
        raise TempFailure(f"greeting refused: {reply.transcript}")
    reply = await client.ehlo(helo, helo_fallback=True)
    if reply.code != 250:
        raise TempFailure(f"HELO refused: {reply.transcript}")
    if ctx is not None:
        if "STARTTLS" not in client.extensions:
            if enforced or testing:
                att.policy_failure = att.policy_failure or "starttls-not-supported"
                att.policy_detail = att.policy_detail or "the server does not offer STARTTLS"
            if enforced:
                raise TempFailure("TLS required but the server does not offer STARTTLS")
        else:
            reply = await client.command("STARTTLS", "after STARTTLS")
            if reply.code != 220:
                if enforced:
                    raise TempFailure(f"TLS required but STARTTLS was refused: "
                                      f"{reply.transcript}")
                raise _RetryPlain(f"STARTTLS refused: {reply.transcript}")
            try:
                ssl_object = await client.starttls(ctx, target.host)
            except (ssl.SSLError, ssl.CertificateError, OSError, StepTimeout) as exc:
                if enforced:
                    raise TempFailure(f"TLS required but the handshake failed: "
                                      f"{_describe(exc)}") from None
                raise _RetryPlain(f"TLS handshake failed: {_describe(exc)}") from None
            att.tls_version, att.tls_cipher = client.tls()
            if published is not None and published.tlsa is not None:
                chain = tuple(c.public_bytes(Encoding.DER) for c in peer_chain(ssl_object))
                problem = published.check_chain(target.host, chain)
                if problem:
                    att.policy_failure, att.policy_detail = "validation-failure", problem
                    raise TempFailure(f"DANE: {problem}")
                att.certificate_verified = True
            elif strict or testing:
                store = trust or trust_store(None)
                _, problems = judge_chain(peer_chain(ssl_object), target.host, store)
                if problems and (published is not None and published.sts_mode):
                    att.policy_failure = att.policy_failure or result_type(problems)
                    att.policy_detail = att.policy_detail or "; ".join(problems)
                if problems and strict:
                    raise TempFailure("TLS required but the certificate is not accepted: "
                                      + "; ".join(problems))
                att.certificate_verified = not problems
            reply = await client.ehlo(helo, helo_fallback=True)
            if reply.code != 250:
                raise TempFailure(f"HELO over TLS refused: {reply.transcript}")
    try:
        reply = await client.mail(mail_from, recipients)
    except NeedsSmtpUtf8 as exc:
        # Postfix bounces such mail too (5.6.7): no host of this kind can ever take it.
        raise PermFailure(f"SMTPUTF8 is required: {exc}") from None
    att.reply = reply.transcript
    if reply.code != 250:
        _fail(reply.code, f"MAIL FROM refused: {reply.transcript}")
    accepted = []
    for rcpt in recipients:
        reply = await client.command(f"RCPT TO:<{rcpt}>", "after RCPT TO")
        att.rcpt_replies[rcpt] = reply.transcript
        if reply.code in (250, 251):
            accepted.append(rcpt)
    if not accepted:
        codes = {int(t[:3]) // 100 for t in att.rcpt_replies.values()}
        att.outcome = "permanent" if codes == {5} else "temporary"
        att.reply = "every recipient refused"
        return
    reply = await client.command("DATA", "after DATA")
    if reply.code != 354:
        _fail(reply.code, f"DATA refused: {reply.transcript}")
    reply = await client.send_message(body)
    att.reply = reply.transcript
    if reply.code != 250:
        _fail(reply.code, f"message refused: {reply.transcript}")
    for rcpt in accepted:
        att.rcpt_replies[rcpt] = reply.transcript
    att.outcome = "delivered"


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
        self._trust: TrustStore | None = None
        self.published = PublishedPolicies(options)

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
            self._contexts[key] = await asyncio.to_thread(client_context, definition)
        return self._contexts[key]

    async def _trust_store(self) -> TrustStore:
        if self._trust is None:
            # The system CA bundle plus --ca-file: read once, and off the event loop.
            self._trust = await asyncio.to_thread(_loaded_trust, self.options)
        return self._trust

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
        plan = await self.published.plan(group.domain, group.definition,
                                         [h.name for h in hosts])
        found = [(Target(h.name, a, self.options.smtp_port, plan[h.name][1]), plan[h.name][0])
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
        trust = await self._trust_store()
        for target, definition in targets:
            if not todo:
                break
            ctx = await self._context(definition)
            att = await attempt_host(target, definition, ctx, entry.mail_from,
                                     [r.address for r in todo], body, self.helo,
                                     self.options.timeout, self.options.greeting_timeout, trust)
            if att.retry_plain:
                attempts.append(att)
                plain = DeliveryDefinition(definition.name, DeliveryOption.NONE)
                att = await attempt_host(target, plain, None, entry.mail_from,
                                         [r.address for r in todo], body, self.helo,
                                         self.options.timeout, self.options.greeting_timeout)
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


def _loaded_trust(options: NetworkOptions) -> TrustStore:
    trust = trust_store(options.ca_file)
    _ = trust.store  # build the OpenSSL store now, in this thread
    return trust
