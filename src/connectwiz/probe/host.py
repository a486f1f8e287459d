"""Probe one SMTP server: greeting, EHLO, STARTTLS, one TLS handshake, EHLO, (MAIL/RCPT/RSET), QUIT.

The first handshake accepts any certificate (CERT_NONE) and requires TLS 1.2+ with the ciphers
of the default SSL Mode (Strong: Postfix's "high"), so one connection
gives both the certificate details and the verdict (``certs.judge_chain``, the judgement the
relay enforces). Only when that handshake fails is a second connection made with a legacy
context, to name the old TLS version the server offers. Alongside the first connection, a
bare handshake without SNI shows whether a client that sends none (Postfix by default) gets
another certificate. Nothing here ever sends DATA.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from connectwiz.policy.model import SslMode
from connectwiz.policy.sslmode import LEVELS
from connectwiz.probe.certs import CertificateInfo, TrustStore, judge_chain
from connectwiz.probe.results import HostResult, RcptReply, Status
from connectwiz.probe.tls import MODERN_VERSIONS, client_context, peer_chain
from connectwiz.smtpclient import (
    NeedsSmtpUtf8,
    SmtpClient,
    SmtpProtocolError,
    StepTimeout,
    server_name,
)

# Overall cap per host: the greeting wait plus this many per-step timeouts. Two connections of
# a few steps each fit, while a server that answers every step just inside the timeout cannot
# hold a batch for long.
HOST_CAP_FACTOR = 3
_VERSION_NAMES = {"TLSv1": "TLSv1.0"}  # what ssl calls TLS 1.0, spelt like the others


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    timeout: float
    trust: TrustStore
    greeting_timeout: float = 30.0
    email: str | None = None
    mail_from: str = ""  # the null reverse-path: no bounce can ever be generated


class _Finding(Exception):
    """Ends the conversation with a verdict (a refusal, no STARTTLS, ...)."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class _Session:
    starttls: bool = False
    tls_version: str | None = None
    cipher: str | None = None
    certificate: CertificateInfo | None = None
    rcpt: RcptReply | None = None
    chain: tuple[bytes, ...] = ()
    problems: tuple[str, ...] = ()
    # The chain presented to a client that sends no SNI (None: same as with SNI, or unknown).
    without_sni: asyncio.Task[list[x509.Certificate] | None] | None = None


async def probe_host(
    host: str,
    addresses: tuple[str, ...],
    port: int,
    preference: int | None,
    settings: ProbeSettings,
    lookup_error: str | None = None,
) -> HostResult:
    """Probe ``host`` on the first of ``addresses`` that accepts a connection
    (``lookup_error``: why it has none, when its address lookup failed)."""
    started = time.monotonic()
    session = _Session()
    address: str | None = addresses[0] if addresses else None
    cap = settings.greeting_timeout + settings.timeout * HOST_CAP_FACTOR
    warnings: tuple[str, ...] = ()
    try:
        if not addresses:
            raise _Finding(Status.ERROR, lookup_error or _no_address(host))
        if server_name(host) is not None:
            # The relay sends SNI, Postfix by default none: learn what a client without it
            # gets, on a second connection made alongside (a slow greeting is waited once).
            session.without_sni = asyncio.ensure_future(
                _chain_without_sni(addresses[0], port, settings))
        async with asyncio.timeout(cap):
            client, address = await _connect_any(addresses, port, settings.timeout)
            status, reason = await _conversation(client, host, session, settings)
            if status is None:  # no TLS 1.2+: learn what the server does offer
                status, reason = await _legacy_probe(address, port, host, session, settings, reason)
        warnings = await _sni_warnings(session, host, settings)
    except _Finding as finding:
        status, reason = finding.status, finding.reason
    except StepTimeout as exc:
        status, reason = Status.ERROR, str(exc)
    except TimeoutError:
        status, reason = Status.ERROR, f"timed out: no verdict within {cap:g} s overall"
    except SmtpProtocolError as exc:
        status, reason = Status.ERROR, str(exc)
    except OSError as exc:  # includes ssl.SSLError after the handshake
        status, reason = Status.ERROR, f"connection failed: {_os_reason(exc)}"
    finally:
        if session.without_sni is not None and not session.without_sni.done():
            session.without_sni.cancel()
    return HostResult(
        host=host, address=address, port=port, preference=preference,
        status=status, reason=reason, starttls=session.starttls,
        tls_version=session.tls_version, cipher=session.cipher,
        certificate=session.certificate, rcpt=session.rcpt,
        elapsed_ms=round((time.monotonic() - started) * 1000), chain=session.chain,
        warnings=warnings,
    )


