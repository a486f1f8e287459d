"""The pure Secure Messaging decision: trigger paths, bypass precedence, routing, combining
definitions, expiry and banners. No files, no network."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from connectwiz.policy.model import (
    Applies,
    BypassOption,
    ConditionField,
    Organisation,
    PolicyModel,
    Scope,
    SecureBypass,
    SecureCondition,
    SecureDefinition,
    SecurePolicy,
    SecureSettings,
    SecureTrigger,
    TriggerMatch,
    Validity,
)
from connectwiz.policy.secure import (
    DEFAULT_BANNER,
    EXTERNAL_RECIPIENTS,
    MessageContent,
    Route,
    SecureIndex,
    Source,
    banner_text,
    expiry_window,
    extend_expiry,
    restrictiveness,
)

AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ALICE = "alice@corp.example"
BANK = "teller@bank.example"
PARTNER = "ops@partner.example"
BOB = "bob@corp.example"
STRICT_DEF = SecureDefinition("Strict 7d", allow_print=False, allow_reply=False,
                              expiry_days=7, max_extension_days=7, read_receipt=True)
LOOSE_DEF = SecureDefinition("Loose 90d", expiry_days=90)
TO_BANK = Scope(Applies.DOMAIN, ("bank.example",))
EXTERNAL = Scope(Applies.EXTERNAL)


def model(**kw: object) -> PolicyModel:
    return PolicyModel(organisation=Organisation(internal_domains=("corp.example",)),
                       secure_definitions=(STRICT_DEF, LOOSE_DEF), **kw)  # type: ignore[arg-type]


def decide(m: PolicyModel, *rcpts: str, sender: str = ALICE, subject: str = "", body: str = "",
           headers: tuple[tuple[str, str], ...] = (), at: datetime = AT):
    content = MessageContent(subject, body, headers)
    return SecureIndex(m).decide(sender, None, list(rcpts), None, at, content)


def trigger(name: str, *conditions: SecureCondition, definition: str = "Strict 7d",
            **kw: object) -> SecureTrigger:
    return SecureTrigger(name, definition, conditions, **kw)  # type: ignore[arg-type]


SUBJECT_CONFIDENTIAL = SecureCondition(ConditionField.SUBJECT, "Confidential")


def test_nothing_configured_means_no_secure_messaging() -> None:
    d = decide(model(), BANK)
    assert not d.applies and d.definition is None
    assert [o.route for o in d.recipients] == [Route.NORMAL]
    assert "no client header" in d.reason


def test_policy_path_holds_external_recipient_and_names_the_policy() -> None:
    m = model(secure_policies=(SecurePolicy("bank mail", "Strict 7d", to=TO_BANK),))
    d = decide(m, BANK, PARTNER, BOB)
    assert d.applies and d.definition == STRICT_DEF
    routes = {o.recipient: o.route for o in d.recipients}
    assert routes == {BANK: Route.PORTAL, PARTNER: Route.NORMAL, BOB: Route.BANNER}
    assert "#1 'bank mail'" in d.reason
    assert d.reasons[0].source is Source.POLICY


def test_take_no_action_policy_does_not_trigger() -> None:
    m = model(secure_policies=(SecurePolicy("quiet", None, to=TO_BANK),))
    assert not decide(m, BANK).applies


def test_more_specific_take_no_action_policy_beats_a_broad_secure_one() -> None:
    m = model(secure_policies=(
        SecurePolicy("all external", "Strict 7d", to=EXTERNAL),
        SecurePolicy("not the bank", None, to=TO_BANK),
    ))
    d = decide(m, BANK, PARTNER)
    assert {o.recipient: o.route for o in d.recipients} == {BANK: Route.NORMAL,
                                                            PARTNER: Route.PORTAL}


@pytest.mark.parametrize(("condition", "content"), [
    (SUBJECT_CONFIDENTIAL, {"subject": "Q3 figures - CONFIDENTIAL"}),
    (SecureCondition(ConditionField.BODY, "account   number"),
     {"body": "Your Account\nNumber is below"}),
    (SecureCondition(ConditionField.HEADER, "Secret", "X-Classification"),
     {"headers": (("x-classification", " secret "),)}),
])
def test_content_trigger_paths_subject_body_header(condition, content) -> None:
    m = model(secure_triggers=(trigger("t", condition),))
    d = decide(m, BANK, **content)
    assert d.applies and d.reasons[0].source is Source.TRIGGER
    assert condition.value.split()[0].lower() in d.reasons[0].why.lower()


@pytest.mark.parametrize(("condition", "content"), [
    (SUBJECT_CONFIDENTIAL, {"subject": "Q3 figures", "body": "confidential"}),
    (SecureCondition(ConditionField.BODY, "account number"), {"body": "account: number"}),
    (SecureCondition(ConditionField.HEADER, "Secret", "X-Classification"),
     {"headers": (("X-Classification", "secretive"),)}),
])
def test_content_trigger_does_not_match_near_misses(condition, content) -> None:
    assert not decide(model(secure_triggers=(trigger("t", condition),)), BANK, **content).applies


def test_trigger_match_all_needs_every_condition() -> None:
    body = SecureCondition(ConditionField.BODY, "iban")
    m = model(secure_triggers=(trigger("t", SUBJECT_CONFIDENTIAL, body, match=TriggerMatch.ALL),))
    assert not decide(m, BANK, subject="confidential").applies
    assert decide(m, BANK, subject="confidential", body="IBAN: 123").applies


def test_triggers_are_cumulative_and_the_most_restrictive_definition_wins() -> None:
    m = model(secure_triggers=(
        trigger("loose first", SUBJECT_CONFIDENTIAL, definition="Loose 90d"),
        trigger("strict second", SecureCondition(ConditionField.BODY, "iban")),
    ))
    d = decide(m, BANK, subject="Confidential", body="iban")
    assert [r.definition for r in d.reasons] == ["Loose 90d", "Strict 7d"]
    assert d.definition == STRICT_DEF
    assert "most restrictive of 2" in d.reason


def test_equally_restrictive_definitions_go_to_the_earlier_reason() -> None:
    twin = replace(LOOSE_DEF, name="Loose twin")
    m = replace(model(secure_triggers=(
        trigger("a", SUBJECT_CONFIDENTIAL, definition="Loose twin"),
        trigger("b", SUBJECT_CONFIDENTIAL, definition="Loose 90d"),
    )), secure_definitions=(STRICT_DEF, LOOSE_DEF, twin))
    assert decide(m, BANK, subject="confidential").definition == twin


def test_restrictiveness_order() -> None:
    settings = SecureSettings()
    assert restrictiveness(STRICT_DEF, settings) > restrictiveness(LOOSE_DEF, settings)
    never = replace(LOOSE_DEF, expiry_days=None)
    assert restrictiveness(LOOSE_DEF, settings) > restrictiveness(never, settings)


def test_trigger_scopes_and_validity_are_respected() -> None:
    m = model(secure_triggers=(
        trigger("bank only", SUBJECT_CONFIDENTIAL, to=TO_BANK),
        trigger("disabled", SUBJECT_CONFIDENTIAL, definition="Loose 90d",
                validity=Validity(enabled=False)),
    ))
    d = decide(m, BANK, PARTNER, subject="confidential")
    assert [r.definition for r in d.reasons] == ["Strict 7d"]
    assert {o.recipient: o.route for o in d.recipients} == {BANK: Route.PORTAL,
                                                            PARTNER: Route.NORMAL}


def test_client_header_path_applies_to_every_recipient() -> None:
    d = decide(model(), BANK, PARTNER, headers=(("X-Connectwiz-Secure", "Strict 7d"),))
    assert d.applies and d.definition == STRICT_DEF and d.requested == "Strict 7d"
    assert d.reasons[0].source is Source.CLIENT
    assert all(o.route is Route.PORTAL for o in d.recipients)


def test_client_header_with_unknown_definition_falls_back_to_external_recipients() -> None:
    d = decide(model(), BANK, headers=(("X-Connectwiz-Secure", "Nope"),))
    assert d.applies and d.definition == EXTERNAL_RECIPIENTS
    assert "'Nope'" in d.reasons[0].why


@pytest.mark.parametrize("how", ["policy", "trigger", "client"])
def test_bypass_disable_wins_over_every_trigger_path(how: str) -> None:
    kw: dict[str, object] = {"secure_bypass": (SecureBypass("bank exempt", to=TO_BANK),)}
    content: dict[str, object] = {}
    if how == "policy":
        kw["secure_policies"] = (SecurePolicy("all", "Strict 7d", to=EXTERNAL),)
    elif how == "trigger":
        kw["secure_triggers"] = (trigger("t", SUBJECT_CONFIDENTIAL),)
        content["subject"] = "confidential"
    else:
        content["headers"] = (("X-Connectwiz-Secure", "Strict 7d"),)
    d = decide(model(**kw), BANK, **content)
    assert not d.applies
    assert d.recipients[0].route is Route.NORMAL
    assert "bypass policy #1 'bank exempt' disables" in d.reason
    # The same message to someone the bypass does not cover is secure.
    assert decide(model(**kw), BANK, PARTNER, **content).routed(Route.PORTAL) == [PARTNER]


def test_bypass_take_no_action_leaves_secure_messaging_alone() -> None:
    m = model(secure_policies=(SecurePolicy("all", "Strict 7d", to=EXTERNAL),),
              secure_bypass=(SecureBypass("noop", BypassOption.TAKE_NO_ACTION, to=TO_BANK),))
    assert decide(m, BANK).routed(Route.PORTAL) == [BANK]


def test_more_specific_take_no_action_bypass_beats_a_broad_disable() -> None:
    m = model(secure_policies=(SecurePolicy("all", "Strict 7d", to=EXTERNAL),),
              secure_bypass=(SecureBypass("everyone off"),
                             SecureBypass("bank stays secure", BypassOption.TAKE_NO_ACTION,
                                          to=TO_BANK)))
    d = decide(m, BANK, PARTNER)
    assert d.routed(Route.PORTAL) == [BANK] and d.routed(Route.NORMAL) == [PARTNER]


def test_external_sender_is_never_secure() -> None:
    d = decide(model(), BOB, sender="someone@bank.example",
               headers=(("X-Connectwiz-Secure", "Strict 7d"),))
    assert not d.applies and "not internal" in d.reason


def test_all_recipients_holds_internal_recipients_unless_the_client_asked() -> None:
    m = model(secure_policies=(SecurePolicy("all", "All Recipients"),))
    d = decide(m, BANK, BOB)
    assert d.routed(Route.PORTAL) == [BANK, BOB]
    d = decide(m, BANK, BOB, headers=(("X-Connectwiz-Secure", "All Recipients"),))
    assert d.routed(Route.PORTAL) == [BANK] and d.routed(Route.BANNER) == [BOB]


def test_external_recipients_definition_banners_internal_recipients() -> None:
    m = model(secure_policies=(SecurePolicy("all", "External Recipients"),))
    d = decide(m, BANK, BOB)
    assert d.routed(Route.PORTAL) == [BANK] and d.routed(Route.BANNER) == [BOB]


def test_internal_only_message_from_the_client_gets_the_banner() -> None:
    d = decide(model(), BOB, headers=(("X-Connectwiz-Secure", "External Recipients"),))
    assert d.applies and d.routed(Route.BANNER) == [BOB]


def test_unknown_definition_in_a_policy_is_refused() -> None:
    m = model(secure_policies=(SecurePolicy("p", "Missing"),))
    with pytest.raises(ValueError, match="unknown secure definition 'Missing'"):
        SecureIndex(m)


def test_expiry_days_and_extension_limit() -> None:
    settings = SecureSettings(max_retention_days=365)
    expires, limit = expiry_window(AT, STRICT_DEF, settings)
    assert expires == AT + timedelta(days=7) and limit == AT + timedelta(days=14)


def test_never_expire_is_capped_by_retention_and_cannot_be_extended() -> None:
    settings = SecureSettings(max_retention_days=100)
    never = replace(LOOSE_DEF, expiry_days=None, max_extension_days=30)
    expires, limit = expiry_window(AT, never, settings)
    assert expires == limit == AT + timedelta(days=100)


def test_expiry_and_extension_never_pass_retention() -> None:
    settings = SecureSettings(max_retention_days=10)
    expires, limit = expiry_window(AT, replace(STRICT_DEF, max_extension_days=30), settings)
    assert expires == AT + timedelta(days=7) and limit == AT + timedelta(days=10)
    long = replace(STRICT_DEF, expiry_days=40)
    assert expiry_window(AT, long, settings)[0] == AT + timedelta(days=10)


def test_extend_expiry_within_and_beyond_the_limit() -> None:
    expires, limit = AT, AT + timedelta(days=7)
    assert extend_expiry(expires, limit, 7) == limit
    with pytest.raises(ValueError, match="at most 7 more days"):
        extend_expiry(expires, limit, 8)
    with pytest.raises(ValueError, match="at least one day"):
        extend_expiry(expires, limit, 0)


def test_banner_default_custom_and_removed() -> None:
    assert banner_text(STRICT_DEF) == DEFAULT_BANNER
    assert banner_text(replace(STRICT_DEF, banner="<b>Secure</b>")) == "<b>Secure</b>"
    assert banner_text(replace(STRICT_DEF, banner="")) is None
    assert banner_text(replace(STRICT_DEF, banner="  ")) is None


def test_reasons_are_ordered_client_policies_triggers_across_recipients() -> None:
    m = model(secure_policies=(SecurePolicy("partner", "Loose 90d",
                                            to=Scope(Applies.DOMAIN, ("partner.example",))),),
              secure_triggers=(trigger("bank only", SUBJECT_CONFIDENTIAL, definition="Loose 90d",
                                       to=TO_BANK),))
    d = decide(m, BANK, PARTNER, subject="confidential",
               headers=(("X-Connectwiz-Secure", "Loose 90d"),))
    assert [r.source for r in d.reasons] == [Source.CLIENT, Source.POLICY, Source.TRIGGER]
    assert d.definition == LOOSE_DEF and "client asked" in d.reason


def test_each_trigger_is_judged_on_its_own_conditions() -> None:
    """A trigger that does not match must not hide a later one that does."""
    m = model(secure_triggers=(
        trigger("iban", SecureCondition(ConditionField.BODY, "iban"), definition="Loose 90d"),
        trigger("confidential", SUBJECT_CONFIDENTIAL),
    ))
    d = decide(m, BANK, subject="Confidential", body="nothing to see")
    assert [(r.definition, r.position) for r in d.reasons] == [("Strict 7d", 2)]


def test_trigger_dates_are_checked_against_the_message_time() -> None:
    m = model(secure_triggers=(
        trigger("ended", SUBJECT_CONFIDENTIAL, definition="Loose 90d",
                validity=Validity(end=AT - timedelta(days=1))),
        trigger("running", SUBJECT_CONFIDENTIAL, validity=Validity(start=AT - timedelta(days=1))),
    ))
    d = decide(m, BANK, subject="confidential")
    assert [r.definition for r in d.reasons] == ["Strict 7d"]
