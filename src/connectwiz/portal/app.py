"""The portal's web application (aiohttp + Jinja2): wiring, middleware, links, sessions.

Every page under ``<base>/m/<held-id>/<token>`` checks the link again (record, token,
revoked, expired) before anything else, so a revoked or expired message is refused on
every request, not only on the first. Pages that show content need a session cookie for
that message and recipient, obtained with a one-time code mailed to the recipient. The
pages themselves are in ``reader`` (code, message, print, attachments, sign-out) and
``replies`` (reply, reply all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import signal
import socket
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from connectwiz.errors import UserError
from connectwiz.policy.wording import Wording
from connectwiz.portal import limits
from connectwiz.portal.limits import Limits
from connectwiz.portal.reader import ReaderPages
from connectwiz.portal.replies import MAX_REPLY, ReplyPages
from connectwiz.portal.security import (
    CodeBook,
    RateLimiter,
    Signer,
    csrf_ok,
    csrf_token,
    derive_key,
    linkify,
)
from connectwiz.portal.sender import SenderPages
from connectwiz.relay.events import EventLog
from connectwiz.relay.held import HeldStore, find_recipient, held_status
from connectwiz.relay.spool import Spool

CSRF_NONCE = web.RequestKey("csrf_nonce", str)
CSRF_SHOWN = web.RequestKey("csrf_shown", bool)
SESSION_ID = web.RequestKey("session_id", str)
_FORMS = frozenset({"landing.html", "code.html", "message.html", "reply.html",
                    "sender_signin.html", "sender_code.html", "sender_list.html"})
_HELD = re.compile(r"[0-9A-Z]{1,64}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,128}")
_CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'")
# What error pages say instead of HTTP's reason phrases ("Not Found", "Method Not Allowed").
_PLAIN = {
    404: ("This page does not exist", "Open the link from your e-mail again."),
    405: ("This page does not exist", "Open the link from your e-mail again."),
    413: ("That was too much to send", "Shorten your message and try again."),
}
_LOGOS = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
MAX_LOGO = 200_000  # bytes: the logo is on every page


@dataclass(frozen=True, slots=True)
class PortalConfig:
    spool: Path
    public_url: str  # the relay's --portal-url: links are <public_url>/m/<id>/<token>
    relay: tuple[str, int] = ("127.0.0.1", 2525)
    key_file: Path | None = None  # None: $XDG_CONFIG_HOME/connectwiz/secure.key
    insecure_cookies: bool = False  # only for http://127.0.0.1 tests: cookies without Secure
    behind_proxy: bool = False  # client IP from the last X-Forwarded-For hop
    hostname: str = "localhost"  # in Message-IDs and the HELO to the relay
    organisation: str = ""  # the bundle's organisation.name, on every page
    logo: Path | None = None  # the bundle's organisation.logo (PNG or JPEG)
    wording: Wording = field(default_factory=Wording)  # the bundle's texts and colours
    code_ttl: float = 600.0
    session_ttl: float = 3600.0
    sweep_interval: float = 300.0
    rate_window: float = 900.0
    # Rate limits (in memory, sliding windows). They are keyed by (client IP, recipient),
    # so colleagues behind one proxy do not lock each other out; the per-IP ceilings are
    # far higher and only stop one client sweeping many links.
    codes_per_recipient: int = 3  # code e-mails per (client IP, recipient) and window
    codes_per_mailbox: int = 10  # code e-mails per recipient, from all clients, and window
    codes_per_ip: int = 100  # code e-mails per client IP and window
    attempts_per_recipient: int = 20  # code entries per (client IP, recipient) and window
    attempts_per_ip: int = 200  # code entries per client IP and window
    limits: Limits = field(default_factory=Limits)  # the counters kept on disk


@dataclass(slots=True)
class Link:
    held: str
    token: str
    record: dict[str, Any]
    address: str

    @property
    def subject(self) -> str:
        return f"{self.held}|{self.address.lower()}"

    @property
    def definition(self) -> dict[str, Any]:
        return self.record["definition"]

    @property
    def slot(self) -> dict[str, Any]:
        return limits.slot(self.record, self.address)


class _AccessLog(AbstractAccessLogger):
    """One line per request with the route's name, never the path: the path has the token."""

    events: EventLog

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = getattr(getattr(request, "match_info", None), "route", None)
        self.events("http", method=request.method, route=getattr(route, "name", None) or "-",
                    status=response.status, ms=round(time * 1000, 1))


