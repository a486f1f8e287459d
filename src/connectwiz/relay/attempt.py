"""One delivery attempt at one host: the SMTP conversation under one delivery definition.

A new connection (greeting, EHLO, STARTTLS as the definition asks, the certificate judged
under Enforced Strict, EHLO again) or a session kept from an earlier delivery to the same
host under the same requirements (``relay.sessions``), then one transaction: MAIL FROM,
RCPT TO, DATA — pipelined when the server offers PIPELINING — and the message.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from connectwiz.policy.model import DeliveryDefinition, DeliveryOption, EncryptionMode
from connectwiz.policy.sslmode import effective_min_tls, level_of
from connectwiz.probe.certs import TrustStore, judge_chain, trust_store
from connectwiz.probe.tls import client_context as tls_client_context
from connectwiz.probe.tls import peer_chain
from connectwiz.relay.published import Published, result_type
from connectwiz.relay.sessions import CachedSession, SessionCache
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
    # Sent over a session kept from an earlier delivery (its TLS facts are that session's).
    reused_connection: bool = False
    elapsed_s: float = 0.0  # start to outcome, for the latency metrics
    # The published policy of the destination (read by TLS-RPT) and what decided TLS here.
    policy_type: str = "no-policy-found"  # sts | tlsa | no-policy-found (RFC 8460)
    policy_domain: str = ""
    decided_by: str = "bundle"  # bundle | mta-sts | dane
    policy_failure: str = ""  # RFC 8460 result type when the published policy was not met
    policy_detail: str = ""  # ... and why, for the admin
    # The applied policy for the TLS report (RFC 8460 §4.4 policy-string, mx-host); not in
    # the message log, where the policy domain and type say enough.
    policy_string: tuple[str, ...] = ()
    mx_host: tuple[str, ...] = ()

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        del record["policy_string"], record["mx_host"]
        return record


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
        # The SSL Mode sets the ciphers and the oldest TLS version (with min_tls if newer).
        version = _TLS_VERSIONS[effective_min_tls(definition)]
        ctx = tls_client_context(verify=False, minimum=version)
        ctx.set_ciphers(level_of(definition).ciphers)
        return ctx
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
                       trust: TrustStore | None = None,
                       sessions: SessionCache | None = None) -> Attempt:
    """Try to hand ``body`` (the message, or the spool file holding it) to one host over a
    new connection.

    Never raises for SMTP or TLS trouble: the outcome and per-recipient replies are in the
    returned Attempt. ``greeting_timeout`` (default ``timeout``) bounds the wait for the
    greeting alone. ``trust`` (default: the system store) judges certificates under Enforced
    Strict. With ``sessions``, a session that delivered is kept there instead of closed."""
    att = _attempt_record(target, definition, recipients)
    client: SmtpClient | None = None
    started = time.monotonic()
    try:
        if target.published is not None and target.published.refuse:
            raise TempFailure(target.published.refuse)  # the policy excludes this host
        try:
            client = await SmtpClient.connect(target.address, target.port, timeout)
        except (OSError, StepTimeout) as exc:
            raise TempFailure(f"connection to {target.address}:{target.port} failed: "
                              f"{_describe(exc)}") from None
        await _open_session(client, att, target, definition, ctx, helo,
                            greeting_timeout or timeout, trust)
        await _transaction(client, att, mail_from, recipients, body)
    except _FAILURES as exc:
        _record_failure(att, exc)
    finally:
        if client is not None:
            # A session that failed a published policy (testing mode) is not kept: a reuse
            # would not record that failure again.
            if sessions is not None and att.outcome == "delivered" and not att.policy_failure:
                sessions.put(session_key(target, definition), CachedSession(
                    client, att.tls_version, att.tls_cipher, att.certificate_verified))
            else:
                await client.close()
        att.elapsed_s = round(time.monotonic() - started, 4)
    return att


async def attempt_cached(target: Target, definition: DeliveryDefinition, sessions: SessionCache,
                         mail_from: str, recipients: list[str], body: bytes | Path
                         ) -> Attempt | None:
    """Try to hand ``body`` to one host over a session kept from an earlier delivery to it
    under the same TLS requirements; None when no such session works any more."""
    if target.published is not None and target.published.refuse:
        return None  # attempt_host records the refusal without connecting
    key = session_key(target, definition)
    while (session := sessions.take(key)) is not None:
        started = time.monotonic()
        att = _attempt_record(target, definition, recipients)
        att.tls_version, att.tls_cipher = session.tls_version, session.tls_cipher
        att.certificate_verified = session.certificate_verified
        att.reused_connection = True
        try:
            await _transaction(session.client, att, mail_from, recipients, body, reused=True)
        except _StaleSession:
            sessions.discard(session)  # closed while idle: nothing was sent; try the next
            continue
        except _FAILURES as exc:
            _record_failure(att, exc)
        att.elapsed_s = round(time.monotonic() - started, 4)
        if att.outcome == "delivered":
            sessions.put(key, session)
        else:
            sessions.discard(session)
        return att
    return None


def session_key(target: Target, definition: DeliveryDefinition) -> tuple[str, ...]:
    """What must match for a kept session to be reused: the host as connected to and as
    verified, and every TLS requirement of the definition."""
    published = target.published
    return (target.address, str(target.port), target.host.lower(), str(definition.option),
            str(definition.encryption_mode), effective_min_tls(definition),
            level_of(definition).ciphers,
            f"{published.decided_by}:{published.sts_mode}" if published else "")


def _attempt_record(target: Target, definition: DeliveryDefinition,
                    recipients: list[str]) -> Attempt:
    att = Attempt(target.host, target.address, target.port, definition.name,
                  str(definition.option), str(definition.encryption_mode), definition.min_tls,
                  list(recipients),
                  policy_domain=recipients[0].rpartition("@")[2].lower() if recipients else "")
    published = target.published
    if published is not None:
        att.policy_type, att.policy_domain = published.policy_type, published.policy_domain
        att.decided_by, att.policy_failure = published.decided_by, published.failure_type
        att.policy_detail = published.refuse or published.noted
        att.policy_string, att.mx_host = published.policy_string, published.mx_host
    return att


_FAILURES = (TempFailure, PermFailure, SmtpProtocolError, StepTimeout, OSError)


def _record_failure(att: Attempt, exc: BaseException) -> None:
    if isinstance(exc, PermFailure):
        att.outcome, att.error = "permanent", str(exc)
    elif isinstance(exc, _RetryPlain):
        att.outcome, att.error, att.retry_plain = "temporary", str(exc), True
    elif isinstance(exc, TempFailure | SmtpProtocolError | StepTimeout):
        att.outcome, att.error = "temporary", str(exc)
    else:  # OSError, ssl.SSLError included
        att.outcome, att.error = "temporary", f"lost connection: {_describe(exc)}"


class _StaleSession(Exception):
    """A kept session turned out closed before its first reply: nothing was delivered."""


async def _open_session(client: SmtpClient, att: Attempt, target: Target,
                        definition: DeliveryDefinition, ctx: ssl.SSLContext | None, helo: str,
                        greeting_timeout: float, trust: TrustStore | None) -> None:
    """Greeting, EHLO, and STARTTLS with the certificate judged when the definition asks."""
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
    if ctx is None:
        return
    if "STARTTLS" not in client.extensions:
        if enforced or testing:
            att.policy_failure = att.policy_failure or "starttls-not-supported"
            att.policy_detail = att.policy_detail or "the server does not offer STARTTLS"
        if enforced:
            raise TempFailure("TLS required but the server does not offer STARTTLS")
        return
    reply = await client.command("STARTTLS", "after STARTTLS")
    if reply.code != 220:
        if enforced:
            raise TempFailure(f"TLS required but STARTTLS was refused: {reply.transcript}")
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
        if problems and published is not None and published.sts_mode:
            att.policy_failure = att.policy_failure or result_type(problems)
            att.policy_detail = att.policy_detail or "; ".join(problems)
        if problems and strict:
            raise TempFailure("TLS required but the certificate is not accepted: "
                              + "; ".join(problems))
        att.certificate_verified = not problems
    reply = await client.ehlo(helo, helo_fallback=True)
    if reply.code != 250:
        raise TempFailure(f"HELO over TLS refused: {reply.transcript}")


async def _transaction(client: SmtpClient, att: Attempt, mail_from: str, recipients: list[str],
                       body: bytes | Path, reused: bool = False) -> None:
    """MAIL FROM, RCPT TO, DATA and the message; pipelined (RFC 2920) when offered. With
    ``reused``, a session found dead at its first reply raises ``_StaleSession``."""
    try:
        mail = client.mail_command(mail_from, recipients)
    except NeedsSmtpUtf8 as exc:
        # Postfix bounces such mail too (5.6.7): no host of this kind can ever take it.
        raise PermFailure(f"SMTPUTF8 is required: {exc}") from None
    rcpts = [f"RCPT TO:<{rcpt}>" for rcpt in recipients]
    pipelining = "PIPELINING" in client.extensions
    try:
        if pipelining:
            # Three round trips become one; DATA's reply tells whether to send the message.
            replies = await client.pipeline([mail, *rcpts, "DATA"], "after MAIL, RCPT and DATA")
        else:
            replies = [await client.command(mail, "after MAIL FROM")]
    except (SmtpProtocolError, OSError) as exc:
        if reused and (client.reader.at_eof() or isinstance(exc, OSError)):
            raise _StaleSession from None
        raise
    att.reply = replies[0].transcript
    if replies[0].code != 250:
        if pipelining and replies[-1].code == 354:
            await client.send_message(b"")  # a server that took DATA anyway: end it empty
        _fail(replies[0].code, f"MAIL FROM refused: {replies[0].transcript}")
    accepted = []
    for i, (rcpt, line) in enumerate(zip(recipients, rcpts, strict=True)):
        reply = replies[1 + i] if pipelining else await client.command(line, "after RCPT TO")
        att.rcpt_replies[rcpt] = reply.transcript
        if reply.code in (250, 251):
            accepted.append(rcpt)
    data = replies[-1] if pipelining else None
    if not accepted:
        if data is not None and data.code == 354:
            await client.send_message(b"")  # RFC 2920 §3.1: end the data that has no recipient
        codes = {int(t[:3]) // 100 for t in att.rcpt_replies.values()}
        att.outcome = "permanent" if codes == {5} else "temporary"
        att.reply = "every recipient refused"
        return
    if data is None:
        data = await client.command("DATA", "after DATA")
    if data.code != 354:
        _fail(data.code, f"DATA refused: {data.transcript}")
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
