"""Secure Messaging in the relay: hold messages for the portal, notify, add the banner.

The decision is ``policy.secure``'s; this module applies it to a queue entry. Layout under
the spool (docs/secure-messaging.md is the reference the portal, part 2, reads)::

    secure/<id>/message.enc   the message as held (client header removed), encrypted with
                              the secure key (AES-256-GCM, kept outside the spool)
    secure/<id>/record.json   definition snapshot, expiry, recipients with token hashes
    secure/<id>/lock          flock'd by whoever rewrites record.json

Durability follows the queue: every file goes through ``Spool.write_atomic`` (temp file,
fsync, rename, fsync the folder). For each recipient held, in order: the record (with the
hash of a fresh token) is written, the notification (which carries the token) is queued,
then the recipient is marked ``held`` in the queue entry. A crash between two steps makes
the next attempt issue another token and notification; every issued token stays valid, so
the recipient may get two working links but never none. Tokens and message content are
never logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connectwiz.errors import UserError
from connectwiz.policy.model import SecureDefinition, SecureRouting, SecureSettings
from connectwiz.policy.secure import (
    REQUEST_HEADER,
    Route,
    SecureDecision,
    SecureIndex,
    banner_text,
    expiry_window,
    extend_expiry,
)
from connectwiz.policy.secure_request import find_tag
from connectwiz.policy.wording import Wording, render
from connectwiz.relay.msglog import MessageLog
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
from connectwiz.relay.spool import QueueEntry, Recipient, Spool, new_message_id

RECORD_VERSION = 1
BODY_FILE = "message.enc"
_SEALED = b"CWZ-AESGCM-1\n"  # format marker of message.enc: marker, 12-byte nonce, ciphertext
BANNER_VARIANT = "banner"
_REQUEST = REQUEST_HEADER.lower().encode()
_HAS_TAGS = re.compile(r"<[a-zA-Z/][^>]*>")  # as add_banner judges a banner to be HTML
_LINK_TEXT = "\n\nReply securely in the Secure Messaging portal: {link}"
_LINK_HTML = '<p>Reply securely in the Secure Messaging portal: <a href="{link}">{link}</a></p>'


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def token_hash(token: str) -> str:
    """What the record keeps of a token; the portal hashes what it is given and compares
    with ``hmac.compare_digest``."""
    return hashlib.sha256(token.encode()).hexdigest()


def find_recipient(record: dict[str, Any], token: str) -> dict[str, Any] | None:
    """The recipient a link's token belongs to, or None; the check the portal makes. Every
    stored hash is compared, in constant time, so timing tells nothing about the others."""
    digest = token_hash(token)
    found = None
    for recipient in record.get("recipients", []):
        for stored in recipient.get("token_sha256", []):
            if hmac.compare_digest(stored, digest):
                found = recipient
    return found


# -- the secure key: held content is encrypted with it, and it never lives in the spool ------


def default_key_path() -> Path:
    """``$XDG_CONFIG_HOME/connectwiz/secure.key`` (``~/.config`` when unset or empty)."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "connectwiz" / "secure.key"


