"""The portal's web application (aiohttp + Jinja2).

Every page under ``<base>/m/<held-id>/<token>`` checks the link again (record, token,
revoked, expired) before anything else, so a revoked or expired message is refused on
every request, not only on the first. Pages that show content need a session cookie for
that message and recipient, obtained with a one-time code mailed to the recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import signal
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from connectwiz.errors import UserError
from connectwiz.portal import content
from connectwiz.portal.mailer import (
    RelayUnavailable,
    code_mail,
    receipt_mail,
    reply_mail,
    submit,
)
from connectwiz.portal.security import (
    CodeBook,
    CodeResult,
    RateLimiter,
    Signer,
    ascii_filename,
    csrf_ok,
    csrf_token,
    derive_key,
    mask_address,
)
from connectwiz.relay.events import EventLog
from connectwiz.relay.secure import HeldStore, find_recipient, held_status
from connectwiz.relay.spool import Spool

SESSION_COOKIE = "cwz_session"
CSRF_COOKIE = "cwz_csrf"
CSRF_NONCE = web.RequestKey("csrf_nonce", str)
CSRF_SHOWN = web.RequestKey("csrf_shown", bool)
_FORMS = frozenset({"landing.html", "code.html", "message.html", "reply.html"})
_HELD = re.compile(r"[0-9A-Z]{1,64}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,128}")
_CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'")
MAX_REPLY = 100_000  # characters of reply text


@dataclass(frozen=True, slots=True)
class PortalConfig:
    spool: Path
    public_url: str  # the relay's --portal-url: links are <public_url>/m/<id>/<token>
    relay: tuple[str, int] = ("127.0.0.1", 2525)
    key_file: Path | None = None  # None: $XDG_CONFIG_HOME/connectwiz/secure.key
    insecure_cookies: bool = False  # only for http://127.0.0.1 tests: cookies without Secure
    behind_proxy: bool = False  # client IP from the last X-Forwarded-For hop
    hostname: str = "localhost"  # in Message-IDs and the HELO to the relay
    code_ttl: float = 600.0
    session_ttl: float = 3600.0
    sweep_interval: float = 300.0
    rate_window: float = 900.0
    codes_per_recipient: int = 3  # code e-mails per recipient and window
    codes_per_ip: int = 10  # code e-mails per client IP and window
    attempts_per_ip: int = 20  # code entries per client IP and window


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


class _AccessLog(AbstractAccessLogger):
    """One line per request with the route's name, never the path: the path has the token."""

    events: EventLog

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = getattr(getattr(request, "match_info", None), "route", None)
        self.events("http", method=request.method, route=getattr(route, "name", None) or "-",
                    status=response.status, ms=round(time * 1000, 1))


