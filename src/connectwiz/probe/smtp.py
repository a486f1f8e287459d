"""The few SMTP commands a probe needs, over asyncio streams.

aiosmtplib is not used here: the probe needs a handshake with CERT_NONE followed by its own
verification, a second handshake with a legacy context on a fresh connection, the raw greeting
and STARTTLS replies (421/554/454 are findings, not exceptions), and one deadline per step.
Plain streams with ``StreamWriter.start_tls`` (Python 3.11+) give that directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from dataclasses import dataclass

_MAX_LINES = 200  # a hostile server cannot make us read forever
_LINE_LIMIT = 4096


class SmtpProtocolError(Exception):
    """The server said something that is not SMTP, or closed the connection."""


class StepTimeout(Exception):
    """One step (connect, a reply, the handshake) took longer than the per-connection timeout."""

    def __init__(self, step: str, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:g} s {step}")


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
    def keywords(self) -> set[str]:
        """EHLO extension keywords, upper case (the first line is the greeting)."""
        return {line.split()[0].upper() for line in self.lines[1:] if line.split()}


class SmtpClient:
    """One SMTP connection; every read and the handshake are bounded by ``timeout``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

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

    async def read_reply(self, step: str) -> Reply:
        lines: list[str] = []
        try:
            async with asyncio.timeout(self.timeout):
                for _ in range(_MAX_LINES):
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
            raise StepTimeout(step, self.timeout) from None
        except (ValueError, asyncio.LimitOverrunError):  # a line longer than the limit
            raise SmtpProtocolError(f"reply line too long {step}") from None
        raise SmtpProtocolError(f"reply of more than {_MAX_LINES} lines {step}")

    async def command(self, line: str, step: str) -> Reply:
        self.writer.write(line.encode("ascii") + b"\r\n")
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
        except TimeoutError:
            raise StepTimeout(step, self.timeout) from None
        return await self.read_reply(step)

    async def starttls(self, context: ssl.SSLContext, server_hostname: str | None) -> ssl.SSLObject:
        """TLS handshake on this connection (after a 220 to STARTTLS); returns the SSL object."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.start_tls(
                    context, server_hostname=server_hostname, ssl_handshake_timeout=self.timeout
                )
        except TimeoutError:
            raise StepTimeout("in the TLS handshake", self.timeout) from None
        ssl_object = self.writer.get_extra_info("ssl_object")
        if ssl_object is None:
            raise SmtpProtocolError("TLS handshake did not complete")
        return ssl_object

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
