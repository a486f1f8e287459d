"""Domain names as an admin types them: normalisation and the wizard's batch rules.

A normalised domain is lower case, has no trailing dot and is in its A-label
(punycode) form, so it compares equal to what DNS and certificates use.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

import idna

MAX_BATCH = 50
_MAX_LABEL = 63
_MAX_NAME = 253
_LDH = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
# Already normal: lower-case LDH labels, no "--" anywhere (so no punycode or reserved labels),
# a top-level label starting with a letter. normalize_domain returns such a name unchanged.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NORMAL = re.compile(rf"(?:{_LABEL}\.)+[a-z](?:[a-z0-9-]{{0,61}}[a-z0-9])?")


class InvalidDomain(ValueError):
    """The text is not a usable mail domain; ``reason`` says why in words an admin can act on."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"{text!r}: {reason}")
        self.text = text
        self.reason = reason


def normalize_domain(text: str) -> str:
    """Return the canonical form of a domain typed by an admin, or raise InvalidDomain."""
    return _normalize_name(text, allow_single_label=False)


def is_normal_domain(text: str) -> bool:
    """True when ``text`` is known to be its own normal form without the IDNA work: the fast
    path for names connectwiz wrote itself. False only means "ask normalize_domain"."""
    return len(text) <= _MAX_NAME and "--" not in text and _NORMAL.fullmatch(text) is not None


def normalize_host(text: str) -> str:
    """A server's host as an admin types it: an IP address (canonical form, ``[v6]`` accepted)
    or a host name. Unlike a mail domain, a single label is allowed: internal servers are often
    known by a short name their resolver completes."""
    candidate = text.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return _normalize_name(candidate, allow_single_label=True)


def _normalize_name(text: str, *, allow_single_label: bool) -> str:
    name = text.strip()
    if not name:
        raise InvalidDomain(text, "empty")
    if "@" in name:
        raise InvalidDomain(text, "looks like an e-mail address; enter only the part after @")
    if "://" in name or any(c in name for c in "/\\?#"):
        raise InvalidDomain(text, "looks like a URL or path; enter only the domain name")
    if "*" in name:
        raise InvalidDomain(text, "wildcards are not allowed; enter each domain itself")
    if _is_ip_literal(name):
        raise InvalidDomain(text, "is an IP address, not a domain name")
    if any(c.isspace() for c in name):
        raise InvalidDomain(text, "contains a space")
    if not name.isascii():
        # UTS #46 mapping (case folding, full-width forms, ideographic dots) before splitting,
        # since a mapping can itself produce a dot.
        try:
            name = idna.uts46_remap(name, std3_rules=False, transitional=False)
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidDomain(text, f"is not a valid international name ({exc})") from None
    if name.endswith("."):
        name = name[:-1]
    labels = name.split(".")
    if any(label == "" for label in labels):
        raise InvalidDomain(text, "has an empty label (two dots in a row, or a leading dot)")
    ascii_labels = [_to_a_label(text, label) for label in labels]
    for label in ascii_labels:
        if len(label) > _MAX_LABEL:
            raise InvalidDomain(text, f"label {label[:20]!r}… is longer than 63 octets")
    result = ".".join(ascii_labels)
    if len(result) > _MAX_NAME:
        raise InvalidDomain(text, "name is longer than 253 octets")
    if len(ascii_labels) == 1 and not allow_single_label:
        raise InvalidDomain(text, "is a single label; a mail domain needs a dot (e.g. example.com)")
    if ascii_labels[-1].isdigit():  # also stops "10.0.0" passing as a short host name
        raise InvalidDomain(text, "top-level domain is all digits")
    return result


def _is_ip_literal(name: str) -> bool:
    candidate = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    if candidate.lower().startswith("ipv6:"):
        candidate = candidate[5:]
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def _to_a_label(text: str, label: str) -> str:
    """One label to its lower-case A-label, checking LDH and IDNA 2008 rules."""
    if label.isascii():
        lowered = label.lower()
        if lowered.startswith("xn--"):
            try:
                # Round-trip: the U-label must be valid IDNA 2008 and encode back the same.
                if idna.encode(idna.decode(lowered)).decode("ascii") != lowered:
                    raise idna.IDNAError("not canonical")
            except (idna.IDNAError, UnicodeError):
                raise InvalidDomain(text, f"label {label!r} is not valid punycode") from None
            return lowered
        if not _LDH.match(lowered):
            bad = sorted({c for c in lowered if not (c.isalnum() or c == "-")})
            if bad:
                shown = " ".join(repr(c) for c in bad)
                raise InvalidDomain(text, f"contains invalid characters: {shown}")
            raise InvalidDomain(text, f"label {label!r} starts or ends with a hyphen")
        if lowered[2:4] == "--":
            raise InvalidDomain(text, f"label {label!r} has '--' in positions 3-4 (reserved)")
        return lowered
    try:
        return idna.encode(label).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        reason = f"label {label!r} is not a valid international name ({exc})"
        raise InvalidDomain(text, reason) from None


def display_domain(domain: str) -> str:
    """The U-label form for display; falls back to the stored form if it cannot be decoded."""
    try:
        return idna.decode(domain)
    except (idna.IDNAError, UnicodeError):
        return domain


class Rejection(StrEnum):
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    EXISTS = "already exists"
    OVER_LIMIT = "over limit"


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One non-blank input line: either ``domain`` is set, or ``rejection`` and ``reason`` are."""

    line_no: int
    text: str
    domain: str | None = None
    rejection: Rejection | None = None
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.domain is not None


def parse_domain_batch(
    text: str, existing: Collection[str] = (), limit: int = MAX_BATCH
) -> list[BatchLine]:
    """Parse the "one domain per line" box. Every non-blank line gets a verdict; none is dropped.

    ``existing`` holds normalised domains already configured. Only accepted domains count
    towards ``limit``: the first ``limit`` valid new domains are accepted, later ones are
    rejected as over the limit so the admin can add them in the next batch.
    """
    lines: list[BatchLine] = []
    seen: dict[str, int] = {}
    accepted = 0
    for line_no, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            domain = normalize_domain(raw)
        except InvalidDomain as exc:
            lines.append(BatchLine(line_no, raw, rejection=Rejection.INVALID, reason=exc.reason))
            continue
        if domain in seen:
            reason = f"duplicate of line {seen[domain]}"
            lines.append(BatchLine(line_no, raw, rejection=Rejection.DUPLICATE, reason=reason))
            continue
        seen[domain] = line_no
        if domain in existing:
            reason = "already configured"
            lines.append(BatchLine(line_no, raw, rejection=Rejection.EXISTS, reason=reason))
            continue
        if accepted >= limit:
            reason = f"over the limit of {limit} domains per batch; add it in the next batch"
            lines.append(BatchLine(line_no, raw, rejection=Rejection.OVER_LIMIT, reason=reason))
            continue
        accepted += 1
        lines.append(BatchLine(line_no, raw, domain=domain))
    return lines
