"""Scope matching (internal/external/domain/group/individual) and address forms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectwiz.policy.addresses import (
    InvalidAddress,
    canonical_address,
    normalize_address,
)
from connectwiz.policy.domains import InvalidDomain, normalize_domain
from connectwiz.policy.model import Applies
from connectwiz.policy.select import PolicyIndex
from tests.policy.select_helpers import EXTERNAL, INTERNAL, dp, model, msg, scope, winner

# --- internal / external -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "internal"),
    [
        ("example.com", True),
        ("EXAMPLE.com.", True),
        ("sales.example.com", True),  # subdomains of an internal domain are internal
        ("a.b.sales.example.com", True),
        ("alice@example.com", True),
        ("Alice@Sales.Example.COM", True),
        ("notexample.com", False),  # a suffix of the text, not a parent domain
        ("example.com.evil.test", False),
        ("com", False),
        ("bob@partner.example", False),
        ("", False),
        ("postmaster", False),
    ],
)
def test_is_internal(text, internal):
    assert PolicyIndex(model(internal=("example.com",))).is_internal(text) is internal


def test_internal_idn_domain_matches_either_form():
    index = PolicyIndex(model(internal=("bücher.example",)))
    assert index.is_internal("info@xn--bcher-kva.example")
    assert index.is_internal("info@BÜCHER.example")


@pytest.mark.parametrize(
    ("sender", "internal_matches", "external_matches"),
    [
        ("alice@example.com", True, False),
        ("alice@hr.example.com", True, False),
        ("bob@partner.example", False, True),
        ("bob@notexample.com", False, True),
        ("postmaster", False, False),  # no domain: neither internal nor external
    ],
)
def test_internal_and_external_from_scopes(sender, internal_matches, external_matches):
    m = model(dp("internal", from_=INTERNAL), internal=("example.com",))
    assert (winner(m, msg(sender)) == "internal") is internal_matches
    m = model(dp("external", from_=EXTERNAL), internal=("example.com",))
    assert (winner(m, msg(sender)) == "external") is external_matches


def test_internal_and_external_are_accepted_on_the_to_side():
    m = model(dp("to internal", to=INTERNAL), dp("to external", to=EXTERNAL))
    assert winner(m, msg(to="carol@example.com")) == "to internal"
    assert winner(m, msg(to="carol@partner.example")) == "to external"


# --- domain ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipient", "matches"),
    [
        ("bob@partner.example", True),
        ("BOB@PARTNER.EXAMPLE.", True),
        ("bob@eu.partner.example", False),  # subdomains are not covered by a domain scope
        ("bob@otherpartner.example", False),
        ("bob@partner.example.net", False),
    ],
)
def test_domain_scope_matches_exactly(recipient, matches):
    m = model(dp("partner", to=scope(Applies.DOMAIN, "partner.example")))
    assert (winner(m, msg(to=recipient)) == "partner") is matches


def test_domain_scope_matches_idn_in_either_form():
    m = model(dp("idn", to=scope(Applies.DOMAIN, "xn--mller-kva.example")))
    assert winner(m, msg(to="info@müller.example")) == "idn"
    m = model(dp("idn", to=scope(Applies.DOMAIN, "Müller.example")))
    assert winner(m, msg(to="info@xn--mller-kva.example")) == "idn"


def test_domain_scope_with_several_domains():
    m = model(dp("shared", to=scope(Applies.DOMAIN, "a.example", "b.example", "c.example")))
    assert winner(m, msg(to="x@b.example")) == "shared"
    assert winner(m, msg(to="x@d.example")) is None


# --- address group and individual --------------------------------------------------------


def test_address_group_matches_members_case_insensitively():
    groups = {"board": ("CEO@Example.com", "cfo@example.com")}
    m = model(dp("board", from_=scope(Applies.ADDRESS_GROUP, "board")), groups=groups)
    assert winner(m, msg("ceo@EXAMPLE.COM")) == "board"
    assert winner(m, msg("cfo@example.com")) == "board"
    assert winner(m, msg("cto@example.com")) is None


def test_address_group_scope_naming_several_groups():
    groups = {"a": ("x@example.com",), "b": ("y@example.com",)}
    m = model(dp("ab", from_=scope(Applies.ADDRESS_GROUP, "a", "b")), groups=groups)
    assert winner(m, msg("y@example.com")) == "ab"


def test_unknown_address_group_matches_nothing():
    m = model(dp("ghost", from_=scope(Applies.ADDRESS_GROUP, "nobody")))
    assert winner(m, msg("alice@example.com")) is None


@pytest.mark.parametrize(
    ("sender", "matches"),
    [
        ("alice@example.com", True),
        ("ALICE@Example.COM", True),
        ("<alice@example.com>", True),
        ("alice@sales.example.com", False),
        ("alice2@example.com", False),
    ],
)
def test_individual_scope(sender, matches):
    m = model(dp("alice", from_=scope(Applies.INDIVIDUAL, "Alice@EXAMPLE.com")))
    assert (winner(m, msg(sender)) == "alice") is matches


def test_malformed_addresses_never_raise_and_match_only_everyone_or_literally():
    m = model(dp("everyone"), dp("partner", from_=scope(Applies.DOMAIN, "partner.example")))
    for sender in ("no-at-sign", "@@", "x@[192.0.2.1]", "x@bad_domain.example", " "):
        assert winner(m, msg(sender)) == "everyone"


# --- addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("<bob@partner.example>", "bob@partner.example"),
        ("  bob@partner.example. ", "bob@partner.example"),
        ("info@bücher.example", "info@xn--bcher-kva.example"),
        ('"odd@local"@example.com', '"odd@local"@example.com'),
    ],
)
def test_normalize_address(text, expected):
    assert normalize_address(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("<>", "empty"),
        ("alice", "no @domain"),
        ("@example.com", "nothing before"),
        ("al ice@example.com", "space"),
        ("alice@", "domain empty"),
        ("alice@localhost", "single label"),
        ("alice@192.0.2.1", "IP address"),
        ("a" * 65 + "@example.com", "64 octets"),
    ],
)
def test_normalize_address_rejects_with_a_reason(text, reason):
    with pytest.raises(InvalidAddress) as info:
        normalize_address(text)
    assert reason in info.value.reason


def test_canonical_address_is_lenient():
    assert canonical_address("<>") == ("", None)
    assert canonical_address("Postmaster") == ("postmaster", None)
    assert canonical_address("X@Bad_Domain") == ("x@bad_domain", None)
    assert canonical_address("X@Example.COM") == ("x@example.com", "example.com")


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="abcXYZ019-._ü \u212a", max_size=30) | st.sampled_from(
    ["example.com", "EXAMPLE.COM.", "xn--bcher-kva.example", "a--b.example", "1.2.3.4",
     "ab.c0m", "ab.0com", "a.b-", "-a.b", "\u212aelvin.example", ("a" * 63 + ".") * 4 + "com"]))
def test_canonical_address_domain_agrees_with_normalize_domain(text):
    try:
        expected = normalize_domain(text)
    except InvalidDomain:
        expected = None
    assert canonical_address(f"x@{text}").domain == expected
