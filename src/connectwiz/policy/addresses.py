"""E-mail addresses as policies compare them: local part case-insensitive, domain normalised.

Policy matching never trusts its input to be well formed (a relay sees what clients send),
so it uses the lenient :func:`canonical_address`; commands that read an address typed by an
admin use the strict :func:`normalize_address` to report a clear error instead.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from connectwiz.policy.domains import InvalidDomain, is_normal_domain, normalize_domain

_MAX_LOCAL = 64
_SPECIALS = frozenset('()<>[]:;@\\,"')
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


class InvalidAddress(ValueError):
    """The text is not a usable e-mail address; ``reason`` says why."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"{text!r}: {reason}")
        self.text = text
        self.reason = reason


class Address(NamedTuple):
    """A canonical address. ``text`` is '' for the null sender; ``domain`` is None when the
    address has no usable domain part (then it can only match by its full text)."""

    text: str
    domain: str | None


def _strip(text: str) -> str:
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text


def normalize_address(text: str, *, fold_local: bool = True) -> str:
    """Return ``local@domain`` with the domain normalised, or raise InvalidAddress.
    Surrounding angle brackets are accepted.

    ``fold_local``: lower-case the local part, as policies compare addresses. An address that
    is sent to a server (validate's RCPT TO) keeps it as typed: RFC 5321 §2.4 leaves its case
    to the receiving server.
    """
    address = _strip(text)
    if not address:
        raise InvalidAddress(text, "empty")
    if "@" not in address:
        raise InvalidAddress(text, "has no @domain part")
    local, _, domain = address.rpartition("@")
    if not local:
        raise InvalidAddress(text, "nothing before the @")
    if any(c.isspace() for c in local):
        raise InvalidAddress(text, "contains a space")
    # RFC 5321 allows specials only inside a quoted local part; unquoted, they would break
    # the `RCPT TO:<...>` line the address ends up in.
    bad = sorted({c for c in local if ord(c) < 32 or ord(c) == 127
                  or (c in _SPECIALS and not _QUOTED.fullmatch(local))})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise InvalidAddress(text, f"invalid characters before the @: {shown}")
    if len(local.encode("utf-8")) > _MAX_LOCAL:
        raise InvalidAddress(text, "local part is longer than 64 octets")
    try:
        domain = normalize_domain(domain)
    except InvalidDomain as exc:
        raise InvalidAddress(text, f"domain {exc.reason}") from None
    return f"{local.lower() if fold_local else local}@{domain}"


def canonical_address(text: str) -> Address:
    """Lenient form used for matching: never raises. '' and '<>' are the null sender."""
    address = _strip(text)
    if not address:
        return Address("", None)
    local, at, domain = address.rpartition("@")
    if not at:
        return Address(address.lower(), None)
    normalized = _lenient_domain(domain)
    return Address(f"{local.lower()}@{normalized or domain.lower()}", normalized)


def canonical_domain(text: str) -> str:
    """Lenient domain form for index keys: normalised when valid, else lower-cased as is, so
    an entry that can never be a valid domain simply never matches a real one."""
    return _lenient_domain(text) or text.strip().lower()


def _lenient_domain(text: str) -> str | None:
    lowered = text.lower()
    if text.isascii() and is_normal_domain(lowered):  # cheap per-message matching
        return lowered
    try:
        return normalize_domain(text)
    except InvalidDomain:
        return None
