"""Secure Messaging in the relay: hold messages for the portal, notify, add the banner.

The decision is ``policy.secure``'s; this module applies it to a queue entry, holding
content in ``relay.held``'s store. For each recipient held, in order: the record (with the
hash of a fresh token) is written, the notification (which carries the token) is queued,
then the recipient is marked ``held`` in the queue entry. A crash between two steps makes
the next attempt issue another token and notification; every issued token stays valid, so
the recipient may get two working links but never none. Tokens and message content are
never logged.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path
from typing import Any

from connectwiz.policy.model import SecureDefinition, SecureRouting, SecureSettings
from connectwiz.policy.secure import (
    REQUEST_HEADER,
    Route,
    SecureDecision,
    SecureIndex,
    banner_text,
    expiry_window,
)
from connectwiz.policy.secure_request import find_tag
from connectwiz.policy.wording import Wording, render
from connectwiz.relay.held import (
    RECORD_VERSION,
    HeldStore,
    iso_utc,
    token_hash,
)
from connectwiz.relay.msglog import MessageLog
from connectwiz.relay.queuefile import QueueEntry, Recipient
from connectwiz.relay.receipt import parse_ip
from connectwiz.relay.secure_content import (
    add_banner,
    head_of,
    header_addresses,
    parse_content,
    strip_header,
    strip_subject_tag,
    subject_bytes,
)
from connectwiz.relay.spool import Spool, new_message_id

BANNER_VARIANT = "banner"
_REQUEST = REQUEST_HEADER.lower().encode()
_HAS_TAGS = re.compile(r"<[a-zA-Z/][^>]*>")  # as add_banner judges a banner to be HTML
_LINK_TEXT = "\n\nReply securely in the Secure Messaging portal: {link}"
_LINK_HTML = '<p>Reply securely in the Secure Messaging portal: <a href="{link}">{link}</a></p>'


# -- the relay's side --------------------------------------------------------------------------


def _definition_data(d: SecureDefinition) -> dict[str, Any]:
    return {"name": d.name, "description": d.description, "allow_print": d.allow_print,
            "allow_reply": d.allow_reply, "allow_reply_all": d.allow_reply_all,
            "expiry_days": d.expiry_days, "max_extension_days": d.max_extension_days,
            "read_receipt": d.read_receipt, "routing": d.routing.value, "builtin": d.builtin}


@dataclass(slots=True)
class SecurePlan:
    """What Secure Messaging does to one queue entry; kept in ``entry.extra['secure']`` once
    it applies, so retries (and a restart) follow the same decision."""

    applied: bool
    routes: dict[str, str] = field(default_factory=dict)  # address -> Route value
    banner: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    subject_tag: str = ""  # the sender's [tag] to remove from the subject ("": none)

    def variant(self, address: str) -> str:
        if self.banner is not None and self.routes.get(address) == Route.BANNER:
            if address in self.state.get("reply_links", ()):
                return f"{BANNER_VARIANT}:{address}"  # a banner with their own portal link
            return BANNER_VARIANT
        return ""

    def portal(self, entry: QueueEntry) -> list[Recipient]:
        return [r for r in entry.pending() if self.routes.get(r.address) == Route.PORTAL]


class SecureMessaging:
    """Applies Secure Messaging to queue entries. Methods do blocking I/O: use a thread."""

    def __init__(self, spool: Spool, msglog: MessageLog, portal_url: str, hostname: str,
                 key_file: Path | None = None) -> None:
        self.spool = spool
        self.store = HeldStore(spool, key_file)
        self.msglog = msglog
        self.portal_url = portal_url.rstrip("/")
        self.hostname = hostname

    @staticmethod
    def may_apply(entry: QueueEntry, body: bytes, index: SecureIndex) -> bool:
        """A cheap test (no I/O) that rules most messages out before ``plan`` runs."""
        if entry.extra.get("secure"):
            return True
        if entry.is_bounce:
            return False
        head = head_of(body).lower()
        if _REQUEST in head:
            return True  # the header goes, whoever sent it; plan() looks closer
        tag = index.settings.subject_tag
        if tag and index.is_internal(entry.mail_from):
            subject = subject_bytes(head)
            if b"=?" in subject or b"[" + tag.lower().encode() in subject:
                return True  # a subject tag, maybe inside an encoded subject
        return not index.content_free and index.is_internal(entry.mail_from)

    def plan(self, entry: QueueEntry, body: bytes, index: SecureIndex) -> SecurePlan | None:
        """The plan for ``entry``; None when Secure Messaging has nothing to do with it."""
        state = entry.extra.get("secure")
        if state:
            return SecurePlan(True, dict(state["routes"]), state.get("banner"), state,
                              state.get("subject_tag", ""))
        if not self.may_apply(entry, body, index):
            return None  # the common case: no policy, no trigger, no header to look for
        content = parse_content(body)
        asked = bool(content.header(REQUEST_HEADER))
        tag = index.settings.subject_tag if index.is_internal(entry.mail_from) and find_tag(
            content.subject, index.settings.subject_tag) else ""
        decision = index.decide(entry.mail_from, entry.header_from,
                                [r.address for r in entry.pending()], parse_ip(entry.client_ip),
                                datetime.now(UTC), content)
        if not decision.applies:
            if not asked and not tag:
                return None
            if entry.attempts <= 1:  # the sender asked: say once why it was not applied
                self.msglog.append(entry.id, "secure", applied=False, reason=decision.reason,
                                   notes=list(decision.notes))
            return SecurePlan(False, subject_tag=tag)
        # The banner names who wrote the message: From:, else the envelope sender. A portal
        # reply comes from the original sender's envelope but was written by the recipient
        # in From:, external or (under a definition holding internal mail) a colleague.
        author = entry.header_from or entry.mail_from
        state = self._state(decision, index.settings, author, index.organisation)
        state["subject_tag"] = tag
        state["entry"] = {"id": entry.id, "mail_from": entry.mail_from,
                          "header_from": entry.header_from}
        entry.extra["secure"] = state
        self.spool.update_active(entry)
        self.msglog.append(entry.id, "secure", applied=True, definition=state["definition"]["name"],
                           reason=decision.reason, reasons=[r.why for r in decision.reasons],
                           routes=state["routes"], whys=state["whys"],
                           options=decision.options, notes=list(decision.notes))
        return SecurePlan(True, dict(state["routes"]), state["banner"], state, tag)

    def _state(self, decision: SecureDecision, settings: SecureSettings, author: str,
               organisation: str) -> dict[str, Any]:
        definition = decision.definition
        assert definition is not None
        wording = settings.wording
        now = datetime.now(UTC)
        expires, limit = expiry_window(now, definition, settings)
        banner = banner_text(definition, wording.banner)
        # Under a definition covering internal recipients, those who get the message in
        # their mailbox (the sender's client asked) may still reply securely: their banner
        # carries a personal portal link (seed 002).
        links = [o.recipient for o in decision.recipients if o.route is Route.BANNER] if (
            definition.routing is SecureRouting.ALL and definition.allow_reply
            and banner is not None) else []
        return {
            "definition": _definition_data(definition),
            "reason": decision.reason,
            "routes": {o.recipient: o.route.value for o in decision.recipients},
            "whys": {o.recipient: o.why for o in decision.recipients},
            # The template and its values: add_banner escapes them for HTML parts.
            "banner": banner,
            "reply_links": links,
            "banner_values": {"sender": author, "organisation": organisation},
            "notification": {"subject": wording.notification_subject,
                             "text": wording.notification_text,
                             "organisation": organisation},
            "requested": decision.requested,
            "sender_options": decision.options,
            "held_at": iso_utc(now), "expires_at": iso_utc(expires), "limit_at": iso_utc(limit),
            "max_retention_days": settings.max_retention_days,
        }

    def bodies(self, body: bytes, plan: SecurePlan | None) -> dict[str, bytes]:
        """Message bytes by variant: '' (as received, client header removed) and banner."""
        if plan is None:
            return {"": body}
        plain = strip_header(body, REQUEST_HEADER)
        if plan.subject_tag:
            plain = strip_subject_tag(plain, plan.subject_tag)
        out = {"": plain}
        if plan.banner is not None and Route.BANNER in plan.routes.values():
            values = plan.state.get("banner_values") or {}
            out[BANNER_VARIANT] = add_banner(plain, plan.banner, values)
            if plan.state.get("reply_links"):
                with_link = plan.banner + (_LINK_HTML if _HAS_TAGS.search(plan.banner)
                                           else _LINK_TEXT)
                for address, url in self._reply_links(plain, plan.state).items():
                    out[f"{BANNER_VARIANT}:{address}"] = add_banner(
                        plain, with_link, {**values, "link": url})
        return out

    def _reply_links(self, plain: bytes, state: dict[str, Any]) -> dict[str, str]:
        """A fresh portal link for each internal recipient in ``state['reply_links']``; the
        record (created here when the message has no portal recipient) gets its hash
        before any copy with the link leaves. Every attempt issues new links: earlier
        ones stay valid, as for notifications."""
        held_id = state["entry"]["id"]
        links: dict[str, str] = {}
        with self.store.locked(held_id):
            record = self._record(held_id, state, plain)
            by_address = {r["address"]: r for r in record["recipients"]}
            for address in state["reply_links"]:
                token = secrets.token_urlsafe(32)
                slot = by_address.setdefault(address, self._recipient(address, state))
                slot["token_sha256"].append(token_hash(token))
                links[address] = f"{self.portal_url}/m/{held_id}/{token}"
            record["recipients"] = list(by_address.values())
            self.store.write(record)
        self.msglog.append(held_id, "reply-links", recipients=list(links), held=held_id)
        return links

    def _record(self, held_id: str, state: dict[str, Any], plain: bytes) -> dict[str, Any]:
        """The held record, created with the content on first use. Call under the lock."""
        if self.store.exists(held_id):
            return self.store.read(held_id)
        self.store.write_body(held_id, plain)
        entry = state.get("entry") or {}
        return self._new_record(held_id, entry.get("mail_from", ""), entry.get("header_from"),
                                state, plain)

    def hold(self, entry: QueueEntry, plain: bytes, plan: SecurePlan) -> list[str]:
        """Hold ``entry`` for its portal recipients still pending and queue a notification
        for each; returns the notification queue ids. See the module doc for the order."""
        held_id = entry.id
        recipients = plan.portal(entry)
        if not recipients:
            return []
        state = plan.state
        notes: list[str] = []
        with self.store.locked(held_id):
            if not self.store.exists(held_id):
                self.store.write_body(held_id, plain)
                record = self._new_record(held_id, entry.mail_from, entry.header_from, state,
                                          plain)
            else:
                record = self.store.read(held_id)
            by_address = {r["address"]: r for r in record["recipients"]}
            issued: list[tuple[Recipient, str, str]] = []
            for rcpt in recipients:
                token = secrets.token_urlsafe(32)
                note_id = new_message_id()
                slot = by_address.setdefault(rcpt.address, self._recipient(rcpt.address, state))
                slot["token_sha256"].append(token_hash(token))
                slot["notifications"].append(note_id)
                issued.append((rcpt, token, note_id))
            record["recipients"] = list(by_address.values())
            self.store.write(record)
        for rcpt, token, note_id in issued:
            self._queue_notification(entry, rcpt.address, token, note_id, state)
            notes.append(note_id)
            rcpt.status = "held"
            rcpt.detail = f"held for the Secure Messaging portal; notification {note_id}"
        self.msglog.append(entry.id, "held", recipients=[r.address for r, _, _ in issued],
                           held=held_id, notifications=notes,
                           definition=state["definition"]["name"])
        self.spool.update_active(entry)
        return notes

    def _recipient(self, address: str, state: dict[str, Any]) -> dict[str, Any]:
        return {"address": address, "route_reason": state["whys"].get(address, ""),
                "token_sha256": [], "notifications": [], "first_viewed_at": None,
                "read_receipt_sent": False}

    def _new_record(self, held_id: str, sender: str, header_from: str | None,
                    state: dict[str, Any], plain: bytes) -> dict[str, Any]:
        routes = state["routes"]
        to, cc = header_addresses(plain)
        return {
            "version": RECORD_VERSION,
            "id": held_id,
            "sender": sender,
            "header_from": header_from,
            # Reply all is built from these, never from the envelope, which holds the Bcc's.
            "header_to": to,
            "header_cc": cc,
            "held_at": state["held_at"],
            "expires_at": state["expires_at"],
            "initial_expires_at": state["expires_at"],
            "limit_at": state["limit_at"],
            "extended_days": 0,
            "max_retention_days": state["max_retention_days"],
            "revoked_at": None,
            "definition": state["definition"],
            "reason": state["reason"],
            "requested_by_client": state["requested"],
            "sender_options": state.get("sender_options", ""),
            "recipients": [],
            "delivered_with_banner": [a for a, r in routes.items() if r == Route.BANNER],
            "delivered_normally": [a for a, r in routes.items() if r == Route.NORMAL],
        }

    def _queue_notification(self, entry: QueueEntry, address: str, token: str, note_id: str,
                            state: dict[str, Any]) -> None:
        data = notification(entry.mail_from, address, f"{self.portal_url}/m/{entry.id}/{token}",
                            state, self.hostname)
        note = QueueEntry(id=note_id, mail_from="", recipients=[Recipient(address)],
                          received_at=time.time(), client_ip="local",
                          extra={"secure_notification": entry.id})
        self.spool.accept(note, data)
        self.msglog.append(note_id, "received", client_ip="local", helo=None, mail_from="",
                           recipients=[address], tls_version=None, tls_cipher=None,
                           size=len(data), result="accepted", receipt_option=None,
                           policy=f"Secure Messaging notification for {entry.id}")


def notification(sender: str, recipient: str, link: str, state: dict[str, Any],
                 hostname: str) -> bytes:
    """The e-mail telling a recipient a secure message waits in the portal. It names the
    sender and the expiry, never the subject or content. Its texts are the bundle's
    wording as it was when the message was held (``state['notification']``)."""
    definition = state["definition"]
    wording = state.get("notification") or {}
    default = Wording()
    organisation = wording.get("organisation", "")
    values = {"sender": sender, "recipient": recipient, "link": link,
              "expires": state["expires_at"], "organisation": organisation}
    subject = render(wording.get("subject", default.notification_subject), values)
    text = render(wording.get("text", default.notification_text), values)
    msg = EmailMessage()
    service = f"{organisation} Secure Messaging" if organisation else "Secure Messaging"
    msg["From"] = formataddr((service, sender))
    msg["To"] = recipient
    msg["Subject"] = " ".join(subject.split())
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=hostname)
    msg["Auto-Submitted"] = "auto-generated"
    lines = text.splitlines()
    if definition["allow_reply"]:
        lines.append("You can reply securely from the portal.")
    if definition["routing"] == SecureRouting.ALL:
        lines.append("The sender's organisation delivers this message through the portal only.")
    msg.set_content("\r\n".join(lines) + "\r\n")
    return msg.as_bytes(policy=email_policy.SMTP)
