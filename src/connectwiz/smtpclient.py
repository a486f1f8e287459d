"""The one SMTP client of connectwiz: the probe (``validate``) and the relay's delivery use it.

aiosmtplib is not used: the probe needs a handshake with CERT_NONE followed by its own
certificate judgement, the raw greeting and STARTTLS replies (421/554/454 are findings, not
exceptions) and one deadline per step; the relay needs the same conversation so that what
``validate`` predicts is what delivery does. Plain streams with ``StreamWriter.start_tls`` give
that directly.

Guarantees both callers rely on:
- every reply is bounded (line length, number of lines) and every step has a deadline;
- STARTTLS discards whatever the server sent after its 220 and before the handshake
  (CVE-2011-0411, RFC 3207 §4.2): injected plaintext is never read as a reply over TLS;
- a command that is not ASCII is only sent after MAIL FROM announced SMTPUTF8 (RFC 6531),
  otherwise ``NeedsSmtpUtf8`` names the problem before anything is written;
- DATA is sent RFC 5321-correct whatever the body: CRLF line ends, dot-stuffing, and lines
  longer than 998 octets broken by inserting CRLF SPACE (as Postfix's
  ``smtp_line_length_limit``), streamed from bytes, a file or an iterable of chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_REPLY_LINES = 200  # a hostile server cannot make us read forever
_LINE_LIMIT = 4096  # longest reply line read (RFC 5321 §4.5.3.1.5 allows 512)
DATA_LINE_LIMIT = 998  # octets per body line, without CRLF (RFC 5321 §4.5.3.1.6)
_CHUNK = 64 * 1024


class SmtpProtocolError(Exception):
    """The server said something that is not SMTP, or closed the connection."""


class StepTimeout(Exception):
    """One step (connect, a reply, the handshake) took longer than its deadline."""

    def __init__(self, step: str, seconds: float, message: str | None = None) -> None:
        super().__init__(message or f"timed out after {seconds:g} s {step}")
        self.step = step
        self.seconds = seconds


class NeedsSmtpUtf8(Exception):
    """An address is not ASCII and the server does not offer SMTPUTF8 (RFC 6531)."""


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    lines: tuple[str, ...]  # text after the code, one per line

    @property
    def message(self) -> str:
        return " ".join(line for line in self.lines if line)

    def __str__(self) -> str:
        return f"{self.code} {self.message}".strip()

    @property
    def transcript(self) -> str:
        """``CODE line / line``: every line kept apart, as the relay's log shows replies."""
        return f"{self.code} " + " / ".join(self.lines)

    @property
    def keywords(self) -> set[str]:
        """EHLO extension keywords, upper case (the first line is the greeting)."""
        return {line.split()[0].upper() for line in self.lines[1:] if line.split()}


