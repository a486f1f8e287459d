"""Lab SMTP servers, one misbehaviour each, written on asyncio streams so odd profiles
(tarpits, a 421 greeting, STARTTLS answering 454, TLS 1.0 only) are a few lines each.

Every session is recorded (``Recorder.sessions``) and every message accepted with DATA is
kept (``Recorder.messages``), so tests can prove what a client did or did not send.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import re
import ssl
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MAX_LINE = 4096
MAX_MESSAGE = 10 * 1024 * 1024
IDLE_TIMEOUT = 300.0  # drop clients that go quiet, as real servers do

_MAIL = re.compile(r"MAIL FROM:\s*<([^>]*)>", re.IGNORECASE)
_RCPT = re.compile(r"RCPT TO:\s*<([^>]+)>", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SmtpProfile:
    """How one lab server behaves. ``cert`` is applied by the lab when it issues certificates."""

    name: str
    # trusted | selfsigned | expired | wrongname | ownkey | sancritical | sni | rsa
    cert: str = "trusted"
    starttls: str = "offer"  # offer | none | refuse454 | inject
    tls10_only: bool = False
    tls12_ciphers: str = ""  # TLS 1.2 at most, with only these (OpenSSL) ciphers
    greeting: str = "normal"  # normal | multiline | 421 | tarpit
    slow: bool = False  # wait the lab's greeting_delay before greeting
    reject_rcpt: bool = False


PROFILES: dict[str, SmtpProfile] = {p.name: p for p in (
    SmtpProfile("trusted"),
    SmtpProfile("selfsigned", cert="selfsigned"),
    SmtpProfile("expired", cert="expired"),
    SmtpProfile("wrongname", cert="wrongname"),
    SmtpProfile("nostarttls", starttls="none"),
    SmtpProfile("tls10", tls10_only=True),
    SmtpProfile("starttls454", starttls="refuse454"),
    SmtpProfile("greeting421", greeting="421"),
    SmtpProfile("slow", slow=True),
    SmtpProfile("tarpit", greeting="tarpit"),
    SmtpProfile("rejectrcpt", reject_rcpt=True),
    SmtpProfile("multiline", greeting="multiline"),
    SmtpProfile("ownkey", cert="ownkey"),  # trusted, with a key no other lab host shares
)}

# -- Shapes on which validate and delivery used to disagree (issue 11; used with add_sink) --
# The STARTTLS 220 arrives with plaintext a man in the middle appended (CVE-2011-0411):
# replies enough to make a client that reads them over TLS "deliver" to a server that
# actually refuses the recipient.
STARTTLS_INJECTION = ("250 2.0.0 injected", "250 2.0.0 injected", "250 2.0.0 injected",
                      "354 injected", "250 2.0.0 fake: queued")
PROFILES.update({p.name: p for p in (
    SmtpProfile("sancritical", cert="sancritical"),  # lab CA, subjectAltName marked critical
    SmtpProfile("starttlsinject", starttls="inject", reject_rcpt=True),
    # Trusted certificate only for clients that send SNI; without SNI a certificate for
    # another name (a server that picks its certificate by SNI).
    SmtpProfile("sni", cert="sni"),
    # TLS 1.2 with RSA key exchange and CBC only: what SSL Mode "very_strong" refuses.
    SmtpProfile("rsakx", cert="rsa", tls12_ciphers="AES128-SHA:AES256-SHA"),
)})


@dataclass
class LabSession:
    """One client connection as the server saw it (fields are updated while it runs)."""

    id: int
    server: str  # the server's host name
    profile: str
    address: tuple[str, int]  # the server's (ip, port)
    client: tuple[str, int]
    started: dt.datetime
    commands: list[str] = field(default_factory=list)  # command lines in order, as received
    tls: bool = False
    tls_version: str | None = None
    tls_cipher: str | None = None
    tls_error: str | None = None
    data_received: bool = False
    closed: bool = False


@dataclass(frozen=True, slots=True)
class LabMessage:
    """A message a lab server accepted: envelope, bytes as received (dot-unstuffed), TLS used."""

    session_id: int
    server: str
    address: tuple[str, int]
    helo: str | None
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls_version: str | None
    tls_cipher: str | None
    received: dt.datetime


class Recorder:
    """Sessions and messages, readable from any thread; ``wait_for`` blocks until a condition."""

    def __init__(self) -> None:
        self.sessions: list[LabSession] = []
        self.messages: list[LabMessage] = []
        self._cond = threading.Condition()
        self._ids = itertools.count(1)

    def new_session(self, server: str, profile: str, address: tuple[str, int],
                    client: tuple[str, int]) -> LabSession:
        with self._cond:
            s = LabSession(id=next(self._ids), server=server, profile=profile, address=address,
                           client=client, started=dt.datetime.now(dt.UTC))
            self.sessions.append(s)
            self._cond.notify_all()
        return s

    def changed(self, update: Callable[[], object] | None = None) -> None:
        with self._cond:
            if update is not None:
                update()
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate()`` holds (re-checked on every recorded change)."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)


def server_context(cert: Path, key: Path, *, tls10_only: bool = False,
                   tls12_ciphers: str = "") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if tls12_ciphers:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(tls12_ciphers)
    if tls10_only:
        # OpenSSL 3 refuses TLS 1.0 at the default security level; the lab needs the old thing.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
    return ctx


class SMTPServer:
    """One lab server: ``profile`` behaviour, ``hostname`` in banners, listening on address:port."""

    def __init__(self, profile: SmtpProfile, hostname: str, address: str, port: int,
                 context: ssl.SSLContext | None, recorder: Recorder,
                 greeting_delay: float = 1.5, cert_path: Path | None = None) -> None:
        self.profile = profile
        self.cert_path = cert_path  # the certificate it presents (None: shared or none)
        self.hostname = hostname
        self.address = address
        self.port = port
        self.context = context
        self.recorder = recorder
        self.greeting_delay = greeting_delay
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._queued = itertools.count(1)

    async def start(self) -> int:
        """Listen; returns the port (useful when it was 0)."""
        self._server = await asyncio.start_server(
            self._serve, self.address, self.port, limit=MAX_LINE * 4)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername") or ("?", 0)  # None if already reset
        session = self.recorder.new_session(
            server=self.hostname, profile=self.profile.name,
            address=(self.address, self.port), client=(peer[0], peer[1]))
        try:
            await _Conversation(self, session, reader, writer).run()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            self.recorder.changed(lambda: setattr(session, "closed", True))

    def next_queue_id(self) -> str:
        return f"LAB{next(self._queued):06d}"


class _Conversation:
    def __init__(self, server: SMTPServer, session: LabSession, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server, self.session, self.reader, self.writer = server, session, reader, writer
        self.profile = server.profile
        self.helo: str | None = None
        self.mail_from: str | None = None
        self.rcpts: list[str] = []

    async def send(self, *lines: str) -> None:
        self.writer.write("".join(f"{line}\r\n" for line in lines).encode())
        await self.writer.drain()

    async def readline(self) -> bytes:
        try:
            return await asyncio.wait_for(self.reader.readuntil(b"\n"), IDLE_TIMEOUT)
        except asyncio.LimitOverrunError:
            raise ConnectionError("line too long") from None

    async def run(self) -> None:
        host, p = self.server.hostname, self.profile
        if p.greeting == "tarpit":
            while await self.reader.read(MAX_LINE):  # say nothing until the client gives up
                pass
            return
        if p.slow:
            await asyncio.sleep(self.server.greeting_delay)
        if p.greeting == "421":
            await self.send(f"421 4.3.2 {host} Service not available, closing channel")
            return
        if p.greeting == "multiline":
            await self.send(f"220-{host} ESMTP connectwiz-lab", "220-Authorised use only",
                            "220 Ready")
        else:
            await self.send(f"220 {host} ESMTP connectwiz-lab")
        while True:
            raw = await self.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.recorder_append(line)
            verb, _, arg = line.partition(" ")
            handler = getattr(self, f"cmd_{verb.lower()}", None) if verb.isalpha() else None
            if handler is None:
                await self.send("500 5.5.2 Command not recognized")
            elif await handler(arg.strip()) is False:
                return

    def recorder_append(self, line: str) -> None:
        self.server.recorder.changed(lambda: self.session.commands.append(line[:512]))

    def reset(self) -> None:
        self.mail_from, self.rcpts = None, []

    async def cmd_ehlo(self, arg: str) -> None:
        if not arg:
            await self.send("501 5.5.4 EHLO needs a domain")
            return
        self.helo = arg
        self.reset()
        ext = ["PIPELINING", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES"]
        if self.profile.starttls != "none" and not self.session.tls:
            ext.append("STARTTLS")
        lines = [f"250-{self.server.hostname} greets {arg}"]
        lines += [f"250-{e}" for e in ext[:-1]] + [f"250 {ext[-1]}"]
        await self.send(*lines)

    async def cmd_helo(self, arg: str) -> None:
        if not arg:
            await self.send("501 5.5.4 HELO needs a domain")
            return
        self.helo = arg
        self.reset()
        await self.send(f"250 {self.server.hostname}")

    async def cmd_starttls(self, arg: str) -> bool | None:
        if self.profile.starttls == "none":
            await self.send("502 5.5.1 Command not implemented")
            return None
        if self.session.tls:
            await self.send("503 5.5.1 TLS already active")
            return None
        if self.profile.starttls == "refuse454":
            await self.send("454 4.7.0 TLS not available due to temporary reason")
            return None
        if self.helo is None:
            await self.send("503 5.5.1 EHLO first")
            return None
        assert self.server.context is not None
        injected = STARTTLS_INJECTION if self.profile.starttls == "inject" else ()
        await self.send("220 2.0.0 Ready to start TLS", *injected)  # one write: one packet
        try:
            await self.writer.start_tls(self.server.context)
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            error = str(exc) or type(exc).__name__
            self.server.recorder.changed(lambda: setattr(self.session, "tls_error", error))
            return False
        tls = self.writer.get_extra_info("ssl_object")

        def mark() -> None:
            self.session.tls = True
            self.session.tls_version = tls.version()
            self.session.tls_cipher = tls.cipher()[0]

        self.server.recorder.changed(mark)
        self.helo = None  # RFC 3207: forget everything learnt before TLS
        self.reset()
        return None

    async def cmd_mail(self, arg: str) -> None:
        m = _MAIL.match(f"MAIL {arg}")
        if self.helo is None:
            await self.send("503 5.5.1 EHLO first")
        elif self.mail_from is not None:
            await self.send("503 5.5.1 Nested MAIL command")
        elif m is None:
            await self.send("501 5.5.4 Syntax: MAIL FROM:<address>")
        else:
            self.mail_from = m.group(1)
            await self.send("250 2.1.0 Ok")

    async def cmd_rcpt(self, arg: str) -> None:
        m = _RCPT.match(f"RCPT {arg}")
        if self.mail_from is None:
            await self.send("503 5.5.1 MAIL first")
        elif m is None:
            await self.send("501 5.5.4 Syntax: RCPT TO:<address>")
        elif self.profile.reject_rcpt:
            await self.send(f"550 5.1.1 <{m.group(1)}>: Recipient address rejected: "
                            "User unknown")
        else:
            self.rcpts.append(m.group(1))
            await self.send("250 2.1.5 Ok")

    async def cmd_data(self, arg: str) -> None:
        if not self.rcpts:
            await self.send("503 5.5.1 RCPT first")
            return
        await self.send("354 End data with <CR><LF>.<CR><LF>")
        chunks: list[bytes] = []
        size = 0
        while True:
            raw = await self.readline()
            if not raw:
                raise ConnectionError("closed during DATA")
            if raw in (b".\r\n", b".\n"):
                break
            size += len(raw)
            if size <= MAX_MESSAGE:
                chunks.append(raw[1:] if raw.startswith(b".") else raw)
        if size > MAX_MESSAGE:
            self.reset()
            await self.send("552 5.3.4 Message too big")
            return
        assert self.mail_from is not None
        ssl_obj = self.writer.get_extra_info("ssl_object")
        msg = LabMessage(
            session_id=self.session.id, server=self.server.hostname,
            address=(self.server.address, self.server.port), helo=self.helo,
            mail_from=self.mail_from, rcpt_tos=tuple(self.rcpts), data=b"".join(chunks),
            tls_version=ssl_obj.version() if ssl_obj else None,
            tls_cipher=ssl_obj.cipher()[0] if ssl_obj else None,
            received=dt.datetime.now(dt.UTC),
        )

        def store() -> None:
            self.session.data_received = True
            self.server.recorder.messages.append(msg)

        self.server.recorder.changed(store)
        self.reset()
        await self.send(f"250 2.0.0 Ok: queued as {self.server.next_queue_id()}")

    async def cmd_rset(self, arg: str) -> None:
        self.reset()
        await self.send("250 2.0.0 Ok")

    async def cmd_noop(self, arg: str) -> None:
        await self.send("250 2.0.0 Ok")

    async def cmd_vrfy(self, arg: str) -> None:
        await self.send("252 2.1.5 Cannot VRFY user")

    async def cmd_quit(self, arg: str) -> bool:
        with contextlib.suppress(ConnectionError):
            await self.send("221 2.0.0 Bye")
        return False
