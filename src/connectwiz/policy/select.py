"""Policy selection: which one delivery policy and which one receipt policy apply to a message.

Rules (docs/policy-selection.md has the admin's version):

* A policy is a *candidate* when its Emails From scope matches the sender and its Emails To
  scope matches the recipient; a Bi-Directional policy also matches with the two swapped.
* A candidate is *in effect* when it is enabled, ``start <= at < end`` and, when it lists
  source IP ranges, the client's IP is inside one of them.
* Among candidates in effect, override policies beat the others; then the most specific wins,
  comparing (From level, To level) lexicographically: the From side decides, the To side
  breaks a tie. Levels: individual 4 > domain 3 > address group or address attribute 2 >
  internal/external 1 > everyone 0. A remaining tie goes to the policy earlier in the bundle.
* No candidate in effect: delivery uses :data:`DEFAULT_DELIVERY` (opportunistic TLS), receipt
  uses opportunistic TLS.

Scopes: ``internal`` matches the organisation's internal domains *and their subdomains*;
``domain`` matches exactly the listed domains (a subdomain has its own MX hosts, which were
not validated, so it is not covered implicitly). ``address_group`` and ``individual`` compare
whole addresses; ``address_group`` names a group of the bundle or, failing that, of the
directory, and ``address_attribute`` looks the address's attributes up in the directory
(connectwiz.directory.ldap: a cached snapshot, never a query per message).
The null sender matches only ``everyone``. Every ``applies`` value is
accepted on both sides, since a Bi-Directional policy evaluates its To scope against the
sender anyway (connectwiz.bundle.schema checks the rest of a scope when a bundle loads).

Scale: policies are indexed at construction by the domain / address keys of one of their
scopes, so a message looks up a few keys and checks only the policies found there plus the
(short) list of policies whose two scopes are both everyone/internal/external.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Generic, TypeVar

from connectwiz.directory.snapshot import attribute_pair
from connectwiz.policy.addresses import Address, canonical_address, canonical_domain
from connectwiz.policy.model import (
    Applies,
    BasedOn,
    DeliveryDefinition,
    DeliveryOption,
    DeliveryPolicy,
    EncryptionMode,
    PolicyModel,
    ReceiptOption,
    ReceiptPolicy,
    Scope,
    SecureBypass,
    SecurePolicy,
    SecureTrigger,
    Validity,
)

if TYPE_CHECKING:  # ldap3 loads only where a directory is read
    from connectwiz.directory.ldap import DirectoryCache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_DELIVERY = DeliveryDefinition(
    name="Default (Opportunistic TLS)",
    option=DeliveryOption.OPPORTUNISTIC,
    encryption_mode=EncryptionMode.RELAXED,
    min_tls="1.2",
)
DEFAULT_RECEIPT = ReceiptOption.OPPORTUNISTIC

SPECIFICITY: Mapping[Applies, int] = {
    Applies.EVERYONE: 0,
    Applies.INTERNAL: 1,
    Applies.EXTERNAL: 1,
    Applies.ADDRESS_GROUP: 2,
    Applies.ADDRESS_ATTRIBUTE: 2,
    Applies.DOMAIN: 3,
    Applies.INDIVIDUAL: 4,
}
_LEVEL_NAME: Mapping[Applies, str] = {
    Applies.EVERYONE: "everyone",
    Applies.INTERNAL: "internal",
    Applies.EXTERNAL: "external",
    Applies.ADDRESS_GROUP: "address group",
    Applies.ADDRESS_ATTRIBUTE: "address attribute",
    Applies.DOMAIN: "domain",
    Applies.INDIVIDUAL: "individual address",
}
_KEYED_BY_DOMAIN = frozenset({Applies.DOMAIN})
_KEYED_BY_ADDRESS = frozenset({Applies.ADDRESS_GROUP, Applies.INDIVIDUAL})


@dataclass(frozen=True, slots=True)
class MessageContext:
    """What selection looks at. ``envelope_from`` is '' for the null sender; ``header_from``
    None means the message has no usable From: header, and then the envelope sender stands
    in for it."""

    envelope_from: str
    header_from: str | None
    recipient: str
    client_ip: IPAddress | None
    at: datetime

    def __post_init__(self) -> None:
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError("MessageContext.at must be timezone-aware")


class Outcome(StrEnum):
    """What happened to a policy whose From and To scopes match the message."""

    APPLIES = "applies"
    LOST = "lost"
    DISABLED = "disabled"
    NOT_YET_VALID = "not yet valid"
    EXPIRED = "expired"
    SOURCE_IP = "source IP not in range"


# Secure Messaging (policy/secure.py) selects its policies with the same machinery.
P = TypeVar("P", DeliveryPolicy, ReceiptPolicy, SecurePolicy, SecureTrigger, SecureBypass)


@dataclass(frozen=True, slots=True)
class Candidate(Generic[P]):
    """A policy whose scopes match the message; ``why`` is one line for explain."""

    policy: P
    position: int  # 1-based, in bundle order
    outcome: Outcome
    why: str
    swapped: bool = False  # matched only with sender and recipient swapped (Bi-Directional)
    sender: str = ""  # the sender address that matched (header or envelope, per based_on)
    matched: str = ""  # which address groups or attributes matched, for explain


@dataclass(frozen=True, slots=True)
class DeliveryDecision:
    policy: DeliveryPolicy | None  # None: no policy in effect, the default applies
    definition: DeliveryDefinition
    reason: str
    candidates: tuple[Candidate[DeliveryPolicy], ...]


@dataclass(frozen=True, slots=True)
class ReceiptDecision:
    policy: ReceiptPolicy | None  # None: no policy in effect, the default applies
    option: ReceiptOption
    reason: str
    candidates: tuple[Candidate[ReceiptPolicy], ...]


def specificity(policy: DeliveryPolicy | ReceiptPolicy) -> tuple[int, int]:
    """(From level, To level); compared lexicographically, higher wins."""
    return SPECIFICITY[policy.from_.applies], SPECIFICITY[policy.to.applies]


def describe_level(scope: Scope) -> str:
    return _LEVEL_NAME[scope.applies]


class _InternalDomains:
    def __init__(self, domains: Iterable[str]) -> None:
        self._domains = frozenset(canonical_domain(d) for d in domains)

    def __contains__(self, domain: str) -> bool:
        # The domain itself or any parent: sales.example.com is internal if example.com is.
        while True:
            if domain in self._domains:
                return True
            dot = domain.find(".")
            if dot < 0:
                return False
            domain = domain[dot + 1 :]


def _address_groups(model: PolicyModel) -> dict[str, frozenset[str]]:
    """Each address group's members as the canonical addresses scopes compare."""
    return {
        name: frozenset(canonical_address(m).text for m in members) - {""}
        for name, members in model.organisation.address_groups.items()
    }


