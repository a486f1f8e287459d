"""Receipt: the SMTP server side. aiosmtpd speaks the protocol; this module decides.

Per message the Secure Receipt policy is selected for each recipient (sender, recipient,
client IP; the header From once DATA is in) and the strictest one wins:
opportunistic < enforced < tls12_ncsc. Plaintext is refused with 530 under enforced; under
tls12_ncsc TLS older than 1.2 or a cipher outside ``NCSC_CIPHERS`` is refused too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from connectwiz.policy.addresses import canonical_address
from connectwiz.policy.model import PolicyModel, ReceiptOption
from connectwiz.policy.select import MessageContext, PolicyIndex
from connectwiz.relay.clientcert import (
    certificate_refusal,
    fingerprint,
    peer_certificate,
    request_certificates,
)
from connectwiz.relay.data import read_head
from connectwiz.relay.events import EventLog
from connectwiz.relay.queuefile import QueueEntry, QueueWriter, Recipient
from connectwiz.relay.settings import RelaySettings
from connectwiz.relay.smtpd import RelaySMTP
from connectwiz.relay.spool import Spool, new_message_id

# Our reading of the NCSC guidance on TLS for e-mail: TLS 1.3 (all of its suites are AEAD
# with forward secrecy) or TLS 1.2 with ECDHE key exchange and AES-GCM or ChaCha20-Poly1305.
NCSC_CIPHERS = frozenset({
    "TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
})
_STRICTNESS = {ReceiptOption.OPPORTUNISTIC: 0, ReceiptOption.ENFORCED: 1,
               ReceiptOption.TLS12_NCSC: 2}

REPLY_STARTTLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
REPLY_RELAY_DENIED = "554 5.7.1 Relay access denied"
REPLY_TOO_MANY_HOPS = "554 5.4.0 Error: too many hops"
REPLY_NOT_QUEUED = "451 4.3.0 Could not queue the message, try again later"


@dataclass(frozen=True, slots=True)
class TlsInfo:
    version: str
    cipher: str
    bits: int


def session_tls(session: Session) -> TlsInfo | None:
    extra = session.ssl
    if not extra:
        return None
    obj = extra.get("ssl_object")
    cipher = extra.get("cipher") or (obj.cipher() if obj else None)
    if obj is None or cipher is None:
        return None
    return TlsInfo(obj.version() or "unknown", cipher[0], int(cipher[2] or 0))


def tls_refusal(option: ReceiptOption, tls: TlsInfo | None) -> str | None:
    """The reply refusing a message under ``option`` given the session's TLS, or None."""
    if option is ReceiptOption.OPPORTUNISTIC:
        return None
    if tls is None:
        return REPLY_STARTTLS_FIRST
    if option is ReceiptOption.TLS12_NCSC and (
        tls.version not in ("TLSv1.2", "TLSv1.3") or tls.cipher not in NCSC_CIPHERS
    ):
        return (f"530 5.7.0 TLS 1.2 or newer with an approved cipher required "
                f"(this session: {tls.version} {tls.cipher})")
    return None


def strictest(options: list[ReceiptOption]) -> ReceiptOption:
    return max(options, key=_STRICTNESS.__getitem__, default=ReceiptOption.OPPORTUNISTIC)


