"""The held message as the portal shows it: headers, a safe body, the attachments."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

from connectwiz.portal.security import safe_filename, sanitize_html

# Python's MIME parser recurses once per nesting level and dies of RecursionError near a
# thousand (a 500 in the portal). Real mail nests a few levels; past this many multipart
# declarations the message is not parsed at all and the page shows a notice instead.
MAX_MULTIPARTS = 100
_MULTIPART = re.compile(rb"(?im)^content-type:[ \t]*(?:\r?\n[ \t]+)?multipart/")
TOO_DEEP = ("This message is built in a way the portal cannot show safely (too many nested "
            "parts). Ask the sender to send it again in a simpler form.")


@dataclass(frozen=True, slots=True)
class Attachment:
    index: int
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class MessageView:
    sender: str
    subject: str
    date: str
    to: str
    cc: str
    message_id: str
    html: str | None  # sanitised; None when the message has only text
    text: str
    attachments: tuple[Attachment, ...]
    remote_images: int = 0  # images left out of the HTML: they would load from elsewhere
    notice: str = ""  # why the body is not shown, when it is not


def _too_deep(body: bytes) -> bool:
    return len(_MULTIPART.findall(body, 0, len(body))) > MAX_MULTIPARTS


def _parse(body: bytes) -> EmailMessage:
    msg = message_from_bytes(body, policy=email_policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _header(msg: EmailMessage, name: str) -> str:
    try:
        return str(msg.get(name, "") or "")
    except Exception:  # a malformed header shows as empty rather than failing the page
        return ""


def _date(msg: EmailMessage) -> str:
    raw = _header(msg, "Date")
    try:
        return parsedate_to_datetime(raw).strftime("%d %b %Y, %H:%M %z")
    except (TypeError, ValueError):
        return raw


def _attachment_parts(msg: EmailMessage) -> list[EmailMessage]:
    """Every leaf part except the text and HTML bodies shown on the page."""
    bodies = {id(p) for p in (msg.get_body(("html",)), msg.get_body(("plain",)))
              if p is not None}
    return [p for p in msg.walk()  # type: ignore[misc]
            if not p.is_multipart() and id(p) not in bodies]


def _content(part: EmailMessage) -> str:
    try:
        return str(part.get_content())
    except (LookupError, ValueError, AttributeError):  # unknown charset: best effort
        payload = part.get_payload(decode=True) or b""
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def view(body: bytes) -> MessageView:
    if _too_deep(body):
        head = _parse(body.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        return MessageView(
            sender=_header(head, "From"), subject=_header(head, "Subject"), date=_date(head),
            to=_header(head, "To"), cc=_header(head, "Cc"),
            message_id=_header(head, "Message-ID").strip(), html=None, text="",
            attachments=(), notice=TOO_DEEP)
    msg = _parse(body)
    html_part = msg.get_body(("html",))
    text_part = msg.get_body(("plain",))
    html, remote = sanitize_html(_content(html_part)) if html_part is not None else (None, 0)
    text = _content(text_part) if text_part is not None else ""
    attachments = []
    for n, part in enumerate(_attachment_parts(msg)):
        payload = part.get_payload(decode=True)
        attachments.append(Attachment(n, safe_filename(part.get_filename(), f"part-{n + 1}"),
                                      part.get_content_type(),
                                      len(payload) if isinstance(payload, bytes) else 0))
    return MessageView(
        sender=_header(msg, "From"), subject=_header(msg, "Subject"), date=_date(msg),
        to=_header(msg, "To"), cc=_header(msg, "Cc"),
        message_id=_header(msg, "Message-ID").strip(), html=html, text=text,
        attachments=tuple(attachments), remote_images=remote)


def attachment(body: bytes, index: int) -> tuple[Attachment, bytes] | None:
    if _too_deep(body):
        return None
    msg = _parse(body)
    parts = _attachment_parts(msg)
    if not 0 <= index < len(parts):
        return None
    part = parts[index]
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    return Attachment(index, safe_filename(part.get_filename(), f"part-{index + 1}"),
                      part.get_content_type(), len(data)), data
