"""The sender's self-service pages: sign in with a one-time code mailed to one's own address,
see one's secure messages (recipients, read status, expiry), extend and revoke them.

A mixin of ``app.Portal``, like ``reader``. Who may sign in: an address that is the sender
of at least one held message (only internal senders' mail is ever held). The answer to "send
me a code" is the same whether or not a code was sent, so the page tells nobody which
addresses send secure mail. Extending and revoking are ``relay.held``'s, the same rules as
``connectwiz secure extend|revoke``; the limit is the definition's, never the sender's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy
from typing import TYPE_CHECKING, Any

from aiohttp import web

from connectwiz.errors import UserError
from connectwiz.portal.mailer import RelayUnavailable, sign_in_code_mail, submit
from connectwiz.portal.security import CodeResult, mask_address
from connectwiz.relay.held import extend_held, held_status, revoke_held

if TYPE_CHECKING:
    from connectwiz.portal.app import Portal

SENDER_SESSION = "~sender"  # the session cookie's "h" for a sender: no held id looks like it
MAX_LISTED = 200  # newest first: the page stays quick for a sender with years of mail
MAX_ADDRESS = 254


def _parse(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class SentMessage:
    """One row of the sender's list."""

    id: str
    subject: str
    status: str  # held, expired, revoked
    held_at: str
    expires_at: str
    limit_at: str
    room_days: int  # how many more days the expiry may still move
    definition: str
    options: str
    recipients: list[tuple[str, str | None]]  # (address, first viewed at or None)
    internal: list[tuple[str, str | None]]  # delivered to mailboxes; opened in the portal at


def _subject(body: bytes | None) -> str:
    if body is None:
        return "(content deleted)"
    head = body.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    try:
        return str(message_from_bytes(head, policy=email_policy.default).get("Subject", ""))
    except Exception:  # a hostile subject still lists the message
        return ""


