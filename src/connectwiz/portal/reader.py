"""The recipient's pages: the link, the one-time code, the message, print, attachments and
sign-out. A mixin of ``app.Portal``, which provides links, sessions, pages and the store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from connectwiz.portal import content, limits
from connectwiz.portal.mailer import RelayUnavailable, code_mail, receipt_mail, submit
from connectwiz.portal.security import CodeResult, ascii_filename, mask_address

if TYPE_CHECKING:
    from connectwiz.portal.app import Link, Portal


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


class ReaderPages:
    async def message(self: Portal, request: web.Request) -> web.Response:
        link = await self._link(request)
        if isinstance(link, web.Response):
            return link
        if not self._signed_in(request, link):
            if limits.locked(link.record, link.address):
                return self._locked(request, link)
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

    def _locked(self: Portal, request: web.Request, link: Link) -> web.Response:
        return self._notice(request, 403, "This link is locked",
                            "Too many wrong codes were entered for it. Ask the sender to "
                            "unlock it or to send the message again.")

    async def _first_view(self: Portal, link: Link, subject: str) -> None:
        """Record the first view; send the read receipt once, when the definition asks.
        Nothing here may fail the page: the recipient reads the message regardless."""
        try:
            await self._mark_viewed(link, subject)
        except Exception as exc:  # logged: the page matters more
            self.log("read-receipt-failed", held=link.held, error=type(exc).__name__,
                     note="tried again on the next view")

    async def _mark_viewed(self: Portal, link: Link, subject: str) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        slot = link.slot
        wants = link.definition.get("read_receipt") and not slot.get("read_receipt_sent")
        if slot.get("first_viewed_at") is not None and not wants:
            return  # the common case: nothing to write

        def mark(record: dict[str, Any]) -> None:
            r = limits.slot(record, link.address)
            if r.get("first_viewed_at") is None:
                r["first_viewed_at"] = now

        record = await self._update(link, mark)
        if not (record["definition"].get("read_receipt")
                and not limits.slot(record, link.address).get("read_receipt_sent")):
            return
        sender = record["sender"]
        try:
            await submit(self.config.relay, "", [sender],
                         receipt_mail(sender, link.address, subject, link.held, now,
                                      self.config.hostname,
                                      self.config.public_url.rstrip("/") + "/sender"),
                         self.config.hostname)
        except RelayUnavailable as exc:
            self.log("read-receipt-failed", held=link.held, error=str(exc),
                     note="tried again on the next view")
            return

        def sent(record: dict[str, Any]) -> None:
            limits.slot(record, link.address)["read_receipt_sent"] = True

        await self._update(link, sent)
        self.log("read-receipt-sent", held=link.held)

    async def request_code(self: Portal, request: web.Request) -> web.Response:
        link = await self._link(request)
        if isinstance(link, web.Response):
            return link
        if self._signed_in(request, link):
            return self._redirect(self._url(link))
        if limits.locked(link.record, link.address):
            return self._locked(request, link)
        ip = self._client_ip(request)
        wait = limits.code_wait(link.record, link.address, datetime.now(UTC))
        if wait > 0:
            self.log("rate-limited", what="code-backoff", held=link.held, ip=ip)
            return self._notice(request, 429, "Please wait before asking for a new code",
                                f"Too many wrong codes were entered. You can ask for a new "
                                f"code in {_minutes(wait)}.", link=link)
        pair = f"{ip}|{link.subject}"
        ceilings = [(self.code_limit_ip, ip), (self.code_limit_mailbox, link.subject),
                    (self.code_limit_recipient, pair)]
        refused = [(limiter, key) for limiter, key in ceilings if not limiter.allow(key)]
        if refused:
            wait = max(limiter.retry_after(key) for limiter, key in refused)
            self.log("rate-limited", what="code-request", held=link.held, ip=ip)
            # Only say a code still works when one does.
            live = ("The last code we sent still works until it expires."
                    if self.codes.attempts_left(link.subject) > 0 else "No new code was sent.")
            return self._notice(request, 429, "Too many codes requested",
                                f"Wait {_minutes(wait)}, then try again. {live}", link=link)
        code = self.codes.issue(link.subject)
        minutes = round(self.config.code_ttl / 60)
        try:
            await submit(self.config.relay, "", [link.address],
                         code_mail(link.record["sender"], link.address, code, minutes,
                                   self.config.hostname, self.config.organisation,
                                   self.config.wording),
                         self.config.hostname)
        except RelayUnavailable as exc:
            self.log("code-send-failed", held=link.held, error=str(exc))
            return self._notice(request, 503, "The code could not be sent",
                                "Please try again in a few minutes.", link=link)
        self.log("code-sent", held=link.held, ip=ip)
        return self._redirect(self._url(link, "/code"))

    async def code_form(self: Portal, request: web.Request) -> web.Response:
        link = await self._link(request)
        if isinstance(link, web.Response):
            return link
        if limits.locked(link.record, link.address):
            return self._locked(request, link)
        return self._code_page(request, link, 200, None)

    def _code_page(self: Portal, request: web.Request, link: Link, status: int,
                   error: str | None) -> web.Response:
        return self.page(request, "code.html", status, title="Enter your code",
                         masked=mask_address(link.address), error=error,
                         minutes=round(self.config.code_ttl / 60),
                         live=self.codes.attempts_left(link.subject) > 0,
                         action=self._url(link, "/verify"), resend=self._url(link, "/code"))

    async def verify(self: Portal, request: web.Request) -> web.Response:
        link = await self._link(request)
        if isinstance(link, web.Response):
            return link
        if limits.locked(link.record, link.address):
            return self._locked(request, link)
        ip = self._client_ip(request)
        if not (self.attempt_limit_ip.allow(ip)
                and self.attempt_limit_recipient.allow(f"{ip}|{link.subject}")):
            self.log("rate-limited", what="code-attempt", held=link.held, ip=ip)
            return self._notice(request, 429, "Too many attempts",
                                "Wait a few minutes, then request a new code.", link=link)
        given = (await request.post()).get("code")
        result = self.codes.check(link.subject, given if isinstance(given, str) else "")
        self.log("code-checked", held=link.held, result=result, ip=ip)
        if result == CodeResult.OK:
            response = self._redirect(self._url(link))
            self._start_session(response, link)
            return response
        wait = 0.0
        if result in (CodeResult.WRONG, CodeResult.BURNT):
            now = datetime.now(UTC)
            record = await self._update(
                link, lambda r: limits.count_wrong(r, link.address, now, self.config.limits))
            if limits.locked(record, link.address):
                self.log("link-locked", held=link.held, ip=ip)
                return self._locked(request, link)
            wait = limits.code_wait(record, link.address, now)
        if result == CodeResult.WRONG:
            left = self.codes.attempts_left(link.subject)
            error = f"That code is not right. {left} {'try' if left == 1 else 'tries'} left."
        elif result == CodeResult.BURNT:
            error = "Three wrong codes: this code no longer works. " + (
                f"You can ask for a new code in {_minutes(wait)}." if wait
                else "Request a new code below.")
        else:
            error = "There is no valid code: it expired or was used. Request a new code below."
        return self._code_page(request, link, 400, error)

    async def print_view(self: Portal, request: web.Request) -> web.Response:
        link = await self._session_link(request)
        if isinstance(link, web.Response):
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

    async def attachment(self: Portal, request: web.Request) -> web.StreamResponse:
        link = await self._session_link(request)
        if isinstance(link, web.Response):
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

    async def sign_out(self: Portal, request: web.Request) -> web.Response:
        link = await self._link(request)
        if isinstance(link, web.Response):
            return link
        now = datetime.now(UTC).timestamp()

        def signed_out(record: dict[str, Any]) -> None:
            limits.slot(record, link.address)["signed_out_at"] = now

        if self._signed_in(request, link):
            await self._update(link, signed_out)
        response = self._notice(request, 200, "You are signed out",
                                "Open the link again to read the message; you will need a "
                                "new code.", link=link)
        response.del_cookie(self.session_cookie, path=self.cookie_path,
                            secure=not self.config.insecure_cookies)
        return response