def load_secure_key(path: Path | None = None, create: bool = True) -> bytes:
    """The 32-byte key in ``path`` (64 hex digits), created 0600 on first use when ``create``
    (the relay's set-up; the portal only reads it). A key file others can read is refused,
    as ssh refuses such a private key."""
    path = path or default_key_path()
    if not path.exists() and not create:
        raise UserError(f"secure key {path}: no such file; give the relay's --secure-key "
                        "(the relay creates it)")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            try:
                os.write(fd, secrets.token_hex(32).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise UserError(f"secure key {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise UserError(f"secure key {path}: readable by others; chmod 600 it")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise UserError(f"secure key {path}: expected 64 hex digits")
    return key


def seal(key: bytes, held_id: str, data: bytes) -> bytes:
    """Encrypt ``data``; the held id is authenticated too, so files cannot be swapped."""
    nonce = secrets.token_bytes(12)
    return _SEALED + nonce + AESGCM(key).encrypt(nonce, data, held_id.encode())


def unseal(key: bytes, held_id: str, blob: bytes) -> bytes:
    if not blob.startswith(_SEALED):
        raise UserError(f"held message {held_id}: not in the encrypted format")
    rest = blob[len(_SEALED):]
    try:
        return AESGCM(key).decrypt(rest[:12], rest[12:], held_id.encode())
    except InvalidTag:
        raise UserError(f"held message {held_id}: cannot be decrypted with this secure key "
                        f"(another key, or damaged)") from None


# -- the held store ----------------------------------------------------------------------------


class HeldStore:
    """``<spool>/secure``: held messages and their records. Blocking I/O: use a thread.
    The secure key is read (or created) only when content is written or read, so listing,
    extending and revoking need no key."""

    def __init__(self, spool: Spool, key_file: Path | None = None,
                 create_key: bool = True) -> None:
        self.spool = spool
        self.root = spool.root / "secure"
        self.key_file = key_file
        self.create_key = create_key  # False for the portal: only the relay makes the key
        self._key: bytes | None = None

    def key(self) -> bytes:
        if self._key is None:
            self._key = load_secure_key(self.key_file, self.create_key)
        return self._key

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, held_id: str) -> Path:
        if not re.fullmatch(r"[0-9A-Za-z]+", held_id):
            raise UserError(f"{held_id!r} is not a held message id")
        return self.root / held_id.upper()

    @contextlib.contextmanager
    def locked(self, held_id: str) -> Iterator[Path]:
        folder = self._dir(held_id)
        folder.mkdir(exist_ok=True)
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield folder
        finally:
            os.close(fd)

    def exists(self, held_id: str) -> bool:
        return (self._dir(held_id) / "record.json").is_file()

    def read(self, held_id: str) -> dict[str, Any]:
        path = self._dir(held_id) / "record.json"
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            raise UserError(f"no held message {held_id!r} in {self.root}") from None
        except ValueError:  # written atomically, so only outside damage gets here
            raise UserError(f"{path}: damaged (not JSON); fix or remove it") from None

    def write(self, record: dict[str, Any]) -> None:
        data = json.dumps(record, indent=2, sort_keys=True).encode()
        self.spool.write_atomic(self._dir(record["id"]) / "record.json", data)

    def write_body(self, held_id: str, body: bytes) -> None:
        sealed = seal(self.key(), held_id.upper(), body)
        self.spool.write_atomic(self._dir(held_id) / BODY_FILE, sealed)

    def read_body(self, held_id: str) -> bytes | None:
        """The held message, decrypted; None once its content is deleted."""
        try:
            blob = (self._dir(held_id) / BODY_FILE).read_bytes()
        except FileNotFoundError:
            return None
        return unseal(self.key(), held_id.upper(), blob)

    def delete_body(self, held_id: str) -> bool:
        """Delete the held content (revoked or expired); True when there was some."""
        path = self._dir(held_id) / BODY_FILE
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the deletion itself survives a crash
        finally:
            os.close(fd)
        return True

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/record.json"))

    def update(self, held_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read, change and rewrite a record under its lock; returns the new record."""
        if not self.exists(held_id):
            raise UserError(f"no held message {held_id!r} in {self.root}")
        with self.locked(held_id):
            record = self.read(held_id)
            change(record)
            self.write(record)
        return record


def held_status(record: dict[str, Any], now: datetime) -> str:
    if record.get("revoked_at"):
        return "revoked"
    if now >= _parse_iso(record["expires_at"]):
        return "expired"
    return "held"


def extend_held(store: HeldStore, held_id: str, days: int, now: datetime) -> dict[str, Any]:
    """Push the expiry ``days`` later, within the limit the definition allowed."""

    def change(record: dict[str, Any]) -> None:
        status = held_status(record, now)
        if status == "revoked":
            raise UserError(f"{held_id}: revoked; it cannot be extended")
        try:
            new = extend_expiry(_parse_iso(record["expires_at"]),
                                _parse_iso(record["limit_at"]), days)
        except ValueError as exc:
            raise UserError(f"{held_id}: {exc}") from None
        record["expires_at"] = _iso(new)
        record["extended_days"] = record.get("extended_days", 0) + days
        unlock_recipients(record)

    return store.update(held_id, change)


def unlock_recipients(record: dict[str, Any]) -> None:
    """Give every recipient a fresh set of code guesses: the admin's answer to a link the
    portal locked after too many wrong codes (portal.limits keeps those counters)."""
    for r in record["recipients"]:
        for key in ("locked_at", "code_wait_until"):
            r.pop(key, None)
        r["wrong_codes"] = 0


def revoke_held(store: HeldStore, held_id: str, now: datetime) -> dict[str, Any]:
    """Recipients can no longer read it; the held copy of the content is deleted."""

    def change(record: dict[str, Any]) -> None:
        if not record.get("revoked_at"):
            record["revoked_at"] = _iso(now)

    record = store.update(held_id, change)
    store.delete_body(held_id)
    return record


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
            "held_at": _iso(now), "expires_at": _iso(expires), "limit_at": _iso(limit),
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
