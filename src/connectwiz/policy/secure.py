"""Secure Messaging decisions: does it apply to a message, with which definition, and why.

Pure: no I/O (the relay parses the message into a :class:`MessageContent`). Rules, in the
admin's words in docs/secure-messaging.md:

* Only mail from an internal sender (the envelope sender's domain is internal) is considered.
* For each recipient, Secure Messaging is *triggered* by any of: the sender's request (the
  client header :data:`REQUEST_HEADER` or a subject tag, for every recipient; see
  ``secure_request``: a definition may limit who requests it), the policy that selection
  picks for the pair (unless it is Take No Action), and every content trigger in effect for
  the pair whose conditions match (triggers are cumulative, not a single winner).
* The bypass policy that selection picks for the pair wins over all of that when it is
  "disable": the recipient is treated as if nothing had triggered.
* Several definitions may be triggered; the message gets the single most restrictive one
  (:func:`restrictiveness`), ties going to the earlier reason (client header, then policies,
  then triggers in bundle order).
* Routing when it applies: an external recipient with a trigger of its own is held for the
  portal and notified; other external recipients get the message as usual. Internal
  recipients get it as usual with the definition's banner, except under a definition with
  ``routing = all`` (the built-in All Recipients) when the client header did not ask for it:
  then they read it in the portal too. Bypassed recipients get it as usual, no banner.

Selection of one policy (secure and bypass) reuses ``policy.select``: scopes, validity,
override and specificity work exactly as for Secure Delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from connectwiz.policy.addresses import canonical_address
from connectwiz.policy.content import (
    AttachmentInfo,
    Examined,
    condition_matches,
    describe_condition,
)
from connectwiz.policy.model import (
    BypassOption,
    PolicyModel,
    SecureDefinition,
    SecureRouting,
    SecureSettings,
    SecureTrigger,
    TriggerMatch,
)
from connectwiz.policy.secure_request import (
    SenderRequest,
    apply_options,
    find_tag,
    may_request,
    parse_header,
)
from connectwiz.policy.select import (
    IPAddress,
    MessageContext,
    _address_groups,
    _InternalDomains,
    _Selector,
)
from connectwiz.policy.wording import DEFAULT_BANNER

if TYPE_CHECKING:  # ldap3 loads only where a directory is read
    from connectwiz.directory.ldap import DirectoryCache

REQUEST_HEADER = "X-Connectwiz-Secure"

ALL_RECIPIENTS = SecureDefinition(
    "All Recipients",
    description="internal and external recipients read the message in the portal",
    expiry_days=30, max_extension_days=30, routing=SecureRouting.ALL, builtin=True,
)
EXTERNAL_RECIPIENTS = SecureDefinition(
    "External Recipients",
    description="external recipients read the message in the portal; internal ones get it "
                "in their mailbox with a banner",
    expiry_days=30, max_extension_days=30, builtin=True,
)
BUILTIN_DEFINITIONS = (ALL_RECIPIENTS, EXTERNAL_RECIPIENTS)
# A client asking for a definition that does not exist still gets confidentiality.
FALLBACK_DEFINITION = EXTERNAL_RECIPIENTS

def banner_text(definition: SecureDefinition, default: str = DEFAULT_BANNER) -> str | None:
    """The banner template for internal recipients: the definition's own, else ``default``
    (the bundle's wording); None when the definition removes it."""
    if definition.banner is None:
        return default if default.strip() else None
    return definition.banner if definition.banner.strip() else None


def expiry_days(definition: SecureDefinition, settings: SecureSettings) -> int:
    cap = settings.max_retention_days
    return cap if definition.expiry_days is None else min(definition.expiry_days, cap)


def expiry_window(held_at: datetime, definition: SecureDefinition,
                  settings: SecureSettings) -> tuple[datetime, datetime]:
    """(expires_at, limit_at): when external recipients lose access, and the latest the
    sender may extend that to (the definition's extension, never past the retention)."""
    expires = held_at + timedelta(days=expiry_days(definition, settings))
    retention_end = held_at + timedelta(days=settings.max_retention_days)
    limit = min(expires + timedelta(days=definition.max_extension_days), retention_end)
    return expires, max(limit, expires)


def extend_expiry(expires_at: datetime, limit_at: datetime, days: int) -> datetime:
    """The expiry ``days`` later; ValueError (one line) when that passes the limit."""
    if days <= 0:
        raise ValueError("the extension must be at least one day")
    new = expires_at + timedelta(days=days)
    if new > limit_at:
        room = (limit_at - expires_at).days
        raise ValueError(
            f"extending by {days} days would pass the limit {limit_at.isoformat()} "
            f"(at most {max(room, 0)} more days)")
    return new


def restrictiveness(definition: SecureDefinition,
                    settings: SecureSettings) -> tuple[bool, int, int, int, bool]:
    """Higher is more restrictive: portal for everyone, fewer permissions, shorter expiry,
    less room to extend, read receipts on."""
    allowed = definition.allow_print + definition.allow_reply + definition.allow_reply_all
    return (definition.routing is SecureRouting.ALL, -allowed,
            -expiry_days(definition, settings), -definition.max_extension_days,
            definition.read_receipt)


@dataclass(frozen=True, slots=True)
class MessageContent:
    """What content triggers look at. ``body`` is the text of the message's text parts."""

    subject: str = ""
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[AttachmentInfo, ...] = ()

    def header(self, name: str) -> list[str]:
        wanted = name.strip().lower()
        return [v for k, v in self.headers if k.strip().lower() == wanted]

    @property
    def requested(self) -> str | None:
        """The definition the sender's client asked for (the header's first value)."""
        values = [v.strip() for v in self.header(REQUEST_HEADER) if v.strip()]
        return values[0] if values else None

    def examined(self) -> Examined:
        return Examined(self.subject, self.body, self.headers, self.attachments)


def trigger_matches(trigger: SecureTrigger, examined: Examined) -> list[str]:
    """Descriptions of the matching conditions; empty when the trigger does not match."""
    hits = [describe_condition(c) for c in trigger.conditions if condition_matches(c, examined)]
    if trigger.match is TriggerMatch.ALL and len(hits) < len(trigger.conditions):
        return []
    return hits


class Source(StrEnum):
    CLIENT = "client"
    POLICY = "policy"
    TRIGGER = "trigger"


_SOURCE_ORDER = {Source.CLIENT: 0, Source.POLICY: 1, Source.TRIGGER: 2}


class Route(StrEnum):
    NORMAL = "normal"  # delivered as usual; Secure Messaging does not apply to this recipient
    BANNER = "banner"  # internal: delivered as usual, with the definition's banner
    PORTAL = "portal"  # held for the portal; the recipient gets a notification


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason Secure Messaging applies: who asked, for which definition, why."""

    source: Source
    definition: str
    why: str
    position: int = 0  # the policy's or trigger's place in the bundle (1-based)


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    recipient: str
    internal: bool
    route: Route
    reasons: tuple[Reason, ...]  # what triggered Secure Messaging for this recipient
    why: str  # one line: why this route
    bypass: str | None = None  # the bypass policy that exempted the recipient


@dataclass(frozen=True, slots=True)
class SecureDecision:
    applies: bool
    definition: SecureDefinition | None
    reason: str
    reasons: tuple[Reason, ...]  # every distinct reason, in precedence order
    recipients: tuple[RecipientOutcome, ...]
    requested: str | None = None  # what the sender asked for (header value, or the tag)
    notes: tuple[str, ...] = ()  # a refused request, options ignored or limited
    options: str = ""  # the sender's options as applied, e.g. "reply=no, expiry=3d"

    def routed(self, route: Route) -> list[str]:
        return [r.recipient for r in self.recipients if r.route is route]


def _label(position: int, narrative: str) -> str:
    return f"#{position} {narrative!r}"


class SecureIndex:
    """Built once per loaded model, like ``PolicyIndex``; answers per message."""

    def __init__(self, model: PolicyModel, directory: DirectoryCache | None = None) -> None:
        self.settings = model.secure_settings
        self.organisation = model.organisation.name  # for the wording's {organisation}
        self._internal = _InternalDomains(model.organisation.internal_domains)
        groups = self._groups = _address_groups(model)
        self._directory = directory  # groups the bundle does not define are the directory's
        self.definitions: dict[str, SecureDefinition] = {d.name: d for d in BUILTIN_DEFINITIONS}
        for d in model.secure_definitions:
            if d.name in self.definitions:
                raise ValueError(f"secure definition {d.name!r} is defined twice or reuses a "
                                 f"built-in name")
            self.definitions[d.name] = d
        for kind, items in (("secure policy", model.secure_policies),
                            ("secure trigger", model.secure_triggers)):
            for i, item in enumerate(items, start=1):
                if item.definition is not None and item.definition not in self.definitions:
                    raise ValueError(f"{kind} #{i} {item.narrative!r} names unknown secure "
                                     f"definition {item.definition!r}")
        self._policies = _Selector(model.secure_policies, self._internal, groups, directory)
        self._triggers = _Selector(model.secure_triggers, self._internal, groups, directory)
        self._bypass = _Selector(model.secure_bypass, self._internal, groups, directory)
        # Without policies or triggers only a client header can ask for Secure Messaging.
        self.content_free = not (model.secure_policies or model.secure_triggers)

    def _members(self, group: str) -> frozenset[str]:
        """A group's addresses: the bundle's group, else the directory's (cached)."""
        if group in self._groups:
            return self._groups[group]
        return self._directory.snapshot.members(group) if self._directory else frozenset()

    def sender_request(self, content: MessageContent) -> SenderRequest | None:
        """The header's request, else the subject tag's; None when the sender asked nothing."""
        if content.requested is not None:
            return parse_header(content.requested)
        found = find_tag(content.subject, self.settings.subject_tag)
        return found[0] if found else None

    def is_internal(self, address: str) -> bool:
        domain = canonical_address(address).domain
        return domain is not None and domain in self._internal

    def _reasons(self, ctx: MessageContext, hits: Callable[[int, SecureTrigger], list[str]],
                 requested: Reason | None) -> list[Reason]:
        found = [requested] if requested else []
        winner, _, candidates = self._policies.select(ctx, "secure")
        if winner is not None and winner.policy.definition is not None:
            matched = f" ({candidates[0].matched})" if candidates[0].matched else ""
            found.append(Reason(Source.POLICY, winner.policy.definition,
                                f"secure policy {_label(winner.position, winner.policy.narrative)}"
                                f" selects {winner.policy.definition!r}{matched}",
                                winner.position))
        for position, trig in self._triggers.every_match(ctx, lambda i, t: bool(hits(i, t))):
            found.append(Reason(Source.TRIGGER, trig.definition,
                                f"content trigger {_label(position, trig.narrative)} matched "
                                f"({'; '.join(hits(position, trig))}) for {trig.definition!r}",
                                position))
        return found

    def _bypassed(self, ctx: MessageContext) -> str | None:
        winner, _, _ = self._bypass.select(ctx, "bypass")
        if winner is None or winner.policy.option is not BypassOption.DISABLE:
            return None
        return (f"bypass policy {_label(winner.position, winner.policy.narrative)} disables "
                f"Secure Messaging")

    def decide(self, envelope_from: str, header_from: str | None, recipients: Sequence[str],
               client_ip: IPAddress | None, at: datetime,
               content: MessageContent) -> SecureDecision:
        request = self.sender_request(content)
        asked = (f"the sender's client asked ({REQUEST_HEADER}: {content.requested})"
                 if content.requested is not None else
                 f"the sender asked with [{self.settings.subject_tag}] in the subject")
        requested_name = content.requested or (
            f"[{self.settings.subject_tag}] in the subject" if request else None)
        if not self.is_internal(envelope_from):
            why = (f"the sender <{envelope_from}> is not internal; Secure Messaging applies "
                   f"only to mail from internal senders")
            return SecureDecision(False, None, why, (), tuple(
                RecipientOutcome(r, self.is_internal(r), Route.NORMAL, (), why)
                for r in recipients), requested_name)

        notes = list(request.notes) if request else []
        requested = refused = None
        if request is not None:
            name = request.definition or self.settings.tag_definition
            if name not in self.definitions:
                requested = Reason(Source.CLIENT, FALLBACK_DEFINITION.name,
                                   f"{asked} for {name!r}, which is not a secure definition; "
                                   f"{FALLBACK_DEFINITION.name!r} is used")
            elif not may_request(self.definitions[name], envelope_from, self._members):
                refused = (f"<{envelope_from}> may not request {name!r} (not in its "
                           f"may_request)")
                notes.append(f"{refused}; the policies decide instead")
            else:
                requested = Reason(Source.CLIENT, name, f"{asked} for {name!r}")

        examined: list[Examined] = []
        matched: dict[int, list[str]] = {}  # trigger position -> hits, once per message

        def hits(position: int, trigger: SecureTrigger) -> list[str]:
            if position not in matched:
                if not examined:
                    examined.append(content.examined())
                matched[position] = trigger_matches(trigger, examined[0])
            return matched[position]

        per_rcpt: list[tuple[str, list[Reason], str | None]] = []
        for rcpt in recipients:
            ctx = MessageContext(envelope_from, header_from, rcpt, client_ip, at)
            per_rcpt.append((rcpt, self._reasons(ctx, hits, requested), self._bypassed(ctx)))
        if refused and not any(reasons for _, reasons, _ in per_rcpt):
            # Refused, and no policy or trigger applies: the sender still asked for
            # confidentiality, so the message gets the fallback rather than none.
            requested = Reason(Source.CLIENT, FALLBACK_DEFINITION.name,
                               f"{refused}, and no policy or trigger applies, so "
                               f"{FALLBACK_DEFINITION.name!r} is used")
            per_rcpt = [(r, [requested], b) for r, _, b in per_rcpt]

        ordered: list[Reason] = []
        for _, reasons, bypass in per_rcpt:
            if bypass is None:
                ordered.extend(r for r in reasons if r not in ordered)
        ordered.sort(key=lambda r: (_SOURCE_ORDER[r.source], r.position))
        if not ordered:
            bypassed = [b for _, reasons, b in per_rcpt if reasons and b]
            why = (f"triggered, but {bypassed[0]}" if bypassed else
                   "no client header, secure policy or content trigger asks for it")
            return SecureDecision(False, None, why, (), tuple(
                RecipientOutcome(r, self.is_internal(r), Route.NORMAL, tuple(rs),
                                 b or "Secure Messaging does not apply", b)
                for r, rs, b in per_rcpt), requested_name, tuple(notes))

        definition = self._choose(ordered)
        options = ""
        if request is not None:
            definition, limited = apply_options(definition, request, self.settings)
            notes.extend(limited)
            options = request.describe()
        names = list(dict.fromkeys(r.definition for r in ordered))
        first = next(r for r in ordered if r.definition == definition.name)
        reason = f"Secure Messaging applies with {definition.name!r}: {first.why}"
        if len(names) > 1:
            reason += (f"; the most restrictive of {len(names)} triggered definitions "
                       f"({', '.join(repr(n) for n in names)})")
        if options:
            reason += f"; the sender's options: {options}"
        client_asked = requested is not None
        outcomes = tuple(self._route(rcpt, reasons, bypass, definition, client_asked)
                         for rcpt, reasons, bypass in per_rcpt)
        return SecureDecision(True, definition, reason, tuple(ordered), outcomes, requested_name,
                              tuple(notes), options)

    def _choose(self, reasons: list[Reason]) -> SecureDefinition:
        definitions = [self.definitions[r.definition] for r in reasons]
        best = max(range(len(definitions)),
                   key=lambda i: (restrictiveness(definitions[i], self.settings), -i))
        return definitions[best]

    def _route(self, rcpt: str, reasons: list[Reason], bypass: str | None,
               definition: SecureDefinition, client_asked: bool) -> RecipientOutcome:
        internal = self.is_internal(rcpt)
        if bypass is not None:
            return RecipientOutcome(rcpt, internal, Route.NORMAL, tuple(reasons),
                                    f"delivered as usual: {bypass}", bypass)
        if internal:
            if definition.routing is SecureRouting.ALL and not client_asked:
                return RecipientOutcome(rcpt, True, Route.PORTAL, tuple(reasons),
                                        f"{definition.name!r} holds the message for internal "
                                        f"recipients too")
            why = ("delivered as usual with the banner"
                   if banner_text(definition, self.settings.wording.banner) is not None
                   else "delivered as usual (the definition removes the banner)")
            if definition.routing is SecureRouting.ALL:
                why += "; the sender's client asked, so internal recipients are not held"
            return RecipientOutcome(rcpt, True, Route.BANNER, tuple(reasons), why)
        if reasons:
            return RecipientOutcome(rcpt, False, Route.PORTAL, tuple(reasons),
                                    "held for the portal; the recipient is notified")
        return RecipientOutcome(rcpt, False, Route.NORMAL, (),
                                "delivered as usual: nothing triggered Secure Messaging for "
                                "this recipient")
