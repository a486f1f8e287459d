"""A tiny HTTPS server for the lab's MTA-STS policies (``mta-sts.<domain>`` on loopback).

It answers ``GET /.well-known/mta-sts.txt`` by the Host header from a table of pages, each with
its own status, media type, body and headers, so tests can serve good policies as well as
redirects, wrong media types and oversized bodies. A ``POST`` to one of ``report_hosts`` (a
TLS-RPT ``rua=https:`` endpoint) is kept in ``posts`` and answered 200. Anything else gets 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from dataclasses import dataclass, field

POLICY_PATH = "/.well-known/mta-sts.txt"

MAX_POST = 1 << 20

_REASONS = {200: "OK", 301: "Moved Permanently", 404: "Not Found", 500: "Internal Server Error"}


@dataclass(frozen=True, slots=True)
class Post:
    host: str
    path: str
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes
    status: int = 200
    content_type: str = "text/plain"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)


class PolicyServer:
    """Serves ``pages`` (by host name) over HTTPS on ``address``:``port`` (0: a free port)."""

    def __init__(self, address: str, port: int, context: ssl.SSLContext,
                 pages: dict[str, Page], report_hosts: frozenset[str] = frozenset()) -> None:
        self.address, self.port, self.context, self.pages = address, port, context, pages
        self.report_hosts = report_hosts
        self.requests: deque[str] = deque(maxlen=10_000)  # host names asked for, for tests
        self.posts: deque[Post] = deque(maxlen=1_000)
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._serve, self.address, self.port, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = (await reader.readline()).decode("latin-1").split()
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                host = headers.get("host", "").lower()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if 0 < length <= MAX_POST else b""
            self.requests.append(host)
            page = self.pages.get(host)
            if len(request) >= 2 and request[0] == "POST" and host in self.report_hosts:
                self.posts.append(Post(host, request[1], headers.get("content-type", ""), body))
                page = Page(b"thanks\n")
            elif len(request) < 2 or request[0] != "GET" or request[1] != POLICY_PATH or not page:
                page = Page(b"not found\n", 404)
            head = [f"HTTP/1.1 {page.status} {_REASONS.get(page.status, 'Status')}",
                    f"Content-Type: {page.content_type}",
                    f"Content-Length: {len(page.body)}", "Connection: close",
                    *(f"{k}: {v}" for k, v in page.headers)]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + page.body)
            await writer.drain()
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            pass  # a client that went away or never sent a request: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