class _ScopeMatcher:
    """One compiled Emails From / Emails To scope. Bundle groups compile to index keys;
    directory groups and attributes are looked up in the directory cache's current snapshot
    at match time (a refresh changes them without rebuilding the index)."""

    __slots__ = ("applies", "attributes", "directory", "directory_groups", "internal", "keys",
                 "static_groups")

    def __init__(
        self, scope: Scope, internal: _InternalDomains, groups: Mapping[str, frozenset[str]],
        directory: DirectoryCache | None = None,
    ) -> None:
        self.applies = scope.applies
        self.internal = internal
        self.directory = directory
        self.static_groups = {g: groups[g] for g in scope.specifically if g in groups} \
            if scope.applies is Applies.ADDRESS_GROUP else {}
        self.directory_groups: tuple[str, ...] = ()
        self.attributes: tuple[tuple[str, str], ...] = ()
        if scope.applies is Applies.DOMAIN:
            self.keys = frozenset(canonical_domain(d) for d in scope.specifically)
        elif scope.applies is Applies.INDIVIDUAL:
            self.keys = frozenset(canonical_address(a).text for a in scope.specifically) - {""}
        elif scope.applies is Applies.ADDRESS_GROUP:
            # A name the bundle defines is the bundle's group; any other is the directory's.
            self.keys = frozenset().union(*self.static_groups.values())
            self.directory_groups = tuple(g for g in scope.specifically if g not in groups)
        elif scope.applies is Applies.ADDRESS_ATTRIBUTE:
            self.keys = frozenset()
            self.attributes = tuple(attribute_pair(a) for a in scope.specifically)
        else:
            self.keys = frozenset()

    @property
    def indexable(self) -> bool:
        """Whether every address this scope matches is in ``keys``."""
        return self.applies in _KEYED_BY_DOMAIN or (
            self.applies in _KEYED_BY_ADDRESS and not self.directory_groups)

    def matches(self, address: Address) -> bool:
        applies = self.applies
        if applies is Applies.EVERYONE:
            return True
        # The null sender ('' with no domain) falls through every test below.
        if applies is Applies.DOMAIN:
            return address.domain in self.keys
        if applies in _KEYED_BY_ADDRESS:
            return address.text in self.keys or bool(self._directory_groups(address))
        if applies is Applies.ADDRESS_ATTRIBUTE:
            return bool(self._attributes(address))
        if address.domain is None:
            return False
        return (address.domain in self.internal) == (applies is Applies.INTERNAL)

    def _directory_groups(self, address: Address) -> list[str]:
        if not self.directory_groups or self.directory is None or not address.text:
            return []
        snapshot = self.directory.snapshot
        return [g for g in self.directory_groups if address.text in snapshot.members(g)]

    def _attributes(self, address: Address) -> list[str]:
        if self.directory is None or not address.text:
            return []
        snapshot = self.directory.snapshot
        return [f"{a}={v}" for a, v in self.attributes if snapshot.has(address.text, a, v)]

    def describe(self, address: Address) -> str:
        """Which group or attribute made this scope match ``address`` ('' for other scopes),
        for explain."""
        if self.applies is Applies.ADDRESS_GROUP:
            found = [f"bundle group {g!r}" for g, members in self.static_groups.items()
                     if address.text in members]
            found += [f"directory group {g!r}" for g in self._directory_groups(address)]
            return f"<{address.text}> is in " + " and ".join(found) if found else ""
        if self.applies is Applies.ADDRESS_ATTRIBUTE:
            found = self._attributes(address)
            return f"<{address.text}> has directory attribute " + " and ".join(found) \
                if found else ""
        return ""