class AiohttpLogBridge(logging.Handler):
    """aiohttp logs what escapes the middleware (a broken connection mid-response, a
    protocol error) with multi-line tracebacks; the portal's log keeps one line per event."""

    def __init__(self, log: EventLog) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log("http-error", level=record.levelname.lower(),
                 message=" ".join(record.getMessage().split())[:300],
                 error=type(record.exc_info[1]).__name__ if record.exc_info else None)


class Portal(ReaderPages, ReplyPages, SenderPages):
    def __init__(self, config: PortalConfig, log: EventLog | None = None) -> None:
        self.config = config
        self.log = log or EventLog()
        # Only the relay's set-up creates the key: a portal given a wrong path would
        # otherwise make a new key and fail to show everything already held.
        self.store = HeldStore(Spool(config.spool), config.key_file, create_key=False)
        secret = self.store.key()  # a missing or unsafe key fails at start, not per request
        self.signer = Signer(derive_key(secret, "cookies"))
        self.csrf_key = derive_key(secret, "csrf")
        self.codes = CodeBook(derive_key(secret, "codes"), ttl=config.code_ttl,
                              max_attempts=config.limits.attempts)
        window = config.rate_window
        self.code_limit_recipient = RateLimiter(config.codes_per_recipient, window)
        self.code_limit_mailbox = RateLimiter(config.codes_per_mailbox, window)
        self.code_limit_ip = RateLimiter(config.codes_per_ip, window)
        self.attempt_limit_recipient = RateLimiter(config.attempts_per_recipient, window)
        self.attempt_limit_ip = RateLimiter(config.attempts_per_ip, window)
        url = urlsplit(config.public_url)
        self.base = url.path.rstrip("/")
        self.secure_site = url.scheme == "https"
        # __Host- cookies cannot be set by a sibling subdomain, nor scoped to a path: they
        # need Secure and Path=/. Tests on http://127.0.0.1 keep the plain names.
        secure = not config.insecure_cookies
        self.session_cookie = "__Host-cwz_session" if secure else "cwz_session"
        self.csrf_cookie = "__Host-cwz_csrf" if secure else "cwz_csrf"
        self.cookie_path = "/" if secure or not self.base else self.base + "/"
        self.logo = _logo(config.logo) if config.logo else None
        # Templates ship with the package: compiled here, never re-read or stat'ed per page
        # (auto_reload would stat the files on the event loop at every render).
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("connectwiz.portal", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, auto_reload=False)
        self.templates.filters["when"] = _when
        self.templates.filters["linkify"] = linkify
        for name in self.templates.list_templates():
            self.templates.get_template(name)
        self.app = self._build()
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._bridge = AiohttpLogBridge(self.log)
        self.address: tuple[str, int] = ("", 0)

    # -- wiring ------------------------------------------------------------------------------

    def _build(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=2 * MAX_REPLY)
        m = self.base + "/m/{held}/{token}"
        app.router.add_get(m, self.message, name="message")
        app.router.add_post(m + "/code", self.request_code, name="code-request")
        app.router.add_get(m + "/code", self.code_form, name="code-form")
        app.router.add_post(m + "/verify", self.verify, name="code-verify")
        app.router.add_get(m + "/print", self.print_view, name="print")
        app.router.add_get(m + "/attachment/{n:[0-9]{1,4}}", self.attachment, name="attachment")
        app.router.add_get(m + "/reply", self.reply_form, name="reply-form")
        app.router.add_post(m + "/reply", self.reply, name="reply")
        app.router.add_post(m + "/signout", self.sign_out, name="signout")
        s = self.base + "/sender"
        app.router.add_get(s, self.sender_home, name="sender")
        app.router.add_post(s + "/code", self.sender_request_code, name="sender-code")
        app.router.add_post(s + "/verify", self.sender_verify, name="sender-verify")
        app.router.add_post(s + "/m/{held:[0-9A-Z]{1,64}}/extend", self.sender_extend,
                            name="sender-extend")
        app.router.add_post(s + "/m/{held:[0-9A-Z]{1,64}}/revoke", self.sender_revoke,
                            name="sender-revoke")
        app.router.add_post(s + "/signout", self.sender_sign_out, name="sender-signout")
        app.router.add_static(self.base + "/static", Path(__file__).parent / "static",
                              name="static")
        if self.logo is not None:
            app.router.add_get(self.base + "/logo", self.logo_image, name="logo")
        app.router.add_get(self.base + "/brand.css", self.brand_css, name="brand")
        return app

    async def brand_css(self, request: web.Request) -> web.Response:
        """The organisation's colours (checked as #rgb/#rrggbb when the bundle loads): a
        stylesheet, since the CSP allows no inline style."""
        w = self.config.wording
        return web.Response(text=f":root {{ --accent: {w.accent_colour}; "
                                 f"--bar: {w.bar_colour}; }}\n", content_type="text/css")

    async def logo_image(self, request: web.Request) -> web.Response:
        assert self.logo is not None
        return web.Response(body=self.logo[0], content_type=self.logo[1])

    def check_key(self) -> None:
        """Refuse to start when the key cannot open what is held (another key, or a key
        file just created by mistake): every page would say "cannot be shown"."""
        for held in reversed(self.store.ids()):  # the newest first: ids sort by time
            try:
                if self.store.read_body(held) is not None:
                    return
            except UserError as exc:
                raise UserError(f"--secure-key: {exc}; give the relay's --secure-key") from None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    sock: socket.socket | None = None) -> None:
        """Serve on ``host:port``, or on ``sock`` when given (a socket already listening,
        e.g. so the relay can be told the portal's URL before the portal starts)."""
        await asyncio.to_thread(self.check_key)
        self._runner = web.AppRunner(self.app, access_log_class=self.access_log_class(),
                                     handle_signals=False)
        await self._runner.setup()
        aiohttp_log = logging.getLogger("aiohttp")
        aiohttp_log.addHandler(self._bridge)
        aiohttp_log.propagate = False  # no second, multi-line copy on stderr
        site: web.BaseSite = (
            web.SockSite(self._runner, sock, ssl_context=ssl_context) if sock is not None
            else web.TCPSite(self._runner, host, port, ssl_context=ssl_context))
        await site.start()
        self.address = self._runner.addresses[0][:2]
        await asyncio.to_thread(self.sweep)
        self._sweeper = asyncio.create_task(self._sweep_forever())
        self.log("listening", host=self.address[0], port=self.address[1],
                 public_url=self.config.public_url)
        if self.config.behind_proxy and not is_loopback(self.address[0]):
            self.log("warning", note="--behind-proxy trusts X-Forwarded-For from anyone who "
                     "can reach this address; listen on loopback behind the proxy",
                     host=self.address[0])

    def access_log_class(self) -> type[AbstractAccessLogger]:
        return type("AccessLog", (_AccessLog,), {"events": self.log})

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._runner is not None:
            await self._runner.cleanup()
        aiohttp_log = logging.getLogger("aiohttp")
        aiohttp_log.removeHandler(self._bridge)
        aiohttp_log.propagate = True

    async def serve_until_signalled(self, host: str, port: int,
                                    ssl_context: ssl.SSLContext | None = None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start(host, port, ssl_context)
        try:
            await stop.wait()
        finally:
            await self.stop()
            self.log("stopped")

    # -- expiry ------------------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Delete the content of every expired or revoked message; returns their ids."""
        now = datetime.now(UTC)
        deleted = []
        for held in self.store.ids():
            try:
                record = self.store.read(held)
            except UserError:
                continue  # a damaged record is `connectwiz secure show`'s to report
            if held_status(record, now) != "held" and self.store.delete_body(held):
                deleted.append(held)
                self.log("content-deleted", held=held, status=held_status(record, now))
        return deleted

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await asyncio.to_thread(self.sweep)
            except OSError as exc:  # e.g. the spool's disk went away: try again next time
                self.log("sweep-failed", error=str(exc))

    # -- middleware: CSRF, errors, security headers --------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        stored = self.signer.loads(request.cookies.get(self.csrf_cookie))
        fresh = not (stored and stored.get("k") == "c" and isinstance(stored.get("n"), str))
        request[CSRF_NONCE] = secrets.token_urlsafe(16) if fresh else stored["n"]  # type: ignore[index]
        session = self.signer.loads(request.cookies.get(self.session_cookie)) or {}
        request[SESSION_ID] = str(session.get("s", "")) if session.get("k") == "s" else ""
        try:
            if request.method == "POST" and not await self._csrf_valid(request, fresh):
                self.log("csrf-refused", route=_route_name(request))
                response: web.StreamResponse = self.page(
                    request, "notice.html", 403, title="This form has expired",
                    text="Go back, reload the page and try again.")
            else:
                response = await handler(request)
        except web.HTTPException as exc:  # unknown paths, wrong methods, too-large bodies
            title, text = _PLAIN.get(exc.status, ("Something went wrong",
                                                  "Open the link from your e-mail again."))
            response = self.page(request, "notice.html", exc.status, title=title, text=text)
        except UserError as exc:  # e.g. content the key cannot decrypt: the admin's problem
            self.log("error", route=_route_name(request), error=str(exc))
            response = self._failed(request)
        except Exception as exc:  # a bug: one log line, and still the portal's own page
            self.log("error", route=_route_name(request), error=type(exc).__name__,
                     detail=" ".join(str(exc).split())[:200])
            response = self._failed(request)
        # Only pages with a form set the cookie: a stray request (e.g. /favicon.ico) must not
        # replace the nonce the open form's token was made from.
        if fresh and request.get(CSRF_SHOWN):
            response.set_cookie(self.csrf_cookie, self.signer.dumps(
                {"k": "c", "n": request[CSRF_NONCE]}, 86400), **self._cookie_flags())
        h = response.headers
        h.setdefault("Content-Security-Policy", _CSP)  # attachments bring a stricter one
        h["X-Frame-Options"] = "DENY"
        h["Referrer-Policy"] = "no-referrer"  # the token in the URL never leaves in a Referer
        h["X-Content-Type-Options"] = "nosniff"
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        h["Server"] = "connectwiz"  # aiohttp's default names its own and Python's version
        if _route_name(request) in ("static", "logo", "brand"):
            h["Cache-Control"] = "public, max-age=3600"
        else:
            h["Cache-Control"] = "no-store"
        if self.secure_site:
            h["Strict-Transport-Security"] = "max-age=31536000"
        return response

    def _failed(self, request: web.Request) -> web.Response:
        return self.page(request, "notice.html", 500,
                         title="This message cannot be shown right now",
                         text="Please try again later or ask the sender.")

    def _csrf(self, request: web.Request) -> str:
        """The form token: bound to the browser's nonce cookie and to its session, so a
        token made with another session (or none) does not pass for this one."""
        return csrf_token(self.csrf_key, f"{request[CSRF_NONCE]}|{request[SESSION_ID]}")

    async def _csrf_valid(self, request: web.Request, fresh: bool) -> bool:
        if fresh:
            return False
        form = await request.post()
        given = form.get("_csrf")
        return csrf_ok(self.csrf_key, f"{request[CSRF_NONCE]}|{request[SESSION_ID]}",
                       given if isinstance(given, str) else None)

    def _cookie_flags(self) -> dict[str, Any]:
        return {"path": self.cookie_path, "httponly": True,
                "secure": not self.config.insecure_cookies, "samesite": "Strict"}

    # -- pages ---------------------------------------------------------------------------------

    def page(self, request: web.Request, template: str, status: int = 200, **ctx: Any
             ) -> web.Response:
        if template in _FORMS:
            request[CSRF_SHOWN] = True
        ctx.setdefault("title", "Secure Messaging")
        ctx.setdefault("home", None)
        text = self.templates.get_template(template).render(
            static=self.base + "/static", brand=self.base + "/brand.css",
            csrf=self._csrf(request),
            org=self.config.organisation, logo=self.base + "/logo" if self.logo else None,
            **ctx)
        return web.Response(text=text, status=status, content_type="text/html")

    def _notice(self, request: web.Request, status: int, title: str, text: str,
                link: Link | None = None, home: str | None = None, **ctx: Any
                ) -> web.Response:
        """``home``: the sender's list (for their pages); else back to ``link``'s message."""
        return self.page(request, "notice.html", status, title=title, text=text,
                         home=home or (self._url(link) if link else None),
                         home_label="Back to your messages" if home else "Back to the message",
                         **ctx)

    def _url(self, link: Link, tail: str = "") -> str:
        return f"{self.base}/m/{link.held}/{link.token}{tail}"

    @staticmethod
    def _redirect(location: str) -> web.Response:
        return web.Response(status=303, headers={"Location": location})

    def _client_ip(self, request: web.Request) -> str:
        if self.config.behind_proxy:
            forwarded = request.headers.get("X-Forwarded-For", "")
            if forwarded.strip():
                return forwarded.split(",")[-1].strip()
        return request.remote or "?"

    async def _link(self, request: web.Request) -> Link | web.Response:
        """The link's held message and recipient, or the page refusing it."""
        held, token = request.match_info["held"], request.match_info["token"]
        record = None
        if _HELD.fullmatch(held) and _TOKEN.fullmatch(token):
            record = await asyncio.to_thread(self._read, held)
        recipient = find_recipient(record, token) if record else None
        if record is None or recipient is None:
            self.log("link-refused", route=_route_name(request), ip=self._client_ip(request))
            return self._notice(request, 404, "This link is not valid",
                                "Check that you opened the whole link from the e-mail. "
                                "Links are personal and cannot be changed.")
        status = held_status(record, datetime.now(UTC))
        if status == "revoked":
            return self._notice(request, 410, "This message was withdrawn",
                                "The sender's organisation withdrew it. Ask the sender "
                                "if you still need it.")
        if status == "expired":
            if await asyncio.to_thread(self.store.delete_body, held):
                self.log("content-deleted", held=held, status="expired")
            return self._notice(request, 410, "This message has expired",
                                f"It could be read until {_when(record['expires_at'])}. "
                                "Its content has been deleted. Ask the sender to send it "
                                "again.")
        return Link(held, token, record, recipient["address"])

    def _read(self, held: str) -> dict[str, Any] | None:
        try:
            return self.store.read(held)
        except UserError:
            return None

    def _signed_in(self, request: web.Request, link: Link) -> bool:
        data = self.signer.loads(request.cookies.get(self.session_cookie))
        if not (data and data.get("k") == "s" and data.get("h") == link.held
                and data.get("r") == link.address.lower()):
            return False
        # Sign-out is kept on disk: a copied cookie issued before it no longer works.
        issued = data.get("t")
        return isinstance(issued, int | float) and issued > float(
            link.slot.get("signed_out_at") or 0)

    def _start_session(self, response: web.Response, link: Link) -> None:
        response.set_cookie(self.session_cookie, self.signer.dumps(
            {"k": "s", "h": link.held, "r": link.address.lower(), "t": time.time(),
             "s": secrets.token_urlsafe(12)}, self.config.session_ttl), **self._cookie_flags())

    async def _update(self, link: Link, change: Any) -> dict[str, Any]:
        """Change the link's record on disk (its lock, an atomic rewrite); keeps ``link``
        up to date with the result."""
        link.record = await asyncio.to_thread(self.store.update, link.held, change)
        return link.record

    async def _session_link(self, request: web.Request) -> Link | web.Response:
        link = await self._link(request)
        if isinstance(link, Link) and not self._signed_in(request, link):
            return self._redirect(self._url(link))
        return link

    async def _body(self, request: web.Request, link: Link) -> bytes | web.Response:
        body = await asyncio.to_thread(self.store.read_body, link.held)
        if body is None:
            return self._notice(request, 410, "This message is no longer available",
                                "Its content has been deleted.")
        return body

def _when(iso: str) -> str:
    """``2026-11-30T06:33:26Z`` as people read it: ``30 Nov 2026, 06:33 UTC``."""
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).strftime(
            "%d %b %Y, %H:%M UTC")
    except ValueError:
        return iso


def _logo(path: Path) -> tuple[bytes, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"organisation.logo {path}: {exc.strerror}") from None
    kind = next((t for magic, t in _LOGOS.items() if data.startswith(magic)), None)
    if kind is None or len(data) > MAX_LOGO:
        raise UserError(f"organisation.logo {path}: give a PNG or JPEG file of at most "
                        f"{MAX_LOGO // 1000} kB")
    return data, kind


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (the --behind-proxy warning)."""
    return host in ("localhost", "::1") or host.startswith("127.")


def _route_name(request: web.Request) -> str:
    route = getattr(request.match_info, "route", None)
    return getattr(route, "name", None) or "-"


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"--tls-cert/--tls-key: cannot load them ({exc})") from None
    return ctx
