"""Any valid model survives model → TOML → model unchanged."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectwiz.bundle import Bundle
from connectwiz.bundle.document import model_text
from connectwiz.policy.model import (
    Applies,
    BasedOn,
    DeliveryDefinition,
    DeliveryOption,
    DeliveryPolicy,
    EncryptionMode,
    ExternalDomain,
    InboundRoute,
    LastValidation,
    Organisation,
    PolicyModel,
    ReceiptOption,
    ReceiptPolicy,
    Scope,
    ValidationStatus,
    Validity,
)

domains = st.from_regex(r"[a-z][a-z0-9-]{0,6}[a-z0-9]\.(example|test|xn--bcher-kva\.example)",
                        fullmatch=True)
words = st.text(min_size=1, max_size=20).filter(lambda s: s.strip() != "")
times = st.builds(
    lambda base, secs, micro, minutes: (base + timedelta(seconds=secs)).replace(
        microsecond=micro, tzinfo=timezone(timedelta(minutes=minutes))),
    st.just(datetime(2026, 1, 1)), st.integers(0, 10**8), st.integers(0, 999999),
    st.integers(-12 * 60, 14 * 60),
)
networks = st.one_of(
    st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False),
              st.integers(0, 2**32 - 1), st.integers(8, 32)),
    st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False),
              st.integers(0, 2**128 - 1), st.integers(16, 128)),
)
validations = st.none() | st.builds(LastValidation, st.sampled_from(ValidationStatus), times,
                                    st.text(max_size=30))


@st.composite
def validity(draw: st.DrawFn) -> Validity:
    start = draw(st.none() | times)
    end = None
    if draw(st.booleans()):
        end = (start or datetime(2026, 1, 1, tzinfo=UTC)) + timedelta(
            seconds=draw(st.integers(1, 10**7)))
    return Validity(draw(st.booleans()), start, end, draw(st.booleans()), draw(st.booleans()),
                    tuple(draw(st.sets(networks, max_size=3))))


@st.composite
def scope(draw: st.DrawFn, groups: list[str], side: str) -> Scope:
    choices = [Applies.EVERYONE, Applies.INTERNAL, Applies.EXTERNAL, Applies.DOMAIN,
               Applies.INDIVIDUAL] + ([Applies.ADDRESS_GROUP] if groups else [])
    applies = draw(st.sampled_from(choices))
    items: list[str] = []
    if applies is Applies.DOMAIN:
        items = draw(st.lists(domains, min_size=1, max_size=6, unique=True))
    elif applies is Applies.INDIVIDUAL:
        items = [f"user{i}@{d}" for i, d in enumerate(draw(st.lists(domains, min_size=1,
                                                                    max_size=3)))]
    elif applies is Applies.ADDRESS_GROUP:
        items = draw(st.lists(st.sampled_from(groups), min_size=1, unique=True))
    based_on = draw(st.sampled_from(BasedOn)) if side == "from" else BasedOn.ENVELOPE
    return Scope(applies, tuple(items), based_on)


@st.composite
def models(draw: st.DrawFn) -> PolicyModel:
    names = draw(st.lists(domains, max_size=8, unique=True))
    internal, external = names[:2], names[2:]
    groups = {g: tuple(f"m{i}@{internal[0] if internal else 'acme.example'}" for i in range(n))
              for g, n in draw(st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                                               st.integers(0, 3), max_size=3)).items()}
    org = Organisation(tuple(internal), tuple(draw(st.sets(networks, max_size=3))), groups)
    routes = tuple({(r.host, r.port): r for r in draw(st.lists(st.builds(
        InboundRoute, domains, st.integers(1, 65535),
        st.none() | st.sampled_from(EncryptionMode), validations), max_size=3))}.values())
    ext = tuple(ExternalDomain(n, draw(st.none() | times), draw(st.sampled_from(EncryptionMode)),
                               draw(validations)) for n in external)
    definitions = {d.name: d for d in draw(st.lists(st.builds(
        DeliveryDefinition, words, st.sampled_from(DeliveryOption),
        st.sampled_from(EncryptionMode), st.sampled_from(["1.0", "1.1", "1.2", "1.3"])),
        min_size=1, max_size=3))}
    delivery = [DeliveryPolicy(draw(words), draw(st.sampled_from(sorted(definitions))),
                               draw(scope(list(groups), "from")),
                               draw(scope(list(groups), "to")), draw(validity()))
                for _ in range(draw(st.integers(0, 3)))]
    receipt = [ReceiptPolicy(draw(words), draw(st.sampled_from(ReceiptOption)),
                             draw(scope(list(groups), "from")),
                             draw(scope(list(groups), "to")), draw(validity()))
               for _ in range(draw(st.integers(0, 3)))]
    # the managed policies, as connectwiz keeps them
    for mode in EncryptionMode:
        listed = tuple(sorted(d.domain for d in ext if d.encryption_mode is mode))
        if listed:
            name = f"managed {mode}"
            definitions[name] = DeliveryDefinition(name, DeliveryOption.ENFORCED, mode,
                                                   managed=True)
            delivery.append(DeliveryPolicy(f"to {mode}", name, to=Scope(Applies.DOMAIN, listed),
                                           managed=True))
    if ext:
        receipt.append(ReceiptPolicy("from partners", ReceiptOption.ENFORCED,
                                     Scope(Applies.DOMAIN, tuple(sorted(names[2:]))),
                                     Scope(Applies.INTERNAL), managed=True))
    return PolicyModel(org, routes, ext, tuple(definitions.values()), tuple(delivery),
                       tuple(receipt))


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(models())
def test_model_toml_model_round_trip(model: PolicyModel) -> None:
    text = model_text(model)
    assert Bundle.from_text(text).model == model
    # and the JSON view is the same data whatever the route to it
    assert Bundle.from_model(model).to_json() == Bundle.from_text(text).to_json()