@dataclass(frozen=True, slots=True)
class _Prepared(Generic[P]):
    policy: P
    position: int
    from_: _ScopeMatcher
    to: _ScopeMatcher

    @property
    def validity(self) -> Validity:
        return self.policy.validity

    def rank(self) -> tuple[bool, int, int, int]:
        f, t = specificity(self.policy)
        return self.validity.override, f, t, -self.position


@dataclass(frozen=True, slots=True)
class _Addresses:
    """The message's addresses in canonical form."""

    envelope: Address
    header: Address
    recipient: Address

    def senders(self, based_on: BasedOn) -> tuple[Address, ...]:
        if based_on is BasedOn.ENVELOPE:
            return (self.envelope,)
        if based_on is BasedOn.HEADER:
            return (self.header,)
        return (self.header, self.envelope)  # header first: it wins when both match


def _addresses(ctx: MessageContext) -> _Addresses:
    envelope = canonical_address(ctx.envelope_from)
    header = envelope if ctx.header_from is None else canonical_address(ctx.header_from)
    return _Addresses(envelope, header, canonical_address(ctx.recipient))


def _label(prepared: _Prepared[P]) -> str:
    return f"#{prepared.position} {prepared.policy.narrative!r}"


def _levels(prepared: _Prepared[P]) -> str:
    policy = prepared.policy
    return f"From {describe_level(policy.from_)} / To {describe_level(policy.to)}"


def _not_in_effect(validity: Validity, ctx: MessageContext) -> tuple[Outcome, str] | None:
    if not validity.enabled:
        return Outcome.DISABLED, "disabled"
    if validity.start is not None and ctx.at < validity.start:
        return Outcome.NOT_YET_VALID, f"starts {validity.start.isoformat()}"
    if validity.end is not None and ctx.at >= validity.end:
        return Outcome.EXPIRED, f"ended {validity.end.isoformat()}"
    if validity.source_ips:
        ranges = ", ".join(str(n) for n in validity.source_ips)
        ip = ctx.client_ip
        if ip is None:
            return Outcome.SOURCE_IP, f"needs a client IP in {ranges}; none is known"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d
        if not any(ip.version == n.version and ip in n for n in validity.source_ips):
            return Outcome.SOURCE_IP, f"client IP {ip} is not in {ranges}"
    return None