class SenderPages:
    def _sender_url(self: Portal, tail: str = "") -> str:
        return f"{self.base}/sender{tail}"

    def _sender(self: Portal, request: web.Request) -> str | None:
        """The signed-in sender's address, or None."""
        data = self.signer.loads(request.cookies.get(self.session_cookie))
        if not (data and data.get("k") == "s" and data.get("h") == SENDER_SESSION
                and isinstance(data.get("r"), str)):
            return None
        issued = data.get("t")
        if not isinstance(issued, int | float) or issued <= self._signed_out_at(data["r"]):
            return None  # signed out since: a copied cookie no longer works
        return str(data["r"])

    def _sign_out_file(self: Portal, address: str) -> Any:
        digest = hashlib.sha256(address.lower().encode()).hexdigest()
        return self.store.root / "senders" / f"{digest}.json"

    def _signed_out_at(self: Portal, address: str) -> float:
        try:
            return float(json.loads(self._sign_out_file(address).read_bytes())["signed_out_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0

    def _sends_secure_mail(self: Portal, address: str) -> bool:
        wanted = address.lower()
        for held in reversed(self.store.ids()):
            record = self._read(held)
            if record and str(record.get("sender", "")).lower() == wanted:
                return True
        return False

    def _sent(self: Portal, address: str) -> list[SentMessage]:
        now = datetime.now(UTC)
        wanted = address.lower()
        rows: list[SentMessage] = []
        for held in reversed(self.store.ids()):  # ids sort by time: the newest first
            record = self._read(held)
            if not record or str(record.get("sender", "")).lower() != wanted:
                continue
            status = held_status(record, now)
            try:
                body = self.store.read_body(held) if status == "held" else None
            except UserError:
                body = None
            room = (_parse(record["limit_at"]) - _parse(record["expires_at"])).days
            # Internal recipients with a reply link have a slot too; they read the mailbox copy.
            mailbox = [*record.get("delivered_with_banner", []),
                       *record.get("delivered_normally", [])]
            viewed = {r["address"]: r.get("first_viewed_at") for r in record["recipients"]}
            rows.append(SentMessage(
                held, _subject(body), status, record["held_at"], record["expires_at"],
                record["limit_at"], max(room, 0) if status == "held" else 0,
                record["definition"]["name"], record.get("sender_options", ""),
                [(r["address"], r.get("first_viewed_at")) for r in record["recipients"]
                 if r["address"] not in mailbox],
                [(a, viewed.get(a)) for a in mailbox]))
            if len(rows) >= MAX_LISTED:
                break
        return rows

    async def sender_home(self: Portal, request: web.Request) -> web.Response:
        address = self._sender(request)
        if address is None:
            return self.page(request, "sender_signin.html", title="Your secure messages",
                             action=self._sender_url("/code"))
        rows = await asyncio.to_thread(self._sent, address)
        return self.page(request, "sender_list.html", title="Your secure messages",
                         sender=address, rows=rows, base=self._sender_url(),
                         done=request.query.get("done", ""))

    async def sender_request_code(self: Portal, request: web.Request) -> web.Response:
        form = await request.post()
        given = form.get("address")
        address = given.strip() if isinstance(given, str) else ""
        if not (0 < len(address) <= MAX_ADDRESS and "@" in address
                and not any(c.isspace() or ord(c) < 32 for c in address)):
            return self.page(request, "sender_signin.html", 400, title="Your secure messages",
                             action=self._sender_url("/code"),
                             error="Enter your e-mail address.")
        ip = self._client_ip(request)
        subject = f"sender|{address.lower()}"
        if not (self.code_limit_ip.allow(ip) and self.code_limit_mailbox.allow(subject)
                and self.code_limit_recipient.allow(f"{ip}|{subject}")):
            self.log("rate-limited", what="sender-code-request", ip=ip)
            return self._notice(request, 429, "Too many codes requested",
                                "Wait a few minutes, then try again.")
        if await asyncio.to_thread(self._sends_secure_mail, address):
            code = self.codes.issue(subject)
            try:
                await submit(self.config.relay, "", [address],
                             sign_in_code_mail(address, code, round(self.config.code_ttl / 60),
                                               self.config.hostname, self.config.organisation),
                             self.config.hostname)
            except RelayUnavailable as exc:
                self.log("code-send-failed", what="sender", error=str(exc))
                return self._notice(request, 503, "The code could not be sent",
                                    "Please try again in a few minutes.")
            self.log("sender-code-sent", ip=ip)
        else:
            self.log("sender-code-refused", ip=ip, note="no secure message from that address")
        return self._sender_code_page(request, address, 200, None)

    def _sender_code_page(self: Portal, request: web.Request, address: str, status: int,
                          error: str | None) -> web.Response:
        return self.page(request, "sender_code.html", status, title="Enter your code",
                         address=address, masked=mask_address(address), error=error,
                         minutes=round(self.config.code_ttl / 60),
                         action=self._sender_url("/verify"), resend=self._sender_url("/code"))

    async def sender_verify(self: Portal, request: web.Request) -> web.Response:
        form = await request.post()
        address = form.get("address")
        given = form.get("code")
        if not isinstance(address, str) or not 0 < len(address) <= MAX_ADDRESS:
            return self._redirect(self._sender_url())
        ip = self._client_ip(request)
        subject = f"sender|{address.lower()}"
        if not (self.attempt_limit_ip.allow(ip)
                and self.attempt_limit_recipient.allow(f"{ip}|{subject}")):
            self.log("rate-limited", what="sender-code-attempt", ip=ip)
            return self._notice(request, 429, "Too many attempts",
                                "Wait a few minutes, then request a new code.")
        result = self.codes.check(subject, given if isinstance(given, str) else "")
        self.log("sender-code-checked", result=result, ip=ip)
        if result != CodeResult.OK:
            error = ("That code is not right." if result == CodeResult.WRONG else
                     "That code no longer works. Request a new code below.")
            return self._sender_code_page(request, address, 400, error)
        response = self._redirect(self._sender_url())
        response.set_cookie(self.session_cookie, self.signer.dumps(
            {"k": "s", "h": SENDER_SESSION, "r": address.lower(), "t": time.time(),
             "s": secrets.token_urlsafe(12)}, self.config.session_ttl), **self._cookie_flags())
        return response

    async def _owned(self: Portal, request: web.Request) -> tuple[str, str] | web.Response:
        """(sender, held id) for an action on one of the signed-in sender's messages that
        can still be read: an expired or withdrawn one has no content left to act on."""
        address = self._sender(request)
        if address is None:
            return self._redirect(self._sender_url())
        held = request.match_info["held"]
        record = await asyncio.to_thread(self._read, held)
        if record is None or str(record.get("sender", "")).lower() != address:
            return self._notice(request, 404, "No such message",
                                "It is not one of your secure messages.",
                                home=self._sender_url())
        status = held_status(record, datetime.now(UTC))
        if status != "held":
            return self._notice(request, 410, f"This message has {status}"
                                if status == "expired" else "This message was withdrawn",
                                "It can no longer be changed.", home=self._sender_url())
        return address, held

    async def sender_extend(self: Portal, request: web.Request) -> web.Response:
        owned = await self._owned(request)
        if isinstance(owned, web.Response):
            return owned
        _, held = owned
        given = (await request.post()).get("days")
        try:
            days = int(given) if isinstance(given, str) else 0
            await asyncio.to_thread(extend_held, self.store, held, days, datetime.now(UTC))
        except (ValueError, UserError) as exc:
            text = str(exc) if isinstance(exc, UserError) else "Enter a number of days."
            return self._notice(request, 400, "The expiry was not changed", text,
                                home=self._sender_url())
        self.log("sender-extended", held=held, days=days)
        return self._redirect(self._sender_url(f"?done=extended-{held}"))

    async def sender_revoke(self: Portal, request: web.Request) -> web.Response:
        owned = await self._owned(request)
        if isinstance(owned, web.Response):
            return owned
        _, held = owned
        await asyncio.to_thread(revoke_held, self.store, held, datetime.now(UTC))
        self.log("sender-revoked", held=held)
        return self._redirect(self._sender_url(f"?done=revoked-{held}"))

    async def sender_sign_out(self: Portal, request: web.Request) -> web.Response:
        address = self._sender(request)
        if address is not None:
            path = self._sign_out_file(address)
            path.parent.mkdir(exist_ok=True)
            data = json.dumps({"signed_out_at": time.time()}).encode()
            await asyncio.to_thread(self.store.spool.write_atomic, path, data)
        response = self._notice(request, 200, "You are signed out",
                                "Sign in again with a new code to see your secure messages.",
                                home=self._sender_url())
        response.del_cookie(self.session_cookie, path=self.cookie_path,
                            secure=not self.config.insecure_cookies)
        return response