class Portal:
    def __init__(self, config: PortalConfig, log: EventLog | None = None) -> None:
        self.config = config
        self.log = log or EventLog()
        self.store = HeldStore(Spool(config.spool), config.key_file)
        secret = self.store.key()  # a missing or unsafe key fails at start, not per request
        self.signer = Signer(derive_key(secret, "cookies"))
        self.csrf_key = derive_key(secret, "csrf")
        self.codes = CodeBook(derive_key(secret, "codes"), ttl=config.code_ttl)
        window = config.rate_window
        self.code_limit_recipient = RateLimiter(config.codes_per_recipient, window)
        self.code_limit_ip = RateLimiter(config.codes_per_ip, window)
        self.attempt_limit_ip = RateLimiter(config.attempts_per_ip, window)
        url = urlsplit(config.public_url)
        self.base = url.path.rstrip("/")
        self.secure_site = url.scheme == "https"
        # Templates ship with the package: compiled here, never re-read or stat'ed per page
        # (auto_reload would stat the files on the event loop at every render).
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("connectwiz.portal", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, auto_reload=False)
        self.templates.filters["when"] = _when
        for name in self.templates.list_templates():
            self.templates.get_template(name)
        self.app = self._build()
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
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
        app.router.add_static(self.base + "/static", Path(__file__).parent / "static",
                              name="static")
        return app

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    sock: socket.socket | None = None) -> None:
        """Serve on ``host:port``, or on ``sock`` when given (a socket already listening,
        e.g. so the relay can be told the portal's URL before the portal starts)."""
        self._runner = web.AppRunner(self.app, access_log_class=self.access_log_class(),
                                     handle_signals=False)
        await self._runner.setup()
        site: web.BaseSite = (
            web.SockSite(self._runner, sock, ssl_context=ssl_context) if sock is not None
            else web.TCPSite(self._runner, host, port, ssl_context=ssl_context))
        await site.start()
        self.address = self._runner.addresses[0][:2]
        await asyncio.to_thread(self.sweep)
        self._sweeper = asyncio.create_task(self._sweep_forever())
        self.log("listening", host=self.address[0], port=self.address[1],
                 public_url=self.config.public_url)

    def access_log_class(self) -> type[AbstractAccessLogger]:
        return type("AccessLog", (_AccessLog,), {"events": self.log})

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._runner is not None:
            await self._runner.cleanup()

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
        stored = self.signer.loads(request.cookies.get(CSRF_COOKIE))
        fresh = not (stored and stored.get("k") == "c" and isinstance(stored.get("n"), str))
        request[CSRF_NONCE] = secrets.token_urlsafe(16) if fresh else stored["n"]  # type: ignore[index]
        try:
            if request.method == "POST" and not await self._csrf_valid(request, fresh):
                self.log("csrf-refused", route=_route_name(request))
                response: web.StreamResponse = self.page(
                    request, "notice.html", 403, title="This form has expired",
                    text="Go back, reload the page and try again.")
            else:
                response = await handler(request)
        except web.HTTPException as exc:  # unknown paths, wrong methods, too-large bodies
            response = self.page(request, "notice.html", exc.status, title=exc.reason,
                                 text="Open the link from your e-mail again.")
        except UserError as exc:  # e.g. content the key cannot decrypt: the admin's problem
            self.log("error", route=_route_name(request), error=str(exc))
            response = self.page(request, "notice.html", 500,
                                 title="This message cannot be shown right now",
                                 text="Please try again later or ask the sender.")
        # Only pages with a form set the cookie: a stray request (e.g. /favicon.ico) must not
        # replace the nonce the open form's token was made from.
        if fresh and request.get(CSRF_SHOWN):
            response.set_cookie(CSRF_COOKIE, self.signer.dumps(
                {"k": "c", "n": request[CSRF_NONCE]}, 86400), **self._cookie_flags())
        h = response.headers
        h.setdefault("Content-Security-Policy", _CSP)  # attachments bring a stricter one
        h["X-Frame-Options"] = "DENY"
        h["Referrer-Policy"] = "no-referrer"  # the token in the URL never leaves in a Referer
        h["X-Content-Type-Options"] = "nosniff"
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        if _route_name(request) == "static":
            h["Cache-Control"] = "public, max-age=3600"
        else:
            h["Cache-Control"] = "no-store"
        if self.secure_site:
            h["Strict-Transport-Security"] = "max-age=31536000"
        return response

    async def _csrf_valid(self, request: web.Request, fresh: bool) -> bool:
        if fresh:
            return False
        form = await request.post()
        given = form.get("_csrf")
        return csrf_ok(self.csrf_key, request[CSRF_NONCE], given if isinstance(given, str)
                       else None)

    def _cookie_flags(self) -> dict[str, Any]:
        return {"path": self.base + "/" if self.base else "/", "httponly": True,
                "secure": not self.config.insecure_cookies, "samesite": "Strict"}

    # -- pages ---------------------------------------------------------------------------------

    def page(self, request: web.Request, template: str, status: int = 200, **ctx: Any
             ) -> web.Response:
        if template in _FORMS:
            request[CSRF_SHOWN] = True
        ctx.setdefault("title", "Secure Messaging")
        ctx.setdefault("home", None)
        text = self.templates.get_template(template).render(
            static=self.base + "/static", csrf=csrf_token(self.csrf_key, request[CSRF_NONCE]),
            **ctx)
        return web.Response(text=text, status=status, content_type="text/html")

    def _notice(self, request: web.Request, status: int, title: str, text: str,
                link: Link | None = None, **ctx: Any) -> web.Response:
        return self.page(request, "notice.html", status, title=title, text=text,
                         home=self._url(link) if link else None, **ctx)

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
            return self._notice(request, 404, "This link does not work",
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
        data = self.signer.loads(request.cookies.get(SESSION_COOKIE))
        return bool(data and data.get("k") == "s" and data.get("h") == link.held
                    and data.get("r") == link.address.lower())

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

    # -- handlers ------------------------------------------------------------------------------

    async def message(self, request: web.Request) -> web.Response:
        link = await self._link(request)
        if not isinstance(link, Link):
            return link
        if not self._signed_in(request, link):
            return self.page(request, "landing.html", title="A secure message for you",
                             sender=link.record["sender"], masked=mask_address(link.address),
                             action=self._url(link, "/code"),
                             expires=link.record["expires_at"])
        body = await self._body(request, link)
        if isinstance(body, web.Response):
            return body
        shown = await asyncio.to_thread(content.view, body)  # CPU: off the loop
        await self._first_view(link, shown.subject)
        d = link.definition
        return self.page(request, "message.html", title=shown.subject or "(no subject)",
                         m=shown, link=self._url(link), allow_print=d["allow_print"],
                         allow_reply=d["allow_reply"], allow_reply_all=d["allow_reply_all"],
                         expires=link.record["expires_at"], reader=link.address,
                         held_at=link.record["held_at"])

    async def _first_view(self, link: Link, subject: str) -> None:
        """Record the first view; send the read receipt once, when the definition asks."""
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        due: dict[str, bool] = {}

        def mark(record: dict[str, Any]) -> None:
            for r in record["recipients"]:
                if r["address"] == link.address:
                    if r.get("first_viewed_at") is None:
                        r["first_viewed_at"] = now
                    due["receipt"] = (bool(record["definition"].get("read_receipt"))
                                      and not r.get("read_receipt_sent"))

        slot = next(r for r in link.record["recipients"] if r["address"] == link.address)
        wants = link.definition.get("read_receipt") and not slot.get("read_receipt_sent")
        if slot.get("first_viewed_at") is not None and not wants:
            return  # the common case: nothing to write
        await asyncio.to_thread(self.store.update, link.held, mark)
        if not due.get("receipt"):
            return
        sender = link.record["sender"]
        try:
            await submit(self.config.relay, "", [sender],
                         receipt_mail(sender, link.address, subject, link.held, now,
                                      self.config.hostname), self.config.hostname)
        except RelayUnavailable as exc:
            self.log("read-receipt-failed", held=link.held, error=str(exc),
                     note="tried again on the next view")
            return

        def sent(record: dict[str, Any]) -> None:
            for r in record["recipients"]:
                if r["address"] == link.address:
                    r["read_receipt_sent"] = True

        await asyncio.to_thread(self.store.update, link.held, sent)
        self.log("read-receipt-sent", held=link.held)

    async def request_code(self, request: web.Request) -> web.Response:
        link = await self._link(request)
        if not isinstance(link, Link):
            return link
        if self._signed_in(request, link):
            return self._redirect(self._url(link))
        ip = self._client_ip(request)
        if not self.code_limit_ip.allow(ip) or not self.code_limit_recipient.allow(link.subject):
            wait = max(self.code_limit_ip.retry_after(ip),
                       self.code_limit_recipient.retry_after(link.subject))
            self.log("rate-limited", what="code-request", held=link.held, ip=ip)
            return self._notice(request, 429, "Too many codes requested",
                                f"Wait {max(1, round(wait / 60))} minutes, then try again. "
                                "The last code we sent still works until it expires.",
                                link=link)
        code = self.codes.issue(link.subject)
        minutes = round(self.config.code_ttl / 60)
        try:
            await submit(self.config.relay, "", [link.address],
                         code_mail(link.record["sender"], link.address, code, minutes,
                                   self.config.hostname), self.config.hostname)
        except RelayUnavailable as exc:
            self.log("code-send-failed", held=link.held, error=str(exc))
            return self._notice(request, 503, "The code could not be sent",
                                "Please try again in a few minutes.", link=link)
        self.log("code-sent", held=link.held, ip=ip)
        return self._redirect(self._url(link, "/code"))

    async def code_form(self, request: web.Request) -> web.Response:
        link = await self._link(request)
        if not isinstance(link, Link):
            return link
        return self._code_page(request, link, 200, None)

    def _code_page(self, request: web.Request, link: Link, status: int, error: str | None
                   ) -> web.Response:
        return self.page(request, "code.html", status, title="Enter your code",
                         masked=mask_address(link.address), error=error,
                         minutes=round(self.config.code_ttl / 60),
                         live=self.codes.attempts_left(link.subject) > 0,
                         action=self._url(link, "/verify"), resend=self._url(link, "/code"))

    async def verify(self, request: web.Request) -> web.Response:
        link = await self._link(request)
        if not isinstance(link, Link):
            return link
        ip = self._client_ip(request)
        if not self.attempt_limit_ip.allow(ip):
            self.log("rate-limited", what="code-attempt", held=link.held, ip=ip)
            return self._notice(request, 429, "Too many attempts",
                                "Wait a few minutes, then request a new code.", link=link)
        given = (await request.post()).get("code")
        result = self.codes.check(link.subject, given if isinstance(given, str) else "")
        self.log("code-checked", held=link.held, result=result, ip=ip)
        if result == CodeResult.OK:
            response = self._redirect(self._url(link))
            response.set_cookie(SESSION_COOKIE, self.signer.dumps(
                {"k": "s", "h": link.held, "r": link.address.lower()},
                self.config.session_ttl), **self._cookie_flags())
            return response
        if result == CodeResult.WRONG:
            left = self.codes.attempts_left(link.subject)
            error = f"That code is not right. {left} {'try' if left == 1 else 'tries'} left."
        elif result == CodeResult.BURNT:
            error = ("Three wrong codes: this code no longer works. "
                     "Request a new code below.")
        else:
            error = "There is no valid code: it expired or was used. Request a new code below."
        return self._code_page(request, link, 400, error)

    async def print_view(self, request: web.Request) -> web.Response:
        link = await self._session_link(request)
        if not isinstance(link, Link):
            return link
        if not link.definition["allow_print"]:
            return self._notice(request, 403, "Printing is not allowed",
                                "The sender's organisation does not allow printing this "
                                "message.", link=link)
        body = await self._body(request, link)
        if isinstance(body, web.Response):
            return body
        shown = await asyncio.to_thread(content.view, body)  # CPU: off the loop
        return self.page(request, "print.html", title=shown.subject or "(no subject)", m=shown,
                         link=self._url(link), held_at=link.record["held_at"])

    async def attachment(self, request: web.Request) -> web.StreamResponse:
        link = await self._session_link(request)
        if not isinstance(link, Link):
            return link
        body = await self._body(request, link)
        if isinstance(body, web.Response):
            return body
        found = await asyncio.to_thread(content.attachment, body, int(request.match_info["n"]))
        if found is None:
            return self._notice(request, 404, "No such attachment", "", link=link)
        part, data = found
        return web.Response(body=data, content_type=part.content_type, headers={
            "Content-Disposition": f'attachment; filename="{ascii_filename(part.filename)}"; '
                                   f"filename*=UTF-8''{quote(part.filename)}",
            "Content-Security-Policy": "sandbox"})

    def _reply_allowed(self, link: Link, everyone: bool) -> bool:
        return bool(link.definition["allow_reply_all" if everyone else "allow_reply"])

    def _reply_targets(self, link: Link, everyone: bool) -> tuple[list[str], list[str]]:
        record = link.record
        to = [record.get("header_from") or record["sender"]]
        cc: list[str] = []
        if everyone:
            others = [r["address"] for r in record["recipients"]]
            others += record.get("delivered_with_banner", []) + record.get(
                "delivered_normally", [])
            seen = {to[0].lower(), link.address.lower()}
            for address in others:
                if address.lower() not in seen:
                    seen.add(address.lower())
                    cc.append(address)
        return to, cc

    async def reply_form(self, request: web.Request) -> web.Response:
        link = await self._session_link(request)
        if not isinstance(link, Link):
            return link
        everyone = request.query.get("all") == "1"
        if not self._reply_allowed(link, everyone):
            return self._refuse_reply(request, link, everyone)
        body = await self._body(request, link)
        if isinstance(body, web.Response):
            return body
        shown = await asyncio.to_thread(content.view, body)  # CPU: off the loop
        to, cc = self._reply_targets(link, everyone)
        subject = shown.subject if shown.subject.lower().startswith("re:") else (
            f"Re: {shown.subject}")
        return self.page(request, "reply.html", title="Reply", to=to, cc=cc, subject=subject,
                         everyone=everyone, action=self._url(link, "/reply"),
                         link=self._url(link), error=None, text="")

    def _refuse_reply(self, request: web.Request, link: Link, everyone: bool) -> web.Response:
        what = "Reply All" if everyone else "Reply"
        self.log("reply-refused", held=link.held, what=what)
        return self._notice(request, 403, f"{what} is not allowed",
                            f"The sender's organisation does not allow {what} for this "
                            "message.", link=link)

    async def reply(self, request: web.Request) -> web.Response:
        link = await self._session_link(request)
        if not isinstance(link, Link):
            return link
        form = await request.post()
        everyone = form.get("all") == "1"
        if not self._reply_allowed(link, everyone):
            return self._refuse_reply(request, link, everyone)
        text = str(form.get("text", ""))
        subject = " ".join(str(form.get("subject", "")).split())[:200] or "Re:"
        to, cc = self._reply_targets(link, everyone)
        if not text.strip() or len(text) > MAX_REPLY:
            return self.page(request, "reply.html", 400, title="Reply", to=to, cc=cc,
                             subject=subject, everyone=everyone, text=text[:MAX_REPLY],
                             action=self._url(link, "/reply"), link=self._url(link),
                             error="Write a message first." if not text.strip() else
                             "The message is too long.")
        body = await self._body(request, link)
        if isinstance(body, web.Response):
            return body
        shown = await asyncio.to_thread(content.view, body)  # CPU: off the loop
        msg = reply_mail(link.address, to, cc, subject, text, shown.message_id,
                         link.definition["name"], self.config.hostname)
        try:
            await submit(self.config.relay, link.record["sender"], to + cc, msg,
                         self.config.hostname)
        except RelayUnavailable as exc:
            self.log("reply-failed", held=link.held, error=str(exc))
            return self._notice(request, 503, "Your reply could not be sent",
                                "Please go back and try again in a few minutes.", link=link)
        self.log("reply-sent", held=link.held, recipients=len(to + cc),
                 reply_all=everyone)
        return self._notice(request, 200, "Your reply was sent",
                            "It goes to " + ", ".join(to + cc) + " through the sender's "
                            "organisation, securely.", link=link)

    async def sign_out(self, request: web.Request) -> web.Response:
        link = await self._link(request)
        if not isinstance(link, Link):
            return link
        response = self._notice(request, 200, "You are signed out",
                                "Open the link again to read the message; you will need a "
                                "new code.", link=link)
        response.del_cookie(SESSION_COOKIE, path=self._cookie_flags()["path"])
        return response


def _when(iso: str) -> str:
    """``2026-11-30T06:33:26Z`` as people read it: ``30 Nov 2026, 06:33 UTC``."""
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).strftime(
            "%d %b %Y, %H:%M UTC")
    except ValueError:
        return iso


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
