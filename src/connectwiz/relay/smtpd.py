"""The SMTP server protocol: aiosmtpd, with DATA streamed and per-client limits.

aiosmtpd keeps DATA in memory as one object per line, refuses lines over 998 characters
and has no per-client limits. Here DATA is read in large chunks and handed on as it
arrives (``relay.data``), and each session is bounded the way Postfix bounds its smtpd:
concurrent sessions per client IP, junk commands, an overall deadline.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, TLSSetupException, syntax

from connectwiz.relay.data import DotDecoder, HeadCollector

if TYPE_CHECKING:
    from connectwiz.relay.receipt import ReceiptHandler

CHUNK = 256 * 1024  # read at most this much at a time
FLUSH = 256 * 1024  # hand content on once this much has collected
HEADER_LIMIT = 102_400  # bytes of header read for policy (Postfix header_size_limit)
_SHUTTING_DOWN = b"421 4.3.2 Service shutting down, try again later"
# <local@domain> with a dot-atom on both sides: what nearly every client sends.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(.*)",
                            re.DOTALL)


@dataclass(slots=True)
class DataResult:
    size: int  # message bytes after unstuffing
    too_big: bool
    bare_newline: bool
    head: bytes  # the header, at most HEADER_LIMIT bytes
    tail: bytes  # the last part of the message, not yet handed to the sink


def routing_trick(address: str) -> str | None:
    """Why an address is refused as a relaying trick (RFC 5321 source routes, the old
    ``user%host@relay`` and ``host!user`` forms, quoted local parts hiding an ``@``)."""
    text = address.strip()
    if text.startswith("<"):
        text = text[1:]
    if text.startswith("@"):
        return "source routes are not accepted"
    local = text.split(">", 1)[0].rpartition("@")[0]
    if any(c in local for c in "%!@"):
        return "'%', '!' and '@' in the local part are not accepted"
    return None


def _unread(reader: asyncio.StreamReader, data: bytes) -> None:
    """Give back bytes read past the end of DATA (a pipelining client's next commands).
    StreamReader has no public unread; aiosmtpd itself reaches into ``_buffer``."""
    reader._buffer[0:0] = data  # type: ignore[attr-defined]


class _TlsState:
    """What aiosmtpd reads from its ``_tls_protocol`` once TLS is up: that TLS is on (no
    second STARTTLS offered) and ``_extra``, which becomes ``session.ssl``."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._extra = {key: transport.get_extra_info(key)
                       for key in ("sslcontext", "ssl_object", "peercert", "cipher",
                                   "compression")}


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP with source-route refusal, streamed DATA and per-client limits."""

    def __init__(self, handler: ReceiptHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._relay_handler = handler
        self._junk = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._shut = False

    # -- limits ---------------------------------------------------------------------------------

    async def _handle_client(self) -> None:
        handler = self._relay_handler
        settings = handler.ctx.settings
        refusal = handler.admit(self)
        if refusal:
            await self.push(refusal)
            if self.transport is not None:
                self.transport.close()
            return
        self._deadline = self.loop.call_later(settings.session_deadline, self._expire)
        try:
            await super()._handle_client()
        finally:
            self._deadline.cancel()
            handler.release(self)

    def _expire(self) -> None:
        """The overall session deadline: however busy the client keeps the session, it
        ends (a NOOP dripped at a byte a second would otherwise live forever)."""
        self._goodbye(b"421 4.4.2 Error: session time limit exceeded")

    def shut(self) -> None:
        """The relay is going away (its parent died): a session with no transaction open
        gets 421 now; one in a transaction may finish it (its message is queued durably
        before the 250, as always, and the next relay delivers it) and gets 421 after."""
        self._shut = True
        if self.envelope is None or self.envelope.mail_from is None:
            self._goodbye(_SHUTTING_DOWN)

    def _goodbye(self, reply: bytes) -> None:
        """Say ``reply`` and hang up, whatever the session was doing."""
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(reply + b"\r\n")
            self.transport.close()

    async def _junk_command(self) -> bool:
        """NOOP, RSET, VRFY, HELP, EXPN: count them; past the limit the client is dropped
        (Postfix's smtpd_junk_command_limit). True when the session is over."""
        self._junk += 1
        if self._junk <= self._relay_handler.ctx.settings.junk_command_limit:
            return False
        await self.push("421 4.7.0 Error: too many junk commands, goodbye")
        if self.transport is not None:
            self.transport.close()
        return True

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_RSET(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_VRFY(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_HELP(arg)

    async def smtp_EXPN(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_EXPN(arg)

    # -- commands ---------------------------------------------------------------------------

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        """aiosmtpd's STARTTLS, but with the event loop's own TLS (``loop.start_tls``:
        native code under uvloop) instead of asyncio's SSLProtocol, whose record layer in
        Python was a fifth of the relay's time under load."""
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        assert self.transport is not None and self.tls_context is not None
        await self.push("220 Ready to start TLS")
        # Whatever the client sent after STARTTLS is plaintext a man in the middle may have
        # injected (CVE-2011-0411): dropped now, before any TLS data can land in the buffer
        # (start_tls stops plaintext reads before its first await).
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        try:
            transport = await self.loop.start_tls(self.transport, self, self.tls_context,
                                                  server_side=True)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the log line says why (aiosmtpd's says nothing)
            raise TLSSetupException(f"TLS handshake failed: {str(error) or type(error).__name__}"
                                    ) from error
        if transport is None:
            raise TLSSetupException("the connection went away during the TLS handshake")
        # What aiosmtpd's connection_made does after its own handshake, minus clearing the
        # buffer: data sent over TLS may already be in it.
        self._original_transport = self.transport
        self._reader._transport = transport  # type: ignore[attr-defined]
        self._writer._transport = transport  # type: ignore[attr-defined]
        self.transport = transport
        self._tls_protocol = _TlsState(transport)  # type: ignore[assignment]
        self._set_rset_state()
        self.session = self._create_session()  # RFC 3207 §4.2: the session starts afresh
        self.session.peer = transport.get_extra_info("peername")
        self.session.ssl = self._tls_protocol._extra
        self._reset_timeout()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd parses every MAIL and RCPT address with the email package's header parser
        (tens of microseconds, far more on a busy machine); a plain ``<local@domain>`` gives
        the same result from one regular expression. Anything else (quotes, comments, ``<>``,
        address literals, non-ASCII) still goes to aiosmtpd."""
        found = _PLAIN_ADDRESS.fullmatch(arg.lstrip()) if arg else None
        if found is None:
            return super()._getaddr(arg)
        address = found.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, found.group(2).lstrip()

    async def smtp_AUTH(self, arg: str) -> None:
        # No AUTH here (clients are authorised by IP), and EHLO does not offer it.
        await self.push("503 5.5.1 Error: authentication not enabled")

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        # aiosmtpd drops a source route silently; refuse it before it does.
        why = routing_trick(arg.partition(":")[2]) if arg and ":" in arg else None
        if why:
            await self.push(f"553 5.1.7 Sender address refused: {why}")
            return
        await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        why = routing_trick(arg.partition(":")[2]) if arg and ":" in arg else None
        if why:
            await self.push(f"553 5.1.3 Recipient address refused: {why}")
            return
        await super().smtp_RCPT(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reply = await self._relay_handler.receive(self, self.session, self.envelope)
        if reply.startswith("250"):
            self._junk = 0  # a client that delivers mail is not wasting the session
        self._set_post_data_state()
        await self.push(reply)
        if self._shut:
            self._goodbye(_SHUTTING_DOWN)

    async def read_data(self, limit: int, sink: Callable[[bytes], Awaitable[None]]
                        ) -> DataResult:
        """Read DATA up to its end, handing the message to ``sink`` in pieces of about
        FLUSH bytes; the rest comes back as ``tail``. Past ``limit`` bytes, or once
        smuggling is seen, the rest is read and dropped so the session stays in step.
        Raises ConnectionResetError at EOF."""
        decoder = DotDecoder()
        head = HeadCollector(HEADER_LIMIT)
        pending = bytearray()
        too_big = False
        while True:
            chunk = await self._reader.read(CHUNK)
            if not chunk:
                raise ConnectionResetError("connection closed during DATA")
            self._reset_timeout()  # the idle timeout measures silence, not DATA's length
            content, rest = decoder.feed(chunk)
            if not too_big and decoder.size > limit:
                too_big = True
                pending.clear()
            if not too_big and not decoder.bare_newline:
                head.feed(content)
                pending += content
                if len(pending) >= FLUSH:
                    await sink(bytes(pending))
                    pending.clear()
            if rest is not None:
                if rest:
                    _unread(self._reader, rest)
                break
        keep = not too_big and not decoder.bare_newline
        return DataResult(decoder.size, too_big, decoder.bare_newline, bytes(head.data),
                          bytes(pending) if keep else b"")

    def close(self) -> None:
        """Drop the connection (shutdown after the grace period)."""
        if self.transport is not None:
            self.transport.close()