class _Selector(Generic[P]):
    """Selection over one kind of policy (delivery or receipt)."""

    def __init__(
        self,
        policies: Sequence[P],
        internal: _InternalDomains,
        groups: Mapping[str, frozenset[str]],
        directory: DirectoryCache | None = None,
    ) -> None:
        self._prepared: list[_Prepared[P]] = []
        self._general: list[int] = []  # neither scope indexable (see _ScopeMatcher.indexable)
        # (side, key kind) -> key -> policy indexes; each keyed policy is filed under one side.
        self._index: dict[tuple[str, str], dict[str, list[int]]] = {
            (side, kind): {} for side in ("from", "to") for kind in ("domain", "address")
        }
        for i, policy in enumerate(policies):
            prepared = _Prepared(
                policy,
                i + 1,
                _ScopeMatcher(policy.from_, internal, groups, directory),
                _ScopeMatcher(policy.to, internal, groups, directory),
            )
            self._prepared.append(prepared)
            for side, matcher in (("to", prepared.to), ("from", prepared.from_)):
                if matcher.indexable:
                    kind = "domain" if matcher.applies in _KEYED_BY_DOMAIN else "address"
                    table = self._index[side, kind]
                    for key in matcher.keys:
                        table.setdefault(key, []).append(i)
                    break
            else:
                self._general.append(i)

    def _lookup(self, side: str, addresses: Iterable[Address]) -> Iterable[int]:
        by_domain = self._index[side, "domain"]
        by_address = self._index[side, "address"]
        for address in addresses:
            if address.domain is not None:
                yield from by_domain.get(address.domain, ())
            yield from by_address.get(address.text, ())

    def _match(self, prepared: _Prepared[P], addrs: _Addresses) -> tuple[bool, Address] | None:
        """(swapped, sender that matched), or None. As addressed is tried before swapped."""
        senders = addrs.senders(prepared.policy.from_.based_on)
        if prepared.to.matches(addrs.recipient):
            for sender in senders:
                if prepared.from_.matches(sender):
                    return False, sender
        if prepared.policy.validity.bidirectional and prepared.from_.matches(addrs.recipient):
            for sender in senders:
                if prepared.to.matches(sender):
                    return True, sender
        return None

    def _explained(self, prepared: _Prepared[P], addrs: _Addresses
                   ) -> tuple[bool, str, str] | None:
        """:meth:`_match` as Candidate fields: (swapped, sender, which groups or attributes
        matched)."""
        match = self._match(prepared, addrs)
        if match is None:
            return None
        swapped, sender = match
        sides = ((prepared.to, sender), (prepared.from_, addrs.recipient)) if swapped else \
            ((prepared.from_, sender), (prepared.to, addrs.recipient))
        found = [m.describe(a) for m, a in sides]
        return swapped, sender.text, "; ".join(f for f in found if f)

    def every_match(
        self, ctx: MessageContext, keep: Callable[[int, P], bool]
    ) -> list[tuple[int, P]]:
        """(position, policy) of every policy in effect whose scopes match, in bundle order,
        with no winner: for cumulative policy types. ``keep`` filters first (it is cheaper
        than matching scopes for Secure Messaging's content triggers)."""
        addrs = _addresses(ctx)
        return [(p.position, p.policy) for p in self._prepared
                if keep(p.position, p.policy) and self._match(p, addrs) is not None
                and _not_in_effect(p.validity, ctx) is None]

    def select(
        self, ctx: MessageContext, kind: str
    ) -> tuple[_Prepared[P] | None, str, tuple[Candidate[P], ...]]:
        addrs = _addresses(ctx)
        senders = {addrs.envelope, addrs.header}
        found = set(self._general)
        # Swapped lookups find Bi-Directional policies; _match rejects the others.
        for side in ("to", "from"):
            found.update(self._lookup(side, (addrs.recipient, *senders)))

        in_effect: list[tuple[_Prepared[P], tuple[bool, str, str]]] = []
        idle: list[Candidate[P]] = []
        for i in sorted(found):
            prepared = self._prepared[i]
            match = self._explained(prepared, addrs)
            if match is None:
                continue
            blocked = _not_in_effect(prepared.validity, ctx)
            if blocked is None:
                in_effect.append((prepared, match))
            else:
                outcome, why = blocked
                idle.append(Candidate(prepared.policy, prepared.position, outcome, why, *match))

        if not in_effect:
            default = "opportunistic TLS" if kind == "receipt" else DEFAULT_DELIVERY.name
            reason = f"no {kind} policy matches this message; the default applies: {default}"
            if idle:
                reason = (
                    f"no {kind} policy is in effect for this message ({len(idle)} matching but "
                    f"not in effect); the default applies: {default}"
                )
            return None, reason, tuple(idle)

        in_effect.sort(key=lambda item: item[0].rank(), reverse=True)
        winner, winner_match = in_effect[0]
        ranked = [
            Candidate(winner.policy, winner.position, Outcome.APPLIES,
                      _win_reason(winner, [p for p, _ in in_effect]), *winner_match)
        ]
        ranked.extend(
            Candidate(p.policy, p.position, Outcome.LOST, _loss_reason(p, winner), *match)
            for p, match in in_effect[1:]
        )
        reason = f"{kind} policy {_label(winner)} applies: {ranked[0].why}"
        if winner_match[0]:
            reason += " (Bi-Directional: matched with sender and recipient swapped)"
        if winner_match[2]:
            reason += f"; {winner_match[2]}"
        return winner, reason, (*ranked, *idle)