def _no_address(host: str) -> str:
    if server_name(host) is None:  # an MX record naming an IP address
        return (f"the MX record names an IP address ({host}), not a host name: RFC 5321 §5.1 "
                "forbids that, and mail servers (the relay too) do not deliver to it")
    return f"no address found for {host}"


async def _connect_any(
    addresses: tuple[str, ...], port: int, timeout: float
) -> tuple[SmtpClient, str]:
    failures = []
    for address in addresses:
        try:
            return await SmtpClient.connect(address, port, timeout), address
        except OSError as exc:
            failures.append(f"{_join(address, port)}: {_os_reason(exc)}")
        except StepTimeout as exc:
            failures.append(f"{_join(address, port)}: {exc}")
    raise _Finding(Status.ERROR, "cannot connect: " + "; ".join(failures))


async def _open_session(client: SmtpClient, session: _Session, settings: ProbeSettings) -> None:
    """Greeting, EHLO and the STARTTLS command: everything before the handshake."""
    greeting = await client.greeting(settings.greeting_timeout)
    if greeting.code != 220:
        raise _Finding(Status.ERROR, f"server refused the session: {greeting}")
    ehlo = await client.ehlo(client.helo_name)
    if ehlo.code != 250:
        raise _Finding(Status.UNSUPPORTED, f"EHLO rejected ({ehlo}): no STARTTLS possible")
    if "STARTTLS" not in client.extensions:
        raise _Finding(Status.UNSUPPORTED, "STARTTLS not offered")
    session.starttls = True
    reply = await client.command("STARTTLS", "after STARTTLS")
    if reply.code != 220:
        # 454: advertised but not available now; no TLS is possible, say exactly what was said.
        raise _Finding(Status.UNSUPPORTED, f"STARTTLS offered but refused: {reply}")


async def _conversation(
    client: SmtpClient, host: str, session: _Session, settings: ProbeSettings
) -> tuple[Status | None, str]:
    """The main attempt. Returns (None, handshake error) when TLS 1.2+ could not be set up."""
    async with _closing(client):
        await _open_session(client, session, settings)
        try:
            ssl_object = await client.starttls(
                _probe_context(legacy=False), host
            )
        except (ssl.SSLError, ConnectionError) as exc:
            client.abort()  # nothing sensible can follow a failed handshake on this connection
            return None, _ssl_reason(exc)
        _record_tls(session, ssl_object, host, settings)
        ehlo = await client.ehlo(client.helo_name)  # what is offered over TLS counts
        if ehlo.code != 250:
            raise _Finding(Status.ERROR, f"EHLO over TLS rejected: {ehlo}")
        if settings.email:
            session.rcpt = await _rcpt_check(client, settings)
    return classify(session.tls_version, session.problems, host)


@contextlib.asynccontextmanager
async def _closing(client: SmtpClient) -> AsyncIterator[SmtpClient]:
    """QUIT and close on the way out, while the server is responsive.

    On a timeout, a protocol error or cancellation drop the connection at once instead:
    a tarpit would make a polite QUIT wait another timeout.
    """
    try:
        yield client
    except _Finding:
        await client.close()
        raise
    except BaseException:
        client.abort()
        raise
    await client.close()


def _record_tls(
    session: _Session, ssl_object: ssl.SSLObject, host: str, settings: ProbeSettings
) -> None:
    session.tls_version = _VERSION_NAMES.get(ssl_object.version() or "", ssl_object.version())
    cipher = ssl_object.cipher()
    session.cipher = cipher[0] if cipher else None
    chain = peer_chain(ssl_object)
    session.chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in chain)
    info, problems = judge_chain(chain, host, settings.trust)
    session.certificate, session.problems = info, tuple(problems)