def server_context(cert: str, key: str, pins: tuple[bytes, ...] = ()) -> ssl.SSLContext:
    """Accept every TLS version a client offers, so that policy — not the handshake — decides
    and an opportunistic sender with old TLS is not pushed back to plaintext. ``pins``: the
    client certificates receipt policies pin (see clientcert)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    request_certificates(ctx, pins)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


@dataclass(slots=True)
class ReceiptContext:
    """What receipt needs from the running relay; the getters see reloads at once."""

    settings: RelaySettings
    model: Callable[[], PolicyModel]
    index: Callable[[], PolicyIndex]
    spool: Spool
    # Runs receipt's blocking work (queue file, header parsing) on its own executor.
    io: Callable[..., asyncio.Future[Any]]
    # Commits a received message (queue file + log) and hands it to delivery.
    store: Callable[[QueueWriter, QueueEntry, dict[str, Any]], Awaitable[None]]
    record_refusal: Callable[[str, dict[str, Any]], Awaitable[None]]
    log: EventLog


def sender(envelope: Envelope) -> str:
    """The envelope sender, '' for the null sender (aiosmtpd keeps it as '<>')."""
    mail_from = envelope.mail_from or ""
    return "" if mail_from == "<>" else mail_from


def _client_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer or "")


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; policies name them as IPv4.
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


def _authorized(model: PolicyModel, client_ip: str) -> bool:
    ip = parse_ip(client_ip)
    return ip is not None and any(ip in net for net in model.organisation.authorized_outbound)


class ReceiptHandler:
    def __init__(self, ctx: ReceiptContext) -> None:
        self.ctx = ctx
        self.sessions: set[RelaySMTP] = set()
        self._per_ip: Counter[str] = Counter()

    def protocol(self, tls_context: ssl.SSLContext | None) -> RelaySMTP:
        s = self.ctx.settings
        return RelaySMTP(self, hostname=s.hostname, ident="connectwiz",
                         data_size_limit=s.max_message_size, tls_context=tls_context,
                         require_starttls=False, timeout=s.idle_timeout)

    # -- sessions -------------------------------------------------------------------------------

    def admit(self, proto: RelaySMTP) -> str | None:
        """Count a new session in, or the 421 that refuses it."""
        s = self.ctx.settings
        ip = _client_ip(proto.session) if proto.session else ""
        if len(self.sessions) >= s.max_connections:
            return "421 4.3.2 Too many connections, try again later"
        # Like Postfix (smtpd_client_event_limit_exceptions = $mynetworks), clients
        # authorised to relay are trusted not to hog the relay.
        if (self._per_ip[ip] >= s.max_connections_per_client
                and not _authorized(self.ctx.model(), ip)):
            self.ctx.log("refused", client=ip, reason="too many connections from this client",
                         limit=s.max_connections_per_client)
            return f"421 4.7.0 Error: too many connections from {ip}"
        self.sessions.add(proto)
        self._per_ip[ip] += 1
        return None

    def release(self, proto: RelaySMTP) -> None:
        if proto in self.sessions:
            self.sessions.discard(proto)
            ip = _client_ip(proto.session) if proto.session else ""
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]

    def _context(self, envelope: Envelope, recipient: str, session: Session,
                 header_from: str | None = None) -> MessageContext:
        return MessageContext(envelope_from=sender(envelope), header_from=header_from,
                              recipient=recipient, client_ip=parse_ip(_client_ip(session)),
                              at=datetime.now(UTC))

    async def handle_exception(self, error: Exception) -> str:
        """An unexpected error in a session: logged on one line, and a temporary reply
        (the sender retries; nothing is lost), never aiosmtpd's 500 with our internals."""
        self.ctx.log("error", reason=f"SMTP session: {type(error).__name__}: {error}"[:300])
        return "451 4.3.0 Error: internal error, try again later"

    # -- commands ---------------------------------------------------------------------------

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        # aiosmtpd offers AUTH after STARTTLS although every attempt would fail (clients
        # are authorised by IP here): a client should not be told it could log in.
        session.host_name = hostname
        kept = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        # RFC 2920: commands may come in groups; aiosmtpd reads them one line at a time and
        # the DATA reader gives back whatever follows the final dot.
        return [kept[0], "250-PIPELINING", *kept[1:]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if address not in ("", "<>") and (_bad_characters(address)
                                          or canonical_address(address).domain is None):
            return "501 5.1.7 Bad sender address syntax"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if _bad_characters(address):
            # Postfix never passes a CR (or other control) on in an address; neither do we.
            return "501 5.1.3 Bad recipient address syntax: control characters"
        if _same_address(address) in {_same_address(r) for r in envelope.rcpt_tos}:
            return "250 2.1.5 OK"  # a duplicate: one copy is delivered, as by Postfix
        if len(envelope.rcpt_tos) >= self.ctx.settings.max_recipients:
            return "452 4.5.3 Too many recipients"
        if canonical_address(address).domain is None:
            # No domain, or one we could not look up (address literals included).
            return "501 5.1.3 Bad recipient address syntax: a mail domain is required"
        index = self.ctx.index()
        client_ip = _client_ip(session)
        if not index.is_internal(address) and not _authorized(self.ctx.model(), client_ip):
            self.ctx.log("refused", client=client_ip, to=address, reason="relay access denied")
            return REPLY_RELAY_DENIED
        decision = index.receipt(self._context(envelope, address, session))
        refusal = (tls_refusal(decision.option, session_tls(session))
                   or certificate_refusal([decision.policy], session))
        if refusal:
            self.ctx.log("refused", client=client_ip, to=address, reason=refusal,
                         policy=_policy_name(decision))
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    # -- DATA -------------------------------------------------------------------------------

    async def receive(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        """Stream DATA into a queue file, decide, and commit it or throw it away. Returns
        the reply. Nothing but the header (bounded) is kept in memory."""
        ctx = self.ctx
        msg_id = new_message_id()
        writer = ctx.spool.open_message(msg_id)  # no I/O yet
        try:
            reply, entry = await self._read_and_decide(server, session, envelope, writer)
        except BaseException:
            # A dropped connection (cancelled) or a failed write: submitted, not waited for.
            with contextlib.suppress(RuntimeError):  # the loop is closing
                ctx.io(writer.abort)
            raise
        if entry is None:
            await ctx.io(writer.abort)
            return reply
        try:
            await ctx.store(writer, entry, entry.extra["received"])
        except OSError as exc:
            ctx.log("error", client=entry.client_ip, reason=f"spool write failed: {exc}")
            return REPLY_NOT_QUEUED
        return f"250 2.0.0 Ok: queued as {msg_id}"

    async def _read_and_decide(self, server: RelaySMTP, session: Session, envelope: Envelope,
                               writer: QueueWriter) -> tuple[str, QueueEntry | None]:
        """(refusal, None), or ("", the entry to commit)."""
        ctx = self.ctx
        msg_id = writer.msg_id
        tls = session_tls(session)
        client_ip = _client_ip(session)
        record: dict[str, Any] = {
            "client_ip": client_ip, "helo": session.host_name,
            "mail_from": sender(envelope), "recipients": list(envelope.rcpt_tos),
            "tls_version": tls.version if tls else None, "tls_cipher": tls.cipher if tls else None,
        }
        client_cert = peer_certificate(session)
        if client_cert is not None:  # only asked for while a policy pins one
            record["client_certificate_sha256"] = fingerprint(client_cert)
        writer.add(_received_header(ctx.settings.hostname, session, tls, msg_id,
                                    envelope.rcpt_tos))

        failed: list[OSError] = []

        async def sink(data: bytes) -> None:
            if failed:
                return  # read on to the end of DATA, so the session stays in step
            writer.add(data)
            try:
                await ctx.io(writer.flush)
            except OSError as exc:  # e.g. disk full
                failed.append(exc)

        data = await server.read_data(ctx.settings.max_message_size, sink)
        if failed:
            ctx.log("error", client=client_ip, reason=f"spool write failed: {failed[0]}")
            return REPLY_NOT_QUEUED, None
        writer.add(data.tail)  # written with the commit: a small message costs one call
        record["size"] = data.size
        if data.too_big:
            return "552 5.3.4 Error: message size exceeds fixed maximum message size", None
        if data.bare_newline:
            # SMTP smuggling: a bare LF or CR could hide a second message end from us but
            # not from the next hop (or the other way round). Refuse the whole message.
            reply = "550 5.5.2 Message refused: bare LF or bare CR in DATA (RFC 5321 2.3.8)"
            await ctx.record_refusal(msg_id, {**record, "result": reply})
            return reply, None
        # The address parser is slow on hostile headers: a large one is read in a thread.
        head = read_head(data.head, quick=True) or await ctx.io(read_head, data.head)
        if head.received + 1 >= ctx.settings.max_hops:  # + 1: our own Received:
            await ctx.record_refusal(msg_id, {**record, "result": REPLY_TOO_MANY_HOPS,
                                              "hops": head.received + 1})
            return REPLY_TOO_MANY_HOPS, None
        index = ctx.index()
        decisions = [index.receipt(self._context(envelope, r, session, head.header_from))
                     for r in envelope.rcpt_tos]
        option = strictest([d.option for d in decisions])
        winner = next((d for d in decisions if d.option is option), None)
        record.update(header_from=head.header_from, receipt_option=str(option),
                      policy=_policy_name(winner))
        refusal = tls_refusal(option, tls) or certificate_refusal(
            [d.policy for d in decisions], session)
        if refusal:
            await ctx.record_refusal(msg_id, {**record, "result": refusal})
            return refusal, None
        record["result"] = "accepted"
        return "", QueueEntry(
            id=msg_id, mail_from=sender(envelope),
            recipients=[Recipient(r) for r in envelope.rcpt_tos],
            received_at=datetime.now(UTC).timestamp(), client_ip=client_ip,
            header_from=head.header_from, is_bounce=not sender(envelope),
            extra={"received": record},  # lets recovery rewrite a log line lost in a crash
        )


def _bad_characters(address: str) -> bool:
    return any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in address)


def _same_address(address: str) -> str:
    """Addresses that reach the same mailbox: the domain is case-insensitive."""
    local, at, domain = address.rpartition("@")
    return f"{local}{at}{domain.lower()}"


def _policy_name(decision: Any) -> str:
    policy = getattr(decision, "policy", None)
    return policy.narrative if policy is not None else "default (opportunistic)"


def _received_header(hostname: str, session: Session, tls: TlsInfo | None, msg_id: str,
                     rcpts: list[str]) -> bytes:
    helo = (session.host_name or "unknown").replace("\r", "").replace("\n", "")[:200]
    ip = _client_ip(session)
    if tls:
        proto = "ESMTPS" if session.extended_smtp else "SMTPS"
        using = f"\r\n\t(using {tls.version} with cipher {tls.cipher} ({tls.bits} bits))"
    else:
        proto, using = ("ESMTP" if session.extended_smtp else "SMTP"), ""
    # Only name the recipient when there is one, so the header does not leak a Bcc list.
    for_part = f"\r\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 else ""
    date = format_datetime(datetime.now(UTC))
    return (f"Received: from {helo} ([{ip}]){using}\r\n\tby {hostname} (connectwiz) "
            f"with {proto} id {msg_id}{for_part}; {date}\r\n").encode("utf-8", "replace")
