"""Portal speed: the pages a recipient loads, and the expiry sweep over a large store.

    .venv/bin/python benchmarks/portal_pages.py [--requests 500] [--concurrency 10] [--held 2000]

A portal on loopback serves a ~20 kB text+HTML message with an attachment from a store of
``--held`` messages. A tiny SMTP sink stands in for the relay (it receives the code).
Measured: the landing page (link check: record read, token hash compared), the message
page (decrypt, MIME parse, nh3 clean, render) and a sweep of the whole store. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
from aiosmtpd.smtp import SMTP

from connectwiz.portal.app import Portal, PortalConfig
from connectwiz.relay.events import EventLog
from connectwiz.relay.held import HeldStore, token_hash
from connectwiz.relay.spool import Spool

READER = "teller@bank.example"


def message() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@corp.example", READER, "Statement"
    text = "Your statement for the quarter. " * 300
    msg.set_content(text)
    msg.add_alternative(f"<html><body><p>{text}</p><table><tr><td>a</td></tr></table>"
                        "</body></html>", subtype="html")
    msg.add_attachment(b"%PDF-1.4 " + secrets.token_bytes(4000), maintype="application",
                       subtype="pdf", filename="statement.pdf")
    return msg.as_bytes(policy=email_policy.SMTP)


def fill(spool: Path, count: int) -> tuple[str, str]:
    store = HeldStore(Spool(spool))
    (spool / "tmp").mkdir(parents=True, exist_ok=True)
    store.create()
    body = message()
    now = datetime.now(UTC)
    iso = lambda d: d.isoformat(timespec="seconds").replace("+00:00", "Z")  # noqa: E731
    first = ("", "")
    for n in range(count):
        held, token = secrets.token_hex(8).upper(), secrets.token_urlsafe(32)
        expires = now + (timedelta(days=7) if n % 10 else timedelta(seconds=-1))
        record = {"version": 1, "id": held, "sender": "alice@corp.example",
                  "header_from": "alice@corp.example", "held_at": iso(now),
                  "expires_at": iso(expires), "initial_expires_at": iso(expires),
                  "limit_at": iso(expires), "extended_days": 0, "max_retention_days": 365,
                  "revoked_at": None, "reason": "bench", "requested_by_client": None,
                  "definition": {"name": "Bench", "allow_print": True, "allow_reply": True,
                                 "allow_reply_all": False, "read_receipt": False},
                  "recipients": [{"address": READER, "token_sha256": [token_hash(token)],
                                  "first_viewed_at": iso(now), "read_receipt_sent": False}],
                  "delivered_with_banner": [], "delivered_normally": []}
        with store.locked(held):
            store.write_body(held, body)
            store.write(record)
        if n == 1:
            first = (held, token)
    return first


class Sink:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data.append(envelope.content)
        return "250 OK"


async def timed(session: aiohttp.ClientSession, url: str, n: int, concurrency: int
                ) -> list[float]:
    times: list[float] = []
    left = iter(range(n))

    async def worker() -> None:
        for _ in left:
            start = time.perf_counter()
            async with session.get(url) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            times.append(time.perf_counter() - start)

    wall = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - wall
    times.sort()
    print(f"  p50 {statistics.median(times) * 1000:6.1f} ms   "
          f"p95 {times[int(len(times) * 0.95)] * 1000:6.1f} ms   {n / wall:6.0f} pages/s")
    return times


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    spool = root / "spool"
    start = time.perf_counter()
    held, token = fill(spool, args.held)
    print(f"store: {args.held} held messages written in {time.perf_counter() - start:.1f} s")
    sink = Sink()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(sink, hostname="sink"), "127.0.0.1", 0)
    config = PortalConfig(spool=spool, public_url="http://127.0.0.1/secure",
                          relay=("127.0.0.1", server.sockets[0].getsockname()[1]),
                          insecure_cookies=True, sweep_interval=3600)
    portal = Portal(config, EventLog(stream=open("/dev/null", "w")))  # noqa: SIM115
    start = time.perf_counter()
    await portal.start("127.0.0.1", 0)
    print(f"first sweep (on start, deletes {args.held // 10} expired): "
          f"{time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    portal.sweep()
    print(f"sweep with nothing to delete: {(time.perf_counter() - start) * 1000:.0f} ms")
    link = f"http://127.0.0.1:{portal.address[1]}/secure/m/{held}/{token}"
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        print(f"landing page (not signed in), {args.requests} requests, "
              f"{args.concurrency} at once:")
        await timed(session, link, args.requests, args.concurrency)
        page = await (await session.get(link)).text()
        csrf = re.search(r'name="_csrf" value="([0-9a-f]+)"', page).group(1)  # type: ignore[union-attr]
        await session.post(link + "/code", data={"_csrf": csrf})
        code = re.search(rb"code is: ([0-9]+)", sink.data[-1]).group(1).decode()  # type: ignore[union-attr]
        await session.post(link + "/verify", data={"_csrf": csrf, "code": code})
        print("message page (signed in: decrypt, parse, sanitise, render):")
        await timed(session, link, args.requests, args.concurrency)
    await portal.stop()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--held", type=int, default=2000)
    asyncio.run(main(parser.parse_args()))