def classify(
    tls_version: str | None, problems: Sequence[str], host: str
) -> tuple[Status, str]:
    """The verdict for a completed handshake: strict only if TLS 1.2+ and the certificate
    judgement (``judge_chain``, the one the relay enforces) found no problem."""
    version = tls_version or "unknown TLS version"
    if tls_version not in MODERN_VERSIONS:
        return Status.UNSUPPORTED, f"server negotiated {version}; TLS 1.2 or newer is required"
    if problems:
        return Status.RELAXED, f"{version}, " + "; ".join(problems)
    return Status.STRICT, f"{version}, certificate trusted and valid for {host}"


async def _rcpt_check(client: SmtpClient, settings: ProbeSettings) -> RcptReply:
    """MAIL FROM and RCPT TO only, then RSET: the reply says whether the address is accepted.

    An address that is not ASCII is only sent with SMTPUTF8; without it the reply has code 0
    (nothing was sent) and says why.
    """
    assert settings.email is not None
    try:
        mail = await client.mail(settings.mail_from, [settings.email])
    except NeedsSmtpUtf8 as exc:
        return RcptReply(0, f"not checked: {exc}")
    if mail.code != 250:
        reply = RcptReply(mail.code, f"MAIL FROM refused: {mail.message}")
    else:
        rcpt = await client.command(f"RCPT TO:<{settings.email}>", "after RCPT TO")
        reply = RcptReply(rcpt.code, rcpt.message)
    await client.command("RSET", "after RSET")
    return reply


async def _legacy_probe(
    address: str, port: int, host: str, session: _Session, settings: ProbeSettings,
    modern_error: str,
) -> tuple[Status, str]:
    """Second connection, any TLS version: name what an old server offers."""
    client = await SmtpClient.connect(address, port, settings.timeout)
    async with _closing(client):
        await _open_session(client, session, settings)
        try:
            ssl_object = await client.starttls(
                _probe_context(legacy=True), host
            )
        except (ssl.SSLError, ConnectionError):
            client.abort()
            return Status.UNSUPPORTED, f"TLS handshake failed: {modern_error}"
        _record_tls(session, ssl_object, host, settings)
    version = session.tls_version or "an unknown TLS version"
    if version in MODERN_VERSIONS:  # the first failure was about something else
        return Status.UNSUPPORTED, f"TLS handshake failed: {modern_error}"
    return Status.UNSUPPORTED, f"server only offers {version}; TLS 1.2 or newer is required"


@functools.lru_cache(maxsize=2)
def _probe_context(legacy: bool) -> ssl.SSLContext:
    """Shared by every probe: building a context costs more than a handshake's client side.
    The main one offers the ciphers of the default SSL Mode (Strong), as the relay does."""
    ctx = client_context(verify=False, legacy=legacy)
    if not legacy:
        ctx.set_ciphers(LEVELS[SslMode.STRONG].ciphers)
    return ctx


async def _chain_without_sni(
    address: str, port: int, settings: ProbeSettings
) -> list[x509.Certificate] | None:
    """The chain presented to a client that sends no SNI; None when that cannot be learnt
    within one greeting wait and one step (best effort: it never changes the verdict)."""
    client: SmtpClient | None = None
    try:
        async with asyncio.timeout(settings.greeting_timeout + settings.timeout):
            client = await SmtpClient.connect(address, port, settings.timeout)
            if (await client.greeting(settings.greeting_timeout)).code != 220:
                return None
            await client.ehlo(client.helo_name)
            if "STARTTLS" not in client.extensions:
                return None
            if (await client.command("STARTTLS", "after STARTTLS")).code != 220:
                return None
            ssl_object = await client.starttls(_probe_context(legacy=False), "", sni=False)
            return peer_chain(ssl_object)
    except (TimeoutError, StepTimeout, SmtpProtocolError, OSError):
        return None
    finally:
        if client is not None:
            client.abort()  # only the handshake was wanted


async def _sni_warnings(session: _Session, host: str, settings: ProbeSettings) -> tuple[str, ...]:
    if session.without_sni is None or not session.chain:
        return ()
    chain = await session.without_sni
    if not chain or chain[0].public_bytes(serialization.Encoding.DER) == session.chain[0]:
        return ()
    _, problems = judge_chain(chain, host, settings.trust)
    verdict = "; ".join(problems) if problems else "also acceptable"
    return (f"{host} presents another certificate to clients that send no SNI "
            f"(Postfix unless smtp_tls_servername is set): {verdict}",)


def _ssl_reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)
    return reason.replace("_", " ").lower() if reason else _os_reason(exc)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc) or type(exc).__name__


def _join(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
