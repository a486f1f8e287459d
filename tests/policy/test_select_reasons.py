"""The one-line reasons selection gives (`connectwiz explain`, the relay's log), pinned as
text, and the corners of matching no other test reaches. Found by scripts/mutation-check:
these lines could change without any test noticing."""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo

import pytest

from connectwiz.policy.model import Applies, DeliveryPolicy
from connectwiz.policy.select import MessageContext, Outcome, PolicyIndex
from tests.policy.select_helpers import AT, INTERNAL, dp, model, msg, rp, scope

BIDI = "(Bi-Directional: matched with sender and recipient swapped)"


def test_defaults_name_what_applies() -> None:
    index = PolicyIndex(model())
    assert index.receipt(msg()).reason == (
        "no receipt policy matches this message; the default applies: opportunistic TLS")
    assert index.delivery(msg()).reason == (
        "no delivery policy matches this message; the default applies: "
        "Default (Opportunistic TLS)")


def test_policies_not_in_effect_are_listed_with_why() -> None:
    m = model(dp("off", enabled=False),
              dp("office only", source_ips=["192.0.2.0/24", "2001:db8::/32"]),
              dp("later", start=AT + timedelta(days=1)))
    decision = PolicyIndex(m).delivery(msg(ip="203.0.113.9"))
    assert decision.policy is None
    assert decision.reason == (
        "no delivery policy is in effect for this message (3 matching but not in effect); "
        "the default applies: Default (Opportunistic TLS)")
    assert [(c.position, c.outcome, c.why) for c in decision.candidates] == [
        (1, Outcome.DISABLED, "disabled"),
        (2, Outcome.SOURCE_IP, "client IP 203.0.113.9 is not in 192.0.2.0/24, 2001:db8::/32"),
        (3, Outcome.NOT_YET_VALID, f"starts {(AT + timedelta(days=1)).isoformat()}"),
    ]


def test_override_winner_and_rivals_are_counted() -> None:
    m = model(dp("everyone"), dp("partner", to=scope(Applies.DOMAIN, "partner.example")),
              dp("boss", override=True))
    assert PolicyIndex(m).delivery(msg()).reason == (
        "delivery policy #3 'boss' applies: Policy Override is set; it beats the other 2 "
        "matching policies")
    m = model(dp("everyone", override=True), dp("internal", from_=INTERNAL, override=True),
              dp("plain", to=scope(Applies.DOMAIN, "partner.example")))
    assert PolicyIndex(m).delivery(msg()).reason == (
        "delivery policy #2 'internal' applies: most specific (From internal / To everyone) "
        "of 2 override policies")


def test_most_specific_and_ties_say_so() -> None:
    partner = scope(Applies.DOMAIN, "partner.example")
    m = model(dp("everyone"), dp("a", to=partner), dp("b", to=partner), dp("c", to=partner))
    decision = PolicyIndex(m).delivery(msg())
    assert decision.reason == (
        "delivery policy #2 'a' applies: most specific (From everyone / To domain) of 4 "
        "matching policies; tie with #3 'b', #4 'c' broken by bundle order (earlier wins)")
    lost = [c for c in decision.candidates if c.outcome is Outcome.LOST]
    assert [(c.position, c.sender) for c in lost] == [
        (3, "alice@example.com"), (4, "alice@example.com"), (1, "alice@example.com")]


def test_bi_directional_says_when_it_matched_swapped() -> None:
    with_partner = rp("with partner", from_=INTERNAL, to=scope(Applies.DOMAIN, "partner.example"),
                      bidirectional=True)
    index = PolicyIndex(model(receipt=(with_partner,)))
    swapped = index.receipt(msg("bob@partner.example", "alice@example.com"))
    assert swapped.reason == (
        "receipt policy #1 'with partner' applies: the only matching policy in effect "
        f"(From internal / To domain) {BIDI}")
    assert swapped.candidates[0].swapped
    direct = index.receipt(msg("alice@example.com", "bob@partner.example"))
    assert direct.policy == with_partner and BIDI not in direct.reason
    assert not direct.candidates[0].swapped


def test_a_scope_entry_that_is_no_address_never_matches_the_null_sender() -> None:
    """'<>' and blanks reduce to the null sender's empty key: they must not select it."""
    m = model(receipt=(rp("junk entry", from_=scope(Applies.INDIVIDUAL, "<>", " ")),
                       rp("junk group", from_=scope(Applies.ADDRESS_GROUP, "junk"))),
              groups={"junk": ("<>",)})
    assert PolicyIndex(m).receipt(msg("", "bob@partner.example")).policy is None


def test_positions_count_from_one() -> None:
    with pytest.raises(ValueError, match=r"delivery policy #1 'x' names unknown definition"):
        PolicyIndex(model(DeliveryPolicy("x", "No such definition")))


class _NoOffset(tzinfo):
    def utcoffset(self, dt: datetime | None) -> None:
        return None


@pytest.mark.parametrize("at", [AT.replace(tzinfo=None), AT.replace(tzinfo=_NoOffset())])
def test_message_time_must_be_aware(at: datetime) -> None:
    with pytest.raises(ValueError, match=r"^MessageContext\.at must be timezone-aware$"):
        MessageContext("a@example.com", None, "b@example.com", None, at)
