"""Small builders for policy-selection tests: models and messages in one line each."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

from connectwiz.policy.model import (
    Applies,
    BasedOn,
    DeliveryDefinition,
    DeliveryOption,
    DeliveryPolicy,
    Organisation,
    PolicyModel,
    ReceiptOption,
    ReceiptPolicy,
    Scope,
    Validity,
)
from connectwiz.policy.select import MessageContext, PolicyIndex

AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ENFORCED = DeliveryDefinition("Enforced TLS - Strict", DeliveryOption.ENFORCED)
EVERYONE = Scope()
INTERNAL = Scope(Applies.INTERNAL)
EXTERNAL = Scope(Applies.EXTERNAL)


def scope(applies: Applies, *specifically: str, based_on: BasedOn = BasedOn.ENVELOPE) -> Scope:
    return Scope(applies, tuple(specifically), based_on)


def validity(**kwargs: object) -> Validity:
    if "source_ips" in kwargs:
        kwargs["source_ips"] = tuple(ipaddress.ip_network(n) for n in kwargs["source_ips"])
    return Validity(**kwargs)  # type: ignore[arg-type]


def dp(name: str, from_: Scope = EVERYONE, to: Scope = EVERYONE, **kw: object) -> DeliveryPolicy:
    return DeliveryPolicy(name, ENFORCED.name, from_, to, validity(**kw))


def rp(name: str, from_: Scope = EVERYONE, to: Scope = EVERYONE, **kw: object) -> ReceiptPolicy:
    return ReceiptPolicy(name, ReceiptOption.ENFORCED, from_, to, validity(**kw))


def model(
    *delivery: DeliveryPolicy,
    receipt: tuple[ReceiptPolicy, ...] = (),
    internal: tuple[str, ...] = ("example.com",),
    groups: dict[str, tuple[str, ...]] | None = None,
) -> PolicyModel:
    return PolicyModel(
        organisation=Organisation(internal_domains=internal, address_groups=groups or {}),
        delivery_definitions=(ENFORCED,),
        delivery_policies=delivery,
        receipt_policies=receipt,
    )


def msg(
    sender: str = "alice@example.com",
    to: str = "bob@partner.example",
    header: str | None = None,
    ip: str | None = None,
    at: datetime = AT,
) -> MessageContext:
    client = None if ip is None else ipaddress.ip_address(ip)
    return MessageContext(sender, header, to, client, at)


def winner(m: PolicyModel, ctx: MessageContext) -> str | None:
    """Narrative of the delivery policy that applies, None for the default."""
    policy = PolicyIndex(m).delivery(ctx).policy
    return None if policy is None else policy.narrative
