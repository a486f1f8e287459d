"""`connectwiz explain` without the I/O: which policies apply to one message, and why
(Secure Delivery, Secure Receipt and Secure Messaging)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connectwiz.policy.model import (
    DeliveryOption,
    DeliveryPolicy,
    PolicyModel,
    ReceiptPolicy,
    Scope,
)
from connectwiz.policy.secure import MessageContent, SecureDecision, SecureIndex
from connectwiz.policy.select import (
    Candidate,
    DeliveryDecision,
    MessageContext,
    Outcome,
    PolicyIndex,
    ReceiptDecision,
)
from connectwiz.policy.sslmode import level_of

if TYPE_CHECKING:  # ldap3 loads only where a directory is read
    from connectwiz.directory.ldap import DirectoryCache
    from connectwiz.relay.published import PublishedView


@dataclass(frozen=True, slots=True)
class Explanation:
    context: MessageContext
    delivery: DeliveryDecision
    receipt: ReceiptDecision
    secure: SecureDecision
    published: PublishedView | None = None  # explain --published: what the partner publishes

    def to_json(self) -> dict[str, Any]:
        ctx = self.context
        definition = self.delivery.definition
        return {
            "message": {
                "envelope_from": ctx.envelope_from,
                "header_from": ctx.header_from,
                "recipient": ctx.recipient,
                "client_ip": None if ctx.client_ip is None else str(ctx.client_ip),
                "at": ctx.at.isoformat(),
            },
            "delivery": {
                "policy": _policy_json(self.delivery.policy, self.delivery.candidates),
                "default": self.delivery.policy is None,
                "definition": {
                    "name": definition.name,
                    "option": definition.option.value,
                    "encryption_mode": definition.encryption_mode.value,
                    "min_tls": definition.min_tls,
                    "ssl_mode": level_of(definition).mode.value,
                },
                "reason": self.delivery.reason,
                "candidates": [_candidate_json(c) for c in self.delivery.candidates],
            },
            "receipt": {
                "policy": _policy_json(self.receipt.policy, self.receipt.candidates),
                "default": self.receipt.policy is None,
                "option": self.receipt.option.value,
                "client_certificate": self._pin(),
                "reason": self.receipt.reason,
                "candidates": [_candidate_json(c) for c in self.receipt.candidates],
            },
            "secure": self._secure_json(),
            "published": self.published.to_json() if self.published else None,
        }

    def _pin(self) -> str | None:
        """The file of the client certificate the receipt policy pins, if any."""
        policy = self.receipt.policy
        pin = policy.client_certificate if policy is not None else None
        return pin.file if pin is not None else None

    def _secure_json(self) -> dict[str, Any]:
        secure = self.secure
        [outcome] = secure.recipients
        return {
            "applies": secure.applies,
            "definition": secure.definition.name if secure.definition else None,
            "reason": secure.reason,
            "route": outcome.route.value,
            "why": outcome.why,
            "requested": secure.requested,
            "options": secure.options,
            "notes": list(secure.notes),
            "reasons": [{"source": r.source.value, "definition": r.definition, "why": r.why}
                        for r in secure.reasons],
        }

    def render_text(self) -> str:
        ctx = self.context
        definition = self.delivery.definition
        sender = ctx.envelope_from or "<> (null sender)"
        lines = [f"Message: from {sender} to {ctx.recipient}"]
        if ctx.header_from is not None:
            lines.append(f"  header From: {ctx.header_from}")
        ip = "unknown" if ctx.client_ip is None else str(ctx.client_ip)
        lines.append(f"  client IP: {ip}; at {ctx.at.isoformat()}")
        lines.append("")
        how = definition.option.value
        if definition.option is not DeliveryOption.NONE:  # no TLS: mode and version are moot
            how += f", {definition.encryption_mode.value}, TLS {definition.min_tls}+"
        if definition.option is DeliveryOption.ENFORCED:  # the only option it applies to
            how += f", SSL Mode {level_of(definition).mode.value}"
        lines.append(f"Delivery: {definition.name} ({how})")
        lines.append(f"  {self.delivery.reason}")
        lines.extend(_candidate_lines(self.delivery.candidates))
        if self.published is not None:
            lines.extend(self.published.lines())
        elif definition.option is DeliveryOption.OPPORTUNISTIC:
            lines.append("  The partner's MTA-STS or DANE may raise this per MX host "
                         "(--published looks)")
        elif definition.option is DeliveryOption.NONE:
            # Allowed, but it overrides even an MTA-STS enforce policy: say so offline too.
            lines.append("  No TLS wins over what the partner publishes, even MTA-STS enforce "
                         "(--published checks whether it does)")
        lines.append("")
        pin = self._pin()
        lines.append(f"Receipt: {self.receipt.option.value}" + (
            f", client certificate pinned in {pin}" if pin else ""))
        lines.append(f"  {self.receipt.reason}")
        lines.extend(_candidate_lines(self.receipt.candidates))
        lines.append("")
        secure = self.secure
        [outcome] = secure.recipients
        if secure.applies and secure.definition is not None:
            lines.append(f"Secure Messaging: applies, {secure.definition.name!r} "
                         f"({outcome.route.value})")
        else:
            lines.append("Secure Messaging: does not apply")
        lines.append(f"  {secure.reason}")
        lines.extend(f"  Note: {n}" for n in secure.notes)
        if secure.applies:
            lines.append(f"  This recipient: {outcome.why}")
            others = [r for r in secure.reasons if r.definition != secure.definition.name]
            if others:
                lines.append("  Also triggered:")
                lines.extend(f"    {r.why}" for r in others)
        return "\n".join(lines)


def explain(model: PolicyModel, ctx: MessageContext,
            content: MessageContent | None = None,
            directory: DirectoryCache | None = None) -> Explanation:
    """``content`` (subject, text, headers) is what content triggers and the client header
    look at; without it only Secure Messaging policies can apply. ``directory``: where
    directory groups and address attributes are looked up (None: they match nobody)."""
    index = PolicyIndex(model, directory)
    secure = SecureIndex(model, directory).decide(
        ctx.envelope_from, ctx.header_from, [ctx.recipient], ctx.client_ip, ctx.at,
        content or MessageContent())
    return Explanation(ctx, index.delivery(ctx), index.receipt(ctx), secure)


def _scope_json(scope: Scope) -> dict[str, Any]:
    return {
        "applies": scope.applies.value,
        "specifically": list(scope.specifically),
        "based_on": scope.based_on.value,
    }


def _policy_json(
    policy: DeliveryPolicy | ReceiptPolicy | None,
    candidates: tuple[Candidate[DeliveryPolicy], ...] | tuple[Candidate[ReceiptPolicy], ...],
) -> dict[str, Any] | None:
    if policy is None:
        return None
    position = next(c.position for c in candidates if c.policy is policy)
    return {"position": position, "narrative": policy.narrative}


def _candidate_json(candidate: Candidate[DeliveryPolicy] | Candidate[ReceiptPolicy]) -> dict:
    policy = candidate.policy
    return {
        "position": candidate.position,
        "narrative": policy.narrative,
        "outcome": candidate.outcome.value,
        "why": candidate.why,
        "swapped": candidate.swapped,
        "sender": candidate.sender,
        "matched": candidate.matched,
        "override": policy.validity.override,
        "from": _scope_json(policy.from_),
        "to": _scope_json(policy.to),
    }


def _candidate_lines(
    candidates: tuple[Candidate[DeliveryPolicy], ...] | tuple[Candidate[ReceiptPolicy], ...],
) -> list[str]:
    others = [c for c in candidates if c.outcome is not Outcome.APPLIES]
    if not others:
        return []
    lines = ["  Other matching policies:"]
    for c in others:
        lines.append(f"    #{c.position} {c.policy.narrative!r}: {c.outcome.value} - {c.why}")
        if c.matched:
            lines.append(f"      matched: {c.matched}")
    return lines
