"""Open SMTP sessions kept between deliveries, as Postfix's connection cache keeps them.

A session that has just delivered a message is kept, idle, for a short while; the next
message for the same host (address, port and the name its certificate was checked against)
under the same TLS requirements takes it instead of connecting, greeting, EHLO-ing and
handshaking again. The key carries the TLS requirements, so a session is only ever reused
for a delivery that would have accepted its TLS as it was judged when it was opened (an
Enforced Strict delivery only gets a session whose certificate was verified for that name);
the attempt record repeats that session's TLS facts and says it was reused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

from connectwiz.smtpclient import SmtpClient

IDLE_LIMIT = 2.0  # seconds a session waits for its next message (Postfix: 2 s)
AGE_LIMIT = 300.0  # never reuse a session opened longer ago than this (Postfix: 300 s)


@dataclass(slots=True)
class CachedSession:
    client: SmtpClient
    tls_version: str | None
    tls_cipher: str | None
    certificate_verified: bool
    opened: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None

    def usable(self) -> bool:
        """Still open, not too old, and the server has said nothing since its last reply
        (anything unasked for, e.g. a 421 before closing, makes it unusable)."""
        reader = self.client.reader
        return (not self.client.writer.is_closing() and not reader.at_eof()
                and not reader._buffer  # no public accessor for buffered bytes
                and time.monotonic() - self.opened < AGE_LIMIT)


class SessionCache:
    def __init__(self, idle_limit: float = IDLE_LIMIT) -> None:
        self.idle_limit = idle_limit
        self._idle: dict[Hashable, list[CachedSession]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def take(self, key: Hashable) -> CachedSession | None:
        """The most recently used idle session for ``key`` that still works, or None."""
        while sessions := self._idle.get(key):
            session = sessions.pop()  # the newest: the older ones may expire unused
            if not sessions:
                del self._idle[key]
            if session.timer is not None:
                session.timer.cancel()
            if session.usable():
                return session
            self.discard(session)
        return None

    def put(self, key: Hashable, session: CachedSession) -> None:
        """Keep ``session`` (which has just completed a transaction) for the next message."""
        if self.idle_limit <= 0 or not session.usable():
            self.discard(session)
            return
        loop = asyncio.get_running_loop()
        session.timer = loop.call_later(self.idle_limit, self._expire, key, session)
        self._idle.setdefault(key, []).append(session)

    def _expire(self, key: Hashable, session: CachedSession) -> None:
        sessions = self._idle.get(key, [])
        if session in sessions:
            sessions.remove(session)
            if not sessions:
                del self._idle[key]
        self.discard(session)

    def discard(self, session: CachedSession) -> None:
        """Close ``session`` (QUIT) in the background."""
        task = asyncio.ensure_future(session.client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """QUIT every idle session and wait until they are closed."""
        for sessions in self._idle.values():
            for session in sessions:
                if session.timer is not None:
                    session.timer.cancel()
                self.discard(session)
        self._idle.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