def _win_reason(winner: _Prepared[P], in_effect: Sequence[_Prepared[P]]) -> str:
    if len(in_effect) == 1:
        return f"the only matching policy in effect ({_levels(winner)})"
    override = winner.validity.override
    rivals = [p for p in in_effect[1:] if p.validity.override == override]
    if override and not rivals:
        return f"Policy Override is set; it beats the other {len(in_effect) - 1} matching policies"
    pool = "override policies" if override else "matching policies"
    text = f"most specific ({_levels(winner)}) of {len(rivals) + 1} {pool}"
    tied = [p for p in rivals if specificity(p.policy) == specificity(winner.policy)]
    if tied:
        others = ", ".join(_label(p) for p in tied)
        text += f"; tie with {others} broken by bundle order (earlier wins)"
    return text


def _loss_reason(loser: _Prepared[P], winner: _Prepared[P]) -> str:
    if winner.validity.override and not loser.validity.override:
        return f"{_label(winner)} has Policy Override set"
    if specificity(loser.policy) == specificity(winner.policy):
        return f"as specific as {_label(winner)}, which comes first in the bundle"
    return f"less specific ({_levels(loser)}) than {_label(winner)} ({_levels(winner)})"


class PolicyIndex:
    """Built once per loaded model; answers per message without scanning every policy."""

    def __init__(self, model: PolicyModel, directory: DirectoryCache | None = None) -> None:
        """``directory``: where address groups the bundle does not define and address
        attributes come from (None: they match nobody)."""
        self._internal = _InternalDomains(model.organisation.internal_domains)
        groups = _address_groups(model)
        self._definitions = {d.name: d for d in model.delivery_definitions}
        for i, policy in enumerate(model.delivery_policies, start=1):
            if policy.definition not in self._definitions:
                raise ValueError(
                    f"delivery policy #{i} {policy.narrative!r} names unknown definition "
                    f"{policy.definition!r}"
                )
        self._delivery = _Selector(model.delivery_policies, self._internal, groups, directory)
        self._receipt = _Selector(model.receipt_policies, self._internal, groups, directory)

    def is_internal(self, address_or_domain: str) -> bool:
        """True for an address or domain in an internal domain or one of its subdomains."""
        text = address_or_domain.strip()
        domain = canonical_address(text).domain if "@" in text else canonical_domain(text)
        return domain is not None and domain in self._internal

    def delivery(self, ctx: MessageContext) -> DeliveryDecision:
        winner, reason, candidates = self._delivery.select(ctx, "delivery")
        if winner is None:
            return DeliveryDecision(None, DEFAULT_DELIVERY, reason, candidates)
        definition = self._definitions[winner.policy.definition]
        return DeliveryDecision(winner.policy, definition, reason, candidates)

    def receipt(self, ctx: MessageContext) -> ReceiptDecision:
        winner, reason, candidates = self._receipt.select(ctx, "receipt")
        if winner is None:
            return ReceiptDecision(None, DEFAULT_RECEIPT, reason, candidates)
        return ReceiptDecision(winner.policy, winner.policy.option, reason, candidates)
