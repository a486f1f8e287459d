"""What a sender asks for, per message: a definition and options, by header or subject tag.

Two ways any mail client has (docs/secure-messaging.md, "Senders choose"):

* the header ``X-Connectwiz-Secure: <definition>[; option=value ...]``;
* a tag in the subject, ``[secure]`` or ``[secure:<definition>, option=value, ...]`` (the
  word is ``[secure_messaging] subject_tag``; the tag is removed before delivery).

Options only ever narrow what the definition allows: ``print``, ``reply`` and ``reply_all``
can be switched off (asking to switch on what the definition forbids changes nothing), and
``expiry`` may be anything from one day to the definition's expiry plus its ``Allow Sender
to Extend`` maximum. Anything else is noted, never an error: the sender asked for
confidentiality, so the message stays secure whatever they typed.

A definition may list who may request it (``may_request``); a sender outside that list
falls back to what policies and triggers decide (see ``SecureIndex.decide``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

from connectwiz.policy.addresses import canonical_address
from connectwiz.policy.model import SecureDefinition, SecureSettings

_YES = {"yes", "on", "true", "1"}
_NO = {"no", "off", "false", "0"}
_SWITCHES = {"print": "allow_print", "reply": "allow_reply", "reply_all": "allow_reply_all"}
_DAYS = re.compile(r"(\d{1,5})\s*d?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SenderRequest:
    """A sender's per-message request. ``definition`` None means the tag's default."""

    via: str  # "header" or "subject tag"
    definition: str | None
    switches: tuple[tuple[str, bool], ...] = ()  # (definition field, wanted), in order given
    expiry_days: int | None = None
    notes: tuple[str, ...] = ()  # options that were not understood

    def describe(self) -> str:
        parts = [f"{k.removeprefix('allow_')}={'yes' if v else 'no'}" for k, v in self.switches]
        if self.expiry_days is not None:
            parts.append(f"expiry={self.expiry_days}d")
        return ", ".join(parts)


def _options(items: list[str], via: str, definition: str | None) -> SenderRequest:
    switches: dict[str, bool] = {}
    expiry = None
    notes = []
    for item in items:
        key, _, value = (s.strip() for s in item.partition("="))
        key, value = key.lower().replace("-", "_"), value.lower()
        if key in _SWITCHES and value in _YES | _NO:
            switches[_SWITCHES[key]] = value in _YES
        elif key == "expiry" and (m := _DAYS.fullmatch(value)) and int(m.group(1)) >= 1:
            expiry = int(m.group(1))
        else:
            notes.append(f"ignored the option {item.strip()!r} (known: print, reply, "
                         f"reply_all = yes|no; expiry = <days>d)")
    return SenderRequest(via, definition, tuple(switches.items()), expiry, tuple(notes))


def parse_header(value: str) -> SenderRequest:
    """``Name; reply=no; expiry=3d``: the definition, then options."""
    name, *items = value.split(";")
    return _options([i for i in items if i.strip()], "header", name.strip() or None)


@lru_cache(maxsize=16)
def _tag_pattern(tag: str) -> re.Pattern[str]:
    return re.compile(r"\s*\[\s*" + re.escape(tag) + r"\s*(?::([^\]]*))?\]\s*", re.IGNORECASE)


def find_tag(subject: str, tag: str) -> tuple[SenderRequest, str] | None:
    """The request in the subject's first tag and the subject without every tag; None when
    there is no tag (or tags are switched off with an empty ``subject_tag``)."""
    if not tag:
        return None
    pattern = _tag_pattern(tag)
    m = pattern.search(subject)
    if m is None:
        return None
    names: list[str] = []
    options: list[str] = []
    for item in (m.group(1) or "").split(","):
        if item.strip():
            (options if "=" in item else names).append(item.strip())
    request = _options(options, "subject tag", names[0] if names else None)
    if len(names) > 1:
        request = replace(request, notes=(*request.notes,
                                          f"ignored the extra names {names[1:]!r} in the tag"))
    return request, pattern.sub(" ", subject).strip()


def may_request(definition: SecureDefinition, sender: str,
                members: Callable[[str], frozenset[str]]) -> bool:
    """True when the definition lists nobody (everyone may) or lists the sender: the
    address, its domain or a parent domain, or an address group holding it (``members``
    gives a group's addresses, the bundle's or the directory's)."""
    who = definition.requesters
    if who.everyone:
        return True
    address = canonical_address(sender)
    if address.text in {canonical_address(a).text for a in who.addresses}:
        return True
    domain = address.domain or ""
    if any(domain == d or domain.endswith("." + d) for d in who.domains):
        return True
    return any(address.text in members(g) for g in who.groups)


def apply_options(definition: SecureDefinition, request: SenderRequest,
                  settings: SecureSettings) -> tuple[SecureDefinition, list[str]]:
    """The definition as this message uses it, and a note for each option it limited.

    The latest expiry the sender may reach stays what the definition allows (its expiry
    plus its extension, within retention), so a shorter expiry leaves more room to extend.
    """
    notes = []
    changes: dict[str, object] = {}
    for field_name, wanted in request.switches:
        allowed = getattr(definition, field_name)
        if wanted and not allowed:
            notes.append(f"{field_name.removeprefix('allow_')}=yes is not allowed by "
                         f"{definition.name!r}; it stays off")
        elif not wanted and allowed:
            changes[field_name] = False
    if changes.get("allow_reply") is False:
        changes["allow_reply_all"] = False  # reply all is a kind of reply
    if request.expiry_days is not None:
        cap = settings.max_retention_days
        base = cap if definition.expiry_days is None else min(definition.expiry_days, cap)
        limit = min(base + definition.max_extension_days, cap)
        days = request.expiry_days
        if days > limit:
            notes.append(f"expiry={days}d is more than {definition.name!r} allows; "
                         f"{limit} days are used")
            days = limit
        changes["expiry_days"] = days
        changes["max_extension_days"] = limit - days
    return replace(definition, **changes), notes  # type: ignore[arg-type]