class SmtpClient:
    """One SMTP connection; every read, write and the handshake are bounded by ``timeout``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.extensions: set[str] = set()
        self.smtputf8 = False  # this transaction announced SMTPUTF8: commands may be UTF-8
        self.discarded = 0  # bytes the server sent between its STARTTLS 220 and the handshake

    @classmethod
    async def connect(cls, address: str, port: int, timeout: float) -> SmtpClient:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(address, port, limit=_LINE_LIMIT)
        except TimeoutError:
            raise StepTimeout("connecting", timeout) from None
        return cls(reader, writer, timeout)

    @property
    def helo_name(self) -> str:
        """Our own address as an address literal: valid EHLO syntax without a DNS lookup."""
        local = self.writer.get_extra_info("sockname")[0]
        return f"[IPv6:{local}]" if ipaddress.ip_address(local).version == 6 else f"[{local}]"

    async def greeting(self, timeout: float) -> Reply:
        """The server's greeting, waited for ``timeout`` s: servers behind postscreen or a
        tarpit greet late on purpose (RFC 5321 §4.5.3.2.1 suggests 5 minutes)."""
        try:
            return await self.read_reply("waiting for the greeting", timeout)
        except StepTimeout:
            raise StepTimeout("waiting for the greeting", timeout,
                              f"greeting not received within {timeout:g} s") from None

    async def read_reply(self, step: str, timeout: float | None = None) -> Reply:
        limit = self.timeout if timeout is None else timeout
        lines: list[str] = []
        try:
            async with asyncio.timeout(limit):
                for _ in range(MAX_REPLY_LINES):
                    raw = await self.reader.readline()
                    if not raw:
                        raise SmtpProtocolError(f"connection closed by the server {step}")
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    code = line[:3]
                    if len(code) < 3 or not code.isdigit() or line[3:4] not in ("", " ", "-"):
                        raise SmtpProtocolError(f"not an SMTP reply {step}: {line[:80]!r}")
                    lines.append(line[4:])
                    if len(line) == 3 or line[3] == " ":
                        return Reply(int(code), tuple(lines))
        except TimeoutError:
            raise StepTimeout(step, limit) from None
        except (ValueError, asyncio.LimitOverrunError):  # a line longer than the limit
            raise SmtpProtocolError(f"reply line too long {step}") from None
        raise SmtpProtocolError(f"reply of more than {MAX_REPLY_LINES} lines {step}")

    async def command(self, line: str, step: str) -> Reply:
        self.writer.write(self._encode(line) + b"\r\n")
        await self._drain(step)
        return await self.read_reply(step)

    def _encode(self, line: str) -> bytes:
        if line.isascii():
            return line.encode("ascii")
        if not self.smtputf8:
            raise NeedsSmtpUtf8(
                f"{line.split(':', 1)[-1].strip()} is not ASCII and the server does not "
                "offer SMTPUTF8")
        return line.encode("utf-8")

    async def _drain(self, step: str) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
        except TimeoutError:
            raise StepTimeout(step, self.timeout) from None

    async def ehlo(self, name: str, *, helo_fallback: bool = False) -> Reply:
        """EHLO (then HELO if asked and EHLO is refused); records the extensions offered."""
        reply = await self.command(f"EHLO {name}", "after EHLO")
        if reply.code == 250:
            self.extensions = reply.keywords
        elif helo_fallback:
            reply = await self.command(f"HELO {name}", "after HELO")
            self.extensions = set()
        return reply

    async def mail(self, sender: str, recipients: Iterable[str] = ()) -> Reply:
        """MAIL FROM (see ``mail_command``) and its reply."""
        return await self.command(self.mail_command(sender, recipients), "after MAIL FROM")

    def mail_command(self, sender: str, recipients: Iterable[str] = ()) -> str:
        """The MAIL FROM line, announcing SMTPUTF8 when an address needs it and the server
        offers it (recipients' lines may then be UTF-8).

        Raises ``NeedsSmtpUtf8`` when an address needs it and the server does not offer it.
        """
        recipients = list(recipients)
        needed = not sender.isascii() or any(not r.isascii() for r in recipients)
        self.smtputf8 = needed and "SMTPUTF8" in self.extensions
        if needed and not self.smtputf8:
            name = next(a for a in (sender, *recipients) if not a.isascii())
            raise NeedsSmtpUtf8(f"{name} is not ASCII and the server does not offer SMTPUTF8")
        suffix = " SMTPUTF8" if self.smtputf8 else ""
        return f"MAIL FROM:<{sender}>{suffix}"

    async def pipeline(self, lines: list[str], step: str) -> list[Reply]:
        """Send ``lines`` in one write and read one reply per line, in order (RFC 2920
        PIPELINING: only when the server offers it, and DATA only as the last line)."""
        self.writer.write(b"".join(self._encode(line) + b"\r\n" for line in lines))
        await self._drain(step)
        return [await self.read_reply(step) for _ in lines]

    async def starttls(
        self, context: ssl.SSLContext, host: str, *, sni: bool = True
    ) -> ssl.SSLObject:
        """TLS handshake on this connection (after a 220 to STARTTLS); returns the SSL object.

        ``host`` is the MX host (or route) name; it is sent as SNI unless it is an IP address
        or ``sni`` is False (how Postfix connects by default).

        Anything the server sent after its 220 is plaintext a man in the middle may have
        injected (CVE-2011-0411): it is thrown away, never read as a reply over TLS.
        """
        # StreamReader has no public way to drop its buffer; nothing is awaited between this
        # and start_tls pausing the transport, so no plaintext can slip in after it.
        buffered = self.reader._buffer
        self.discarded += len(buffered)
        buffered.clear()
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.start_tls(
                    context, server_hostname=server_name(host) if sni else None,
                    ssl_handshake_timeout=self.timeout,
                )
        except TimeoutError:
            raise StepTimeout("in the TLS handshake", self.timeout) from None
        ssl_object = self.writer.get_extra_info("ssl_object")
        if ssl_object is None:
            raise SmtpProtocolError("TLS handshake did not complete")
        self.extensions = set()  # RFC 3207 §4.2: forget what was learnt before TLS
        return ssl_object

    async def send_message(self, body: bytes | Path | Iterable[bytes]) -> Reply:
        """The message after a 354 to DATA, and the reply to its final dot."""
        chunks: Iterable[bytes]
        if isinstance(body, bytes):
            chunks = (body,)
        elif isinstance(body, Path):
            chunks = _file_chunks(body)
        else:
            chunks = body
        for piece in encode_data(chunks):
            self.writer.write(piece)
            await self._drain("sending the message")
        self.writer.write(b".\r\n")
        await self._drain("sending the message")
        return await self.read_reply("after the message")

    def tls(self) -> tuple[str | None, str | None]:
        """Negotiated TLS version and cipher; (None, None) in plaintext."""
        obj = self.writer.get_extra_info("ssl_object")
        if obj is None:
            return None, None
        cipher = obj.cipher()
        return obj.version(), cipher[0] if cipher else None

    def abort(self) -> None:
        """Drop the connection at once (on cancellation: no goodbye, no waiting)."""
        self.writer.transport.abort()

    async def close(self) -> None:
        """QUIT if the connection still works, then close without waiting on a slow peer."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(min(self.timeout, 2.0)):
                if not self.writer.is_closing():
                    self.writer.write(b"QUIT\r\n")
                    await self.writer.drain()
                    await self.reader.readline()
        self.writer.close()
        try:
            async with asyncio.timeout(min(self.timeout, 2.0)):
                await self.writer.wait_closed()
        except (TimeoutError, OSError, ssl.SSLError):
            self.writer.transport.abort()


def server_name(host: str) -> str | None:
    """SNI carries host names only, never IP addresses (RFC 6066 §3)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    return None


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def encode_data(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The message as sent after DATA, one output block per input chunk (without the final dot).

    Lines end in CRLF (a bare LF counts as a line end), a leading dot is doubled, and a line
    longer than 998 octets is broken by inserting CRLF SPACE, as Postfix does: the text is
    kept and MIME survives. Memory stays bounded by the chunk size whatever the line lengths.
    """
    tail = b""
    for chunk in chunks:
        if not chunk:
            continue
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        out = [_wire_line(line.removesuffix(b"\r")) for line in lines]
        # An unfinished very long line: send its full pieces now (keep one byte for a CR
        # whose LF is in the next chunk).
        if len(tail) > DATA_LINE_LIMIT + 1:
            head, tail = _break(_stuff(tail))
            out.append(head)
        if out:
            yield b"".join(out)
    if tail:
        yield _wire_line(tail)


def _stuff(line: bytes) -> bytes:
    return b"." + line if line.startswith(b".") else line


def _break(line: bytes) -> tuple[bytes, bytes]:
    """Full 998-octet pieces of ``line`` (each with CRLF) and the rest, which starts a
    continuation line (SPACE first, so it never needs dot-stuffing)."""
    pieces = []
    while len(line) > DATA_LINE_LIMIT + 1:
        pieces.append(line[:DATA_LINE_LIMIT] + b"\r\n")
        line = b" " + line[DATA_LINE_LIMIT:]
    return b"".join(pieces), line


def _wire_line(line: bytes) -> bytes:
    head, rest = _break(_stuff(line))
    if len(rest) > DATA_LINE_LIMIT:  # the one byte _break keeps for a possible CR
        head += rest[:DATA_LINE_LIMIT] + b"\r\n"
        rest = b" " + rest[DATA_LINE_LIMIT:]
    return head + rest + b"\r\n"
