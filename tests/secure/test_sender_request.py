"""Senders choose per message (subject tag or header, limited by the definition) and
definitions say who may request them. Pure: the decision and the bundle, no network."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectwiz.bundle import Bundle
from connectwiz.bundle.errors import BundleError
from connectwiz.policy.explain import explain
from connectwiz.policy.model import (
    Applies,
    Organisation,
    PolicyModel,
    Requesters,
    Scope,
    SecureDefinition,
    SecurePolicy,
    SecureRouting,
    SecureSettings,
)
from connectwiz.policy.secure import MessageContent, Route, SecureIndex, Source
from connectwiz.policy.secure_request import find_tag, parse_header
from connectwiz.policy.select import MessageContext
from connectwiz.relay.queuefile import QueueEntry, Recipient
from connectwiz.relay.secure import SecureMessaging

ALICE, BOB, CEO = "alice@corp.example", "bob@corp.example", "ceo@corp.example"
BANK = "teller@bank.example"
WEEK = SecureDefinition("Week", allow_print=False, expiry_days=7, max_extension_days=14)
BOARD = SecureDefinition("Board only", allow_reply=False, expiry_days=3,
                         requesters=Requesters(groups=("board",), addresses=(ALICE,)))


def model(**kw: object) -> PolicyModel:
    org = Organisation(internal_domains=("corp.example",), address_groups={"board": (CEO,)})
    return PolicyModel(organisation=org, secure_definitions=(WEEK, BOARD),
                       **kw)  # type: ignore[arg-type]


def decide(m: PolicyModel, subject: str = "", header: str | None = None, sender: str = ALICE):
    headers = (("X-Connectwiz-Secure", header),) if header is not None else ()
    return SecureIndex(m).decide(sender, None, [BANK], None, datetime.now(UTC),
                                 MessageContent(subject, "", headers))


def test_tag_is_found_anywhere_in_the_subject_and_every_tag_removed() -> None:
    request, rest = find_tag("Re: [SECURE:Week, reply=no,expiry=3d] figures [secure]", "secure")
    assert request.definition == "Week" and request.via == "subject tag"
    assert request.switches == (("allow_reply", False),) and request.expiry_days == 3
    assert rest == "Re: figures"
    assert find_tag("[securely] not a tag", "secure") is None
    assert find_tag("[secure] tags off", "") is None


def test_plain_tag_uses_the_configured_definition() -> None:
    m = model(secure_settings=SecureSettings(tag_definition="Week"))
    d = decide(m, subject="[secure] figures")
    assert d.applies and d.definition.name == "Week"
    assert d.reasons[0].source is Source.CLIENT
    assert "[secure] in the subject" in d.reasons[0].why
    assert [o.route for o in d.recipients] == [Route.PORTAL]


def test_configured_tag_word() -> None:
    m = model(secure_settings=SecureSettings(subject_tag="encrypt"))
    assert decide(m, subject="[encrypt] figures").applies
    assert not decide(m, subject="[secure] figures").applies


def test_options_narrow_but_never_widen_the_definition() -> None:
    d = decide(model(), subject="[secure:Week,reply=no,print=yes,expiry=30d]")
    week = d.definition
    assert (week.allow_reply, week.allow_reply_all, week.allow_print) == (False, False, False)
    # Week: 7 days plus 14 to extend; asking for 30 gets 21 and no room left to extend.
    assert (week.expiry_days, week.max_extension_days) == (21, 0)
    assert any("print=yes is not allowed by 'Week'" in n for n in d.notes)
    assert any("expiry=30d is more than 'Week' allows; 21 days" in n for n in d.notes)
    assert "the sender's options: reply=no, print=yes, expiry=30d" in d.reason


def test_shorter_expiry_keeps_the_sender_s_latest_date() -> None:
    d = decide(model(), header="Week; expiry=2d")
    assert (d.definition.expiry_days, d.definition.max_extension_days) == (2, 19)


def test_unknown_options_are_noted_and_the_message_stays_secure() -> None:
    request = parse_header("Week; colour=red; expiry=0d")
    assert request.definition == "Week" and request.expiry_days is None
    assert len(request.notes) == 2
    d = decide(model(), header="Week; colour=red")
    assert d.applies and "ignored the option 'colour=red'" in d.notes[0]


def test_definition_access_by_address_and_group() -> None:
    assert decide(model(), header="Board only").definition.name == "Board only"
    assert decide(model(), header="Board only", sender=CEO).definition.name == "Board only"


def test_request_outside_access_falls_back_to_the_policy_and_is_noted() -> None:
    m = model(secure_policies=(SecurePolicy("bank", "Week", to=Scope(Applies.EXTERNAL)),))
    d = decide(m, subject="[secure:Board only]", sender=BOB)
    assert d.definition.name == "Week"
    assert [r.source for r in d.reasons] == [Source.POLICY]
    assert any("<bob@corp.example> may not request 'Board only'" in n for n in d.notes)


def test_request_outside_access_with_no_policy_gets_the_fallback() -> None:
    d = decide(model(), header="Board only", sender=BOB)
    assert d.applies and d.definition.name == "External Recipients"
    assert "may not request 'Board only'" in d.reason


BUNDLE = """schema_version = 2
[organisation]
internal_domains = ["corp.example"]
address_groups = {{ board = ["ceo@corp.example"] }}
[secure_messaging]
{settings}
[[secure_definitions]]
name = "Board only"
{definition}
"""


def load(tmp_path: Path, settings: str = "", definition: str = "") -> PolicyModel:
    path = tmp_path / "b.toml"
    path.write_text(BUNDLE.format(settings=settings, definition=definition))
    return Bundle.load(path).model


def test_bundle_round_trips_tag_settings_and_access(tmp_path: Path) -> None:
    m = load(tmp_path, 'subject_tag = "encrypt"\ntag_definition = "Board only"',
             'may_request = { groups = ["board"], domains = ["Legal.Corp.Example"] }\n'
             'routing = "all"')
    assert m.secure_definitions[0].routing is SecureRouting.ALL
    assert m.secure_settings == SecureSettings(subject_tag="encrypt",
                                               tag_definition="Board only")
    assert m.secure_definitions[0].requesters == Requesters(("board",),
                                                            ("legal.corp.example",))
    Bundle.from_model(m, tmp_path / "copy.toml").save()
    assert Bundle.load(tmp_path / "copy.toml").model == m


@pytest.mark.parametrize(("settings", "definition", "message"), [
    ('subject_tag = "[x]"', "", "secure_messaging.subject_tag: must be one word"),
    ('tag_definition = "Bord only"', "", "no secure definition is named 'Bord only'"),
    ("", 'may_request = { groups = ["bord"] }', "unknown address group 'bord'"),
    ("", "may_request = {}", "lists nobody"),
    ("", 'may_request = { people = ["x"] }', "people"),
])
def test_bundle_errors_are_one_line(tmp_path: Path, settings: str, definition: str,
                                    message: str) -> None:
    with pytest.raises(BundleError) as caught:
        load(tmp_path, settings, definition)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_explain_shows_the_options_and_a_refused_request() -> None:
    ctx = MessageContext(BOB, None, BANK, None, datetime.now(UTC))
    shown = explain(model(), ctx, MessageContent("[secure:Board only, reply=no] x"))
    text = shown.render_text()
    assert "Note: <bob@corp.example> may not request 'Board only'" in text
    assert shown.to_json()["secure"]["options"] == "reply=no"


@pytest.mark.parametrize(("head", "looks"), [
    (b"From: =?utf-8?q?J=C3=B6rg?= <alice@corp.example>\r\nSubject: figures\r\n", False),
    (b"From: alice@corp.example\r\nSubject: [Secure] figures\r\n", True),
    (b"From: alice@corp.example\r\nSubject: figures\r\n =?utf-8?q?=5Bsecure=5D?=\r\n", True),
    (b"From: alice@corp.example\r\nX-Note: [secure]\r\nSubject: figures\r\n", False),
])
def test_relay_looks_closer_only_at_a_subject_that_may_hold_a_tag(head: bytes,
                                                                  looks: bool) -> None:
    """Without policies or triggers, only a possible tag makes the relay parse a message:
    an encoded From: name (common) costs nothing."""
    entry = QueueEntry("X1", ALICE, [Recipient(BANK)], 0.0)
    assert SecureMessaging.may_apply(entry, head + b"\r\nbody\r\n",
                                     SecureIndex(model())) is looks
