"""Selection rules, one test (or parametrised family) per rule; each fails without its rule."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

import pytest

from connectwiz.policy.model import (
    Applies,
    BasedOn,
    DeliveryDefinition,
    DeliveryOption,
    DeliveryPolicy,
    EncryptionMode,
    PolicyModel,
    ReceiptOption,
)
from connectwiz.policy.select import (
    DEFAULT_DELIVERY,
    MessageContext,
    Outcome,
    PolicyIndex,
)
from tests.policy.select_helpers import (
    AT,
    ENFORCED,
    EVERYONE,
    EXTERNAL,
    INTERNAL,
    dp,
    model,
    msg,
    rp,
    scope,
    winner,
)

GROUPS = {"staff": ("alice@example.com",), "partners": ("bob@partner.example",)}

# Scopes matching sender alice@example.com (internal), most specific first.
FROM_LEVELS = [
    scope(Applies.INDIVIDUAL, "alice@example.com"),
    scope(Applies.DOMAIN, "example.com"),
    scope(Applies.ADDRESS_GROUP, "staff"),
    INTERNAL,
    EVERYONE,
]
# Scopes matching recipient bob@partner.example (external), most specific first.
TO_LEVELS = [
    scope(Applies.INDIVIDUAL, "bob@partner.example"),
    scope(Applies.DOMAIN, "partner.example"),
    scope(Applies.ADDRESS_GROUP, "partners"),
    EXTERNAL,
    EVERYONE,
]


def _pairs(levels):
    return [pytest.param(a, b, id=f"{a.applies}>{b.applies}") for a, b in pairwise(levels)]


# --- default -----------------------------------------------------------------------------


def test_no_policies_gives_opportunistic_defaults():
    index = PolicyIndex(model())
    delivery = index.delivery(msg())
    receipt = index.receipt(msg())
    assert delivery.policy is None and delivery.definition == DEFAULT_DELIVERY
    assert DEFAULT_DELIVERY.option is DeliveryOption.OPPORTUNISTIC
    assert DEFAULT_DELIVERY.encryption_mode is EncryptionMode.RELAXED
    assert DEFAULT_DELIVERY.name == "Default (Opportunistic TLS)"
    assert receipt.policy is None and receipt.option is ReceiptOption.OPPORTUNISTIC
    assert "no delivery policy matches" in delivery.reason
    assert delivery.candidates == () and receipt.candidates == ()


def test_policy_that_does_not_match_leaves_the_default():
    m = model(dp("other partner", to=scope(Applies.DOMAIN, "other.example")))
    decision = PolicyIndex(m).delivery(msg(to="bob@partner.example"))
    assert decision.policy is None and decision.definition == DEFAULT_DELIVERY


def test_matching_policy_brings_its_named_definition():
    relaxed = DeliveryDefinition("Enforced TLS - Relaxed", DeliveryOption.ENFORCED,
                                 EncryptionMode.RELAXED)
    policy = DeliveryPolicy("p", relaxed.name, to=scope(Applies.DOMAIN, "partner.example"))
    m = PolicyModel(delivery_definitions=(ENFORCED, relaxed), delivery_policies=(policy,))
    decision = PolicyIndex(m).delivery(msg())
    assert decision.definition == relaxed
    assert decision.policy == policy


def test_unknown_definition_is_refused_at_index_construction():
    m = PolicyModel(delivery_policies=(dp("p"),))  # no definitions at all
    with pytest.raises(ValueError, match="unknown definition"):
        PolicyIndex(m)


def test_receipt_decision_carries_the_policy_option():
    m = model(receipt=(rp("from partner", from_=scope(Applies.DOMAIN, "partner.example"),
                          to=INTERNAL),))
    decision = PolicyIndex(m).receipt(msg("bob@partner.example", "alice@example.com"))
    assert decision.option is ReceiptOption.ENFORCED
    assert decision.policy is not None and decision.policy.narrative == "from partner"


# --- specificity -------------------------------------------------------------------------


@pytest.mark.parametrize(("specific", "general"), _pairs(FROM_LEVELS))
def test_more_specific_from_scope_wins(specific, general):
    # The less specific policy comes first, so bundle order alone would pick it.
    m = model(dp("general", from_=general), dp("specific", from_=specific), groups=GROUPS)
    assert winner(m, msg("alice@example.com", "bob@partner.example")) == "specific"


def test_external_from_scope_beats_everyone():
    m = model(dp("general", from_=EVERYONE), dp("specific", from_=EXTERNAL))
    assert winner(m, msg("carol@other.example", "alice@example.com")) == "specific"


@pytest.mark.parametrize(("specific", "general"), _pairs(TO_LEVELS))
def test_more_specific_to_scope_wins(specific, general):
    m = model(dp("general", to=general), dp("specific", to=specific), groups=GROUPS)
    assert winner(m, msg("alice@example.com", "bob@partner.example")) == "specific"


def test_internal_to_scope_beats_everyone():
    m = model(dp("general", to=EVERYONE), dp("specific", to=INTERNAL))
    assert winner(m, msg("carol@other.example", "alice@example.com")) == "specific"


def test_from_side_decides_before_to_side():
    # (From domain, To everyone) = (3, 0) beats (From everyone, To individual) = (0, 4):
    # a sum of levels would pick the second.
    m = model(
        dp("to individual", to=scope(Applies.INDIVIDUAL, "bob@partner.example")),
        dp("from domain", from_=scope(Applies.DOMAIN, "example.com")),
    )
    assert winner(m, msg()) == "from domain"


def test_to_side_breaks_a_from_side_tie():
    m = model(
        dp("from domain", from_=scope(Applies.DOMAIN, "example.com")),
        dp("from domain to domain", from_=scope(Applies.DOMAIN, "example.com"),
           to=scope(Applies.DOMAIN, "partner.example")),
    )
    assert winner(m, msg()) == "from domain to domain"


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_tie_goes_to_the_policy_earlier_in_the_bundle(order):
    policies = {"a": dp("a", to=EXTERNAL), "b": dp("b", to=EXTERNAL)}
    m = model(*(policies[k] for k in order))
    decision = PolicyIndex(m).delivery(msg())
    assert decision.policy is not None and decision.policy.narrative == order[0]
    assert "bundle order" in decision.reason
    lost = [c for c in decision.candidates if c.outcome is Outcome.LOST]
    assert [c.policy.narrative for c in lost] == [order[1]]
    assert "comes first in the bundle" in lost[0].why


# --- override ----------------------------------------------------------------------------


def test_override_beats_a_more_specific_policy():
    m = model(
        dp("individual", to=scope(Applies.INDIVIDUAL, "bob@partner.example")),
        dp("override", override=True),
    )
    decision = PolicyIndex(m).delivery(msg())
    assert decision.policy is not None and decision.policy.narrative == "override"
    assert "Policy Override" in decision.reason
    (lost,) = [c for c in decision.candidates if c.outcome is Outcome.LOST]
    assert lost.policy.narrative == "individual" and "Policy Override" in lost.why


def test_among_override_policies_the_most_specific_wins():
    m = model(
        dp("override everyone", override=True),
        dp("override domain", to=scope(Applies.DOMAIN, "partner.example"), override=True),
        dp("individual", to=scope(Applies.INDIVIDUAL, "bob@partner.example")),
    )
    assert winner(m, msg()) == "override domain"


def test_override_applies_to_receipt_policies_too():
    m = model(receipt=(
        rp("partner", from_=scope(Applies.DOMAIN, "partner.example")),
        rp("override", override=True),
    ))
    decision = PolicyIndex(m).receipt(msg("bob@partner.example", "alice@example.com"))
    assert decision.policy is not None and decision.policy.narrative == "override"


# --- validity ----------------------------------------------------------------------------


def test_disabled_policy_is_not_selected_but_is_explained():
    m = model(dp("everyone"), dp("partner", to=scope(Applies.DOMAIN, "partner.example"),
                                 enabled=False))
    decision = PolicyIndex(m).delivery(msg())
    assert decision.policy is not None and decision.policy.narrative == "everyone"
    (idle,) = [c for c in decision.candidates if c.policy.narrative == "partner"]
    assert idle.outcome is Outcome.DISABLED


def test_only_disabled_match_falls_back_to_default_and_says_so():
    m = model(dp("partner", enabled=False))
    decision = PolicyIndex(m).delivery(msg())
    assert decision.policy is None and "not in effect" in decision.reason


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        pytest.param(AT, None, Outcome.APPLIES, id="start-is-inclusive"),
        pytest.param(AT + timedelta(microseconds=1), None, Outcome.NOT_YET_VALID,
                     id="before-start"),
        pytest.param(None, AT, Outcome.EXPIRED, id="end-is-exclusive"),
        pytest.param(None, AT + timedelta(microseconds=1), Outcome.APPLIES, id="before-end"),
        pytest.param(AT - timedelta(days=1), AT + timedelta(days=1), Outcome.APPLIES,
                     id="inside-range"),
    ],
)
def test_date_range_edges(start, end, expected):
    m = model(dp("dated", start=start, end=end))
    (candidate,) = PolicyIndex(m).delivery(msg(at=AT)).candidates
    assert candidate.outcome is expected
    assert (winner(m, msg(at=AT)) == "dated") == (expected is Outcome.APPLIES)


@pytest.mark.parametrize(
    ("ranges", "ip", "applies"),
    [
        pytest.param(["192.0.2.0/24"], "192.0.2.7", True, id="v4-inside"),
        pytest.param(["192.0.2.0/24"], "198.51.100.7", False, id="v4-outside"),
        pytest.param(["192.0.2.0/24"], None, False, id="v4-no-client-ip"),
        pytest.param(["192.0.2.0/24"], "::ffff:192.0.2.7", True, id="v4-mapped-v6-client"),
        pytest.param(["192.0.2.0/24"], "2001:db8::7", False, id="v4-range-v6-client"),
        pytest.param(["2001:db8::/32"], "2001:db8:1::5", True, id="v6-inside"),
        pytest.param(["2001:db8::/32"], "2001:db9::5", False, id="v6-outside"),
        pytest.param(["2001:db8::/32"], "192.0.2.7", False, id="v6-range-v4-client"),
        pytest.param(["198.51.100.0/24", "2001:db8::/32"], "2001:db8::1", True, id="mixed"),
        pytest.param([], None, True, id="no-ranges-means-any"),
    ],
)
def test_source_ip_ranges(ranges, ip, applies):
    m = model(dp("ranged", source_ips=ranges))
    decision = PolicyIndex(m).delivery(msg(ip=ip))
    assert (decision.policy is not None) == applies
    if not applies:
        assert decision.candidates[0].outcome is Outcome.SOURCE_IP


# --- bi-directional ----------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [True, False])
def test_bidirectional_policy_also_matches_swapped(bidirectional):
    policy = dp("with partner", from_=INTERNAL, to=scope(Applies.DOMAIN, "partner.example"),
                bidirectional=bidirectional)
    m = model(policy)
    forward = msg("alice@example.com", "bob@partner.example")
    backward = msg("bob@partner.example", "alice@example.com")
    assert winner(m, forward) == "with partner"
    decision = PolicyIndex(m).delivery(backward)
    if bidirectional:
        assert decision.policy == policy
        assert decision.candidates[0].swapped and "Bi-Directional" in decision.reason
    else:
        assert decision.policy is None


def test_bidirectional_receipt_policy_found_through_its_to_scope_key():
    # Keyed only on the To side (individual): the swapped lookup must use the sender.
    policy = rp("bob both ways", from_=INTERNAL,
                to=scope(Applies.INDIVIDUAL, "bob@partner.example"), bidirectional=True)
    decision = PolicyIndex(model(receipt=(policy,))).receipt(
        msg("bob@partner.example", "alice@example.com"))
    assert decision.policy == policy


# --- Emails From based on envelope / header / both ---------------------------------------


@pytest.mark.parametrize(
    ("based_on", "envelope", "header", "applies"),
    [
        (BasedOn.ENVELOPE, "bounce@mailer.example", "ceo@example.com", False),
        (BasedOn.HEADER, "bounce@mailer.example", "ceo@example.com", True),
        (BasedOn.BOTH, "bounce@mailer.example", "ceo@example.com", True),
        (BasedOn.ENVELOPE, "ceo@example.com", "someone@mailer.example", True),
        (BasedOn.HEADER, "ceo@example.com", "someone@mailer.example", False),
        (BasedOn.BOTH, "ceo@example.com", "someone@mailer.example", True),
        (BasedOn.BOTH, "x@mailer.example", "y@mailer.example", False),
        (BasedOn.HEADER, "ceo@example.com", None, True),  # no header From: envelope stands in
    ],
)
def test_from_scope_address_based_on(based_on, envelope, header, applies):
    m = model(dp("ceo", from_=scope(Applies.INDIVIDUAL, "ceo@example.com", based_on=based_on)))
    assert (winner(m, msg(envelope, header=header)) == "ceo") == applies


def test_both_reports_the_header_address_when_both_match():
    m = model(dp("internal senders", from_=scope(Applies.DOMAIN, "example.com",
                                                  based_on=BasedOn.BOTH)))
    decision = PolicyIndex(m).delivery(msg("bounce@example.com", header="ceo@example.com"))
    assert decision.candidates[0].sender == "ceo@example.com"


# --- null sender -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_", "applies"),
    [
        (EVERYONE, True),
        (EXTERNAL, False),
        (INTERNAL, False),
        (scope(Applies.DOMAIN, "example.com"), False),
    ],
)
def test_null_sender_matches_only_everyone(from_, applies):
    m = model(dp("p", from_=from_))
    for null in ("", "<>"):
        assert (winner(m, msg(null)) == "p") == applies


# --- scale (correctness only; benchmarks/policy_select.py prints the timings) -------------


def test_ten_thousand_domains_select_the_right_policy():
    domains = [f"partner{i}.example" for i in range(10_000)]
    one_each = [dp(f"to {d}", to=scope(Applies.DOMAIN, d)) for d in domains[:5_000]]
    shared = dp("shared", to=scope(Applies.DOMAIN, *domains[5_000:]))
    m = model(*one_each, shared, dp("everyone"))
    index = PolicyIndex(m)
    assert index.delivery(msg(to="x@partner4321.example")).policy.narrative == (
        "to partner4321.example")
    assert index.delivery(msg(to="x@partner9876.example")).policy.narrative == "shared"
    assert index.delivery(msg(to="x@unlisted.example")).policy.narrative == "everyone"


def test_message_context_requires_an_aware_time():
    with pytest.raises(ValueError, match="timezone-aware"):
        MessageContext("a@example.com", None, "b@example.com", None, AT.replace(tzinfo=None))
