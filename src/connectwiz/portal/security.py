"""Security helpers of the portal, pure and clock-injectable so they test without a server.

- keys are derived from the secure key (HKDF), one per purpose, so a cookie signature can
  never be replayed as a code hash;
- cookies are ``base64url(json).base64url(hmac)``, checked in constant time;
- CSRF tokens are an HMAC of a random nonce the browser holds in its own signed cookie;
- one-time codes are kept only as HMACs, die after ``ttl`` seconds, a success, or
  ``max_attempts`` wrong tries;
- rate limits are sliding windows per key (recipient, client IP).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nh3
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

Clock = Callable[[], float]


def derive_key(secret: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"connectwiz portal {purpose}".encode()).derive(secret)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signed, expiring values for cookies. ``loads`` returns None for anything forged,
    damaged or expired; it never raises on hostile input."""

    def __init__(self, key: bytes, clock: Clock = time.time) -> None:
        self.key = key
        self.clock = clock

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest())

    def dumps(self, value: dict[str, Any], ttl: float) -> str:
        body = _b64(json.dumps({"v": value, "x": self.clock() + ttl},
                               separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def loads(self, text: str | None) -> dict[str, Any] | None:
        if not text or text.count(".") != 1:
            return None
        body, mac = text.split(".")
        if not _same(mac, self._mac(body)):
            return None
        try:
            data = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("v"), dict):
            return None
        if not isinstance(data.get("x"), int | float) or self.clock() >= data["x"]:
            return None
        return data["v"]


def _same(given: str, expected: str) -> bool:
    """Constant-time equality that also copes with non-ASCII input (compare_digest on str
    raises for it)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def csrf_token(key: bytes, nonce: str) -> str:
    return hmac.new(key, f"csrf|{nonce}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(key: bytes, nonce: str | None, given: str | None) -> bool:
    if not nonce or not given:
        return False
    return _same(given, csrf_token(key, nonce))


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds for each key (sliding window)."""

    def __init__(self, limit: int, window: float, clock: Clock = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._events: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = self.clock()
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        return events

    def allow(self, key: str) -> bool:
        """Count an event for ``key``; False (and not counted) when over the limit."""
        events = self._recent(key)
        if len(events) >= self.limit:
            return False
        events.append(self.clock())
        if len(self._events) > 10_000:  # forget idle keys so memory stays bounded
            horizon = self.clock() - self.window
            for stale in [k for k, v in self._events.items() if not v or v[-1] <= horizon]:
                del self._events[stale]
        return True

    def retry_after(self, key: str) -> float:
        events = self._recent(key)
        return 0.0 if len(events) < self.limit else events[0] + self.window - self.clock()


@dataclass
class _Code:
    digest: bytes
    expires: float
    wrong: int = 0


class CodeResult:
    OK = "ok"
    WRONG = "wrong"
    BURNT = "burnt"  # too many wrong tries: the code is gone, a new one must be requested
    NONE = "none"  # no live code (never requested, expired, used, burnt)


@dataclass
class CodeBook:
    """One-time mailbox codes, kept only as HMACs in memory. A new request replaces the
    previous code; a portal restart forgets them all (recipients request a new one)."""

    key: bytes
    ttl: float = 600.0
    max_attempts: int = 3
    digits: int = 6
    clock: Clock = time.monotonic
    _codes: dict[str, _Code] = field(default_factory=dict)

    def _digest(self, subject: str, code: str) -> bytes:
        return hmac.new(self.key, f"{subject}|{code}".encode(), hashlib.sha256).digest()

    def issue(self, subject: str) -> str:
        code = f"{secrets.randbelow(10 ** self.digits):0{self.digits}d}"
        if len(self._codes) > 10_000:  # codes nobody came back for: keep memory bounded
            now = self.clock()
            for stale in [s for s, c in self._codes.items() if now >= c.expires]:
                del self._codes[stale]
        self._codes[subject] = _Code(self._digest(subject, code), self.clock() + self.ttl)
        return code

    def attempts_left(self, subject: str) -> int:
        entry = self._codes.get(subject)
        return 0 if entry is None else self.max_attempts - entry.wrong

    def check(self, subject: str, given: str) -> str:
        entry = self._codes.get(subject)
        if entry is None or self.clock() >= entry.expires:
            self._codes.pop(subject, None)
            return CodeResult.NONE
        given = "".join(given.split())
        if hmac.compare_digest(entry.digest, self._digest(subject, given)):
            del self._codes[subject]  # single use
            return CodeResult.OK
        entry.wrong += 1
        if entry.wrong >= self.max_attempts:
            del self._codes[subject]
            return CodeResult.BURNT
        return CodeResult.WRONG


# -- content ---------------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"[^\w .()+-]+")


def safe_filename(name: str | None, fallback: str = "attachment") -> str:
    """A download name with no path, control characters or quotes; never empty, never
    hidden (leading dot), at most 120 characters with the extension kept. Spaces stay
    (single ones): "Statement March.pdf" is what the sender attached."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = " ".join(name.split())  # every kind of whitespace, incl. line breaks: one space
    name = _SAFE_NAME.sub("_", name).strip("._ ") or fallback
    if len(name) > 120:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 119 - len(ext)] + "." + ext) if dot and len(ext) <= 10 else name[:120]
    return name


def ascii_filename(name: str) -> str:
    return name.encode("ascii", "replace").decode().replace("?", "_")


_SRCLESS_IMG = re.compile(r"<img(?![^>]*\ssrc=)[^>]*>")
_TABLE = re.compile(r"<(/?)table\b[^>]*>")


def sanitize_html(markup: str) -> tuple[str, int]:
    """The message's HTML as the portal shows it, and how many remote images it left out:
    nh3's default allow-list (no script, style, event handlers, forms or frames), links
    made noopener noreferrer, images only from ``data:`` (a remote one would tell its
    server that, when and where the message was read; the CSP blocks them anyway, which
    would leave broken-image boxes), top-level tables wrapped so they scroll sideways."""
    remote = 0

    def keep(tag: str, attribute: str, value: str) -> str | None:
        nonlocal remote
        if tag == "img" and attribute == "src" and not value.startswith("data:"):
            remote += 1
            return None
        return value

    cleaned = nh3.clean(markup, link_rel="noopener noreferrer", attribute_filter=keep)
    return _wrap_tables(_SRCLESS_IMG.sub("", cleaned)), remote


def _wrap_tables(markup: str) -> str:
    """Each outermost ``<table>`` in a ``<div class="table-wrap">`` (the scrolling box with
    the sideways cue). ``markup`` is nh3's output, so tags are well formed and balanced."""
    out, depth, at = [], 0, 0
    for m in _TABLE.finditer(markup):
        closing = bool(m.group(1))
        if not closing and depth == 0:
            out += [markup[at:m.start()], '<div class="table-wrap">', m.group(0)]
            at = m.end()
        elif closing and depth == 1:
            out += [markup[at:m.end()], "</div>"]
            at = m.end()
        depth = max(0, depth + (-1 if closing else 1))
    out.append(markup[at:])
    return "".join(out)


_URL = re.compile(r"\bhttps?://[^\s<>\"'\x00-\x1f]+", re.IGNORECASE)


def linkify(text: str) -> list[tuple[str, str | None]]:
    """``text`` cut into (piece, link) pairs: a link for each http(s) URL (trailing
    punctuation left out), None for the text between. The template escapes both."""
    pieces: list[tuple[str, str | None]] = []
    at = 0
    for m in _URL.finditer(text):
        url = m.group(0).rstrip(".,;:!?)]}'")
        pieces.append((text[at:m.start()], None))
        pieces.append((url, url))
        at = m.start() + len(url)
    pieces.append((text[at:], None))
    return [p for p in pieces if p[0]]


def mask_address(address: str) -> str:
    """``t****@bank.example``: enough for the recipient to recognise, little for others
    (a fixed number of stars, so not even the length shows)."""
    local, at, domain = address.rpartition("@")
    return f"{local[:1]}****@{domain}" if at else f"{address[:1]}****"
