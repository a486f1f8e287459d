"""Reply and Reply all: the recipient writes back to the sender's organisation. A mixin of
``app.Portal``. docs/portal.md ("How replies stay secure") says why a reply is submitted
to the relay rather than held by the portal itself."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from connectwiz.portal import content, limits
from connectwiz.portal.mailer import RelayUnavailable, reply_mail, submit

if TYPE_CHECKING:
    from connectwiz.portal.app import Link, Portal

MAX_REPLY = 100_000  # characters of reply text


def reply_targets(record: dict[str, Any], reader: str, everyone: bool
                  ) -> tuple[list[str], list[str]]:
    """(To, Cc) of a reply: the original author, and for Reply all the addresses of the
    original To: and Cc: headers, as the relay recorded them at hold time. Envelope
    recipients are never used: they include the Bcc's, whom nobody else may learn of.
    (A record from before the headers were recorded gets no Cc at all.)"""
    to = [record.get("header_from") or record["sender"]]
    cc: list[str] = []
    if everyone:
        seen = {to[0].lower(), reader.lower()}
        for address in record.get("header_to", []) + record.get("header_cc", []):
            if address.lower() not in seen:
                seen.add(address.lower())
                cc.append(address)
    return to, cc


class ReplyPages:
    def _reply_allowed(self: Portal, link: Link, everyone: bool) -> bool:
        return bool(link.definition["allow_reply_all" if everyone else "allow_reply"])

    async def reply_form(self: Portal, request: web.Request) -> web.Response:
        link = await self._session_link(request)
        if isinstance(link, web.Response):
            return link
        everyone = request.query.get("all") == "1"
        if not self._reply_allowed(link, everyone):
            return self._refuse_reply(request, link, everyone)
        body = await self._body(request, link)
        if isinstance(body, web.Response):
            return body
        shown = await asyncio.to_thread(content.view, body)  # CPU: off the loop
        to, cc = reply_targets(link.record, link.address, everyone)
        subject = shown.subject if shown.subject.lower().startswith("re:") else (
            f"Re: {shown.subject}")
        return self.page(request, "reply.html", title="Reply", to=to, cc=cc,
                         subject=" ".join(subject.split()), everyone=everyone,
                         action=self._url(link, "/reply"), link=self._url(link), error=None,
                         text="")

    def _refuse_reply(self: Portal, request: web.Request, link: Link, everyone: bool
                      ) -> web.Response:
        what = "Reply All" if everyone else "Reply"
        self.log("reply-refused", held=link.held, what=what)
        return self._notice(request, 403, f"{what} is not allowed",
                            f"The sender's organisation does not allow {what} for this "
                            "message.", link=link)

    async def reply(self: Portal, request: web.Request) -> web.Response:
        link = await self._session_link(request)
        if isinstance(link, web.Response):
            return link
        form = await request.post()
        everyone = form.get("all") == "1"
        if not self._reply_allowed(link, everyone):
            return self._refuse_reply(request, link, everyone)
        text = str(form.get("text", ""))
        subject = " ".join(str(form.get("subject", "")).split())[:200] or "Re:"
        to, cc = reply_targets(link.record, link.address, everyone)
        if not text.strip() or len(text) > MAX_REPLY:
            return self.page(request, "reply.html", 400, title="Reply", to=to, cc=cc,
                             subject=subject, everyone=everyone, text=text[:MAX_REPLY],
                             action=self._url(link, "/reply"), link=self._url(link),
                             error="Write a message first." if not text.strip() else
                             "The message is too long.")
        body = await self._body(request, link)
        if isinstance(body, web.Response):
            return body
        refused = await self._reserve_reply(link)
        if refused is not None:
            return self._reply_limited(request, link, refused)
        shown = await asyncio.to_thread(content.view, body)  # CPU: off the loop
        msg = reply_mail(link.address, to, cc, subject, text, shown.message_id,
                         link.definition["name"], self.config.hostname)
        try:
            await submit(self.config.relay, link.record["sender"], to + cc, msg,
                         self.config.hostname)
        except RelayUnavailable as exc:
            await self._update(link, lambda r: limits.uncount_reply(r, link.address))
            self.log("reply-failed", held=link.held, error=str(exc))
            return self._notice(request, 503, "Your reply could not be sent",
                                "Please go back and try again in a few minutes.", link=link)
        self.log("reply-sent", held=link.held, recipients=len(to + cc),
                 reply_all=everyone)
        return self._notice(request, 200, "Your reply was sent",
                            "It goes to " + ", ".join(to + cc) + " through the sender's "
                            "organisation, securely.", link=link)

    async def _reserve_reply(self: Portal, link: Link) -> float | None:
        """Count the reply on disk before it is sent (parallel requests cannot all pass
        the check); None when it may go, else the seconds to wait (``inf``: never)."""
        now = datetime.now(UTC)
        verdict: dict[str, float | None] = {}

        def reserve(record: dict[str, Any]) -> None:
            verdict["wait"] = wait = limits.reply_wait(record, link.address, now,
                                                       self.config.limits)
            if wait is None:
                limits.count_reply(record, link.address, now)

        await self._update(link, reserve)
        return verdict["wait"]

    def _reply_limited(self: Portal, request: web.Request, link: Link, wait: float
                       ) -> web.Response:
        self.log("rate-limited", what="reply", held=link.held, ip=self._client_ip(request))
        if math.isinf(wait):
            text = ("This message has had as many replies as the portal sends for one "
                    "message. Write to the sender by e-mail instead.")
        else:
            n, minutes = self.config.limits.replies_per_hour, max(1, math.ceil(wait / 60))
            text = (f"You sent {n} repl{'ies' if n != 1 else 'y'} in the last hour. You can "
                    f"reply again in {minutes} minute{'s' if minutes != 1 else ''}.")
        return self._notice(request, 429, "Too many replies", text, link=link)
