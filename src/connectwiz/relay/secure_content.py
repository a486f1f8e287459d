"""Secure Messaging's view of message bytes: text for content triggers, the addresses
everyone can see, and the rewrites (client header, subject tag, banner) applied before a
copy leaves. Pure functions on bytes; a message the parser chokes on is left as it is."""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Iterator, Mapping
from email import message_from_bytes
from email import policy as email_policy
from email.errors import HeaderParseError
from email.header import Header, decode_header, make_header
from email.message import EmailMessage
from email.utils import getaddresses
from html.parser import HTMLParser

from connectwiz.policy.content import AttachmentInfo
from connectwiz.policy.secure import MessageContent
from connectwiz.policy.secure_request import find_tag
from connectwiz.policy.wording import render


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _Text()
    parser.feed(markup)
    parser.close()
    return " ".join("".join(parser.parts).split())


def head_of(body: bytes) -> bytes:
    """The header block (with its last CRLF), or all of ``body`` when it has no body."""
    end = body.find(b"\r\n\r\n")
    return body if end < 0 else body[: end + 2]


def _parse(body: bytes) -> EmailMessage:
    msg = message_from_bytes(body, policy=email_policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _text_parts(msg: EmailMessage) -> Iterator[EmailMessage]:
    for part in msg.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        if part.get_content_type() in ("text/plain", "text/html"):
            yield part  # type: ignore[misc]


def parse_content(body: bytes) -> MessageContent:
    """Subject, text of the text parts (HTML without tags) and headers, for the triggers.
    A message the parser chokes on still yields what could be read."""
    try:
        msg = _parse(body)
        headers = tuple((k, str(v)) for k, v in msg.items())
        subject = str(msg.get("Subject", ""))
    except Exception:  # hostile headers: fall back to nothing rather than fail the message
        return MessageContent()
    texts = []
    with contextlib.suppress(Exception):
        for part in _text_parts(msg):
            with contextlib.suppress(LookupError, ValueError, AttributeError):
                content = part.get_content()
                if part.get_content_type() == "text/html":
                    content = html_to_text(content)
                texts.append(content)
    return MessageContent(subject=subject, body="\n".join(texts), headers=headers,
                          attachments=attachments(msg))


def attachments(msg: EmailMessage) -> tuple[AttachmentInfo, ...]:
    """Every part that is an attachment or names a file, with its name and MIME type."""
    found = []
    with contextlib.suppress(Exception):  # hostile MIME: keep what was read
        for part in msg.walk():
            if part.is_multipart():
                continue
            name = part.get_filename() or ""
            if name or part.get_content_disposition() == "attachment":
                found.append(AttachmentInfo(name, part.get_content_type().lower()))
    return tuple(found)


def header_addresses(body: bytes) -> tuple[list[str], list[str]]:
    """The addresses in the To: and Cc: headers (the ones every recipient can see)."""
    try:
        msg = message_from_bytes(head_of(body) + b"\r\n", policy=email_policy.compat32)
        return tuple(  # type: ignore[return-value]
            [a for _, a in getaddresses([str(v) for v in msg.get_all(name, [])])
             if "@" in a and not any(c.isspace() or ord(c) < 32 for c in a)]
            for name in ("To", "Cc"))
    except Exception:  # a header the parser chokes on names nobody: Reply all falls back
        return [], []


def strip_header(body: bytes, name: str) -> bytes:
    """``body`` without every ``name:`` header line (and its continuation lines)."""
    end = body.find(b"\r\n\r\n")
    head, rest = (body, b"") if end < 0 else (body[: end + 2], body[end + 2:])
    wanted = name.lower().encode() + b":"
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(wanted)
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + rest


def subject_bytes(head: bytes) -> bytes:
    """The raw Subject: field of a header block (with continuation lines), b"" without one;
    a byte scan, so the relay can rule out a subject tag without parsing the message."""
    at = head.lower().find(b"\nsubject:")
    if at < 0:
        if not head.lower().startswith(b"subject:"):
            return b""
        at = -1
    end = at + 1
    while True:
        end = head.find(b"\r\n", end)
        if end < 0 or head[end + 2:end + 3] not in (b" ", b"\t"):
            return head[at + 1:] if end < 0 else head[at + 1:end]
        end += 2


def strip_subject_tag(body: bytes, tag: str) -> bytes:
    """``body`` with every ``[tag...]`` removed from its Subject: (decoded first, so a tag in
    an encoded subject goes too); unchanged when there is none."""
    end = body.find(b"\r\n\r\n")
    head, rest = (body, b"") if end < 0 else (body[: end + 2], body[end + 2:])
    lines = head.split(b"\r\n")
    for i, line in enumerate(lines):
        if not line.lower().startswith(b"subject:"):
            continue
        j = i + 1
        while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
            j += 1
        raw = b"\r\n".join(lines[i:j])[len(b"subject:"):].decode("utf-8", "replace")
        try:
            subject = str(make_header(decode_header(" ".join(raw.split()))))
        except (LookupError, ValueError, HeaderParseError):
            return body  # a subject that cannot be decoded cannot hold a tag we could see
        found = find_tag(subject, tag)
        if found is None:
            return body
        new = found[1]
        value = new if new.isascii() else Header(new, "utf-8").encode(linesep="\r\n")
        lines[i:j] = [b"Subject: " + value.encode("ascii")]
        return b"\r\n".join(lines) + rest
    return body


def add_banner(body: bytes, banner: str, values: Mapping[str, str] | None = None) -> bytes:
    """Put the ``banner`` template, its placeholders filled with ``values``, at the top of
    every text body part (not attachments). A template with HTML tags goes into HTML parts
    as it is, with the values escaped, and into plain parts as text. Whether it is HTML is
    judged on the template, never on the values (a From: address cannot inject markup)."""
    values = values or {}
    is_html = bool(re.search(r"<[a-zA-Z/][^>]*>", banner))
    filled = render(banner, values, for_html=is_html)
    plain = html_to_text(filled) if is_html else filled
    markup = filled if is_html else (
        '<div class="connectwiz-secure-banner" style="border:1px solid #888;padding:6px;'
        f'margin-bottom:12px">{html.escape(filled)}</div>')
    try:
        msg = _parse(body)
        changed = False
        for part in list(_text_parts(msg)):
            try:
                content = part.get_content()
            except (LookupError, ValueError, AttributeError):
                continue  # an unknown charset: leave the part alone
            subtype = part.get_content_subtype()
            if subtype == "html":
                m = re.search(r"<body[^>]*>", content, re.IGNORECASE)
                at = m.end() if m else 0
                content = content[:at] + markup + content[at:]
            else:
                content = f"{plain}\r\n\r\n{content}"
            part.set_content(content, subtype=subtype)
            changed = True
        return msg.as_bytes(policy=email_policy.SMTP) if changed else body
    except Exception:  # a message the parser cannot rebuild goes out unchanged
        return body
