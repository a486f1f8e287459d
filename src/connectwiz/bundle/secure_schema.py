"""The Secure Messaging sections of a bundle (schema v2): settings and wording, secure
definitions, policies, content triggers and bypass policies."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from connectwiz.bundle.keys import (
    CONDITION_KEYS,
    CONDITION_MAIN_KEYS,
    REQUESTER_KEYS,
    SECURE_BYPASS_KEYS,
    SECURE_DEFINITION_KEYS,
    SECURE_POLICY_KEYS,
    SECURE_SETTINGS_KEYS,
    SECURE_TRIGGER_KEYS,
    WORDING_COLOUR_KEYS,
    WORDING_TEXT_KEYS,
)
from connectwiz.bundle.locate import KeyPath
from connectwiz.bundle.reader import TableReader, kind_of, suggest
from connectwiz.policy.content import InvalidPattern, compile_pattern
from connectwiz.policy.model import (
    DEFAULT_RETENTION_DAYS,
    DEFAULT_SUBJECT_TAG,
    DEFAULT_TAG_DEFINITION,
    BypassOption,
    ConditionField,
    ConditionKind,
    DirectorySettings,
    Requesters,
    Scope,
    SecureBypass,
    SecureCondition,
    SecureDefinition,
    SecurePolicy,
    SecureRouting,
    SecureSettings,
    SecureTrigger,
    TriggerMatch,
    Validity,
)
from connectwiz.policy.secure import BUILTIN_DEFINITIONS
from connectwiz.policy.wording import Wording, problems


class SecureSections(TableReader):
    """The validator's Secure Messaging half (``bundle.schema._Validator`` is the rest)."""

    # Set and defined by the validator: the address groups and directory a requester may
    # name, and the scopes and validity a secure policy shares with the TLS policies.
    groups: dict[str, tuple[str, ...]]
    directory: DirectorySettings | None
    scope: Callable[[dict[str, Any], str, KeyPath], Scope]
    validity: Callable[[dict[str, Any], KeyPath], Validity]

    def secure_settings(self, data: dict[str, Any]) -> SecureSettings:
        p: KeyPath = ("secure_messaging",)
        t = self.table(data.get("secure_messaging", {}), p, SECURE_SETTINGS_KEYS)
        days = self.count(t, "max_retention_days", p, DEFAULT_RETENTION_DAYS, 1)
        assert days is not None
        tag = self.text(t, "subject_tag", p, DEFAULT_SUBJECT_TAG).strip()
        if re.search(r"[\[\]:,\s]", tag):
            self.fail((*p, "subject_tag"), "must be one word without brackets, ':' or ',' "
                                           "(\"\" switches subject tags off)", tag)
        return SecureSettings(max_retention_days=days, subject_tag=tag,
                              tag_definition=self.text(t, "tag_definition", p,
                                                       DEFAULT_TAG_DEFINITION),
                              wording=self.wording(t, p))

    def wording(self, t: dict[str, Any], p: KeyPath) -> Wording:
        default = Wording()
        found: dict[str, str] = {}
        for key in WORDING_COLOUR_KEYS:
            if key in t:
                value = self.text(t, key, p).strip().lower()
                if not re.fullmatch(r"#[0-9a-f]{3}|#[0-9a-f]{6}", value):
                    self.fail((*p, key), "must be a colour like \"#1f5fbf\"", value)
                found[key] = value
        for key in WORDING_TEXT_KEYS:
            if key in t:
                field_name = "banner" if key == "default_banner" else key
                value = self.text(t, key, p, getattr(default, field_name))
                problem = problems(field_name, value)
                if problem:
                    self.fail((*p, key), problem, value)
                found[field_name] = value
        return Wording(**found)

    def requesters(self, t: dict[str, Any], p: KeyPath) -> Requesters:
        if "may_request" not in t:
            return Requesters()
        rp = (*p, "may_request")
        r = self.table(t["may_request"], rp, REQUESTER_KEYS)
        groups = self.strings(r, "groups", rp)
        for i, name in enumerate(groups):
            if name not in self.groups and self.directory is None:  # else the directory's
                self.fail((*rp, "groups", i), f"unknown address group {name!r}"
                          + suggest(name, list(self.groups) or ["(none defined)"]), name)
        domains = [self.domain(d, (*rp, "domains", i))
                   for i, d in enumerate(self.strings(r, "domains", rp))]
        addresses = [self.address(a, (*rp, "addresses", i))
                     for i, a in enumerate(self.strings(r, "addresses", rp))]
        who = Requesters(tuple(groups), tuple(domains), tuple(addresses))
        if who.everyone:
            self.fail(rp, "lists nobody; leave may_request out to let everyone request it")
        return who

    def secure_definition(self, t: dict[str, Any], p: KeyPath) -> SecureDefinition:
        self.table(t, p, SECURE_DEFINITION_KEYS, ("name",))
        name = self.text(t, "name", p)
        if any(b.name == name for b in BUILTIN_DEFINITIONS):
            self.fail((*p, "name"), f"{name!r} is a built-in definition; policies and triggers "
                                    f"can use it as it is, or choose another name")
        expiry: int | None = 30
        if t.get("expiry_days") == "never":
            expiry = None
        elif isinstance(t.get("expiry_days"), str):
            self.fail((*p, "expiry_days"), "must be a number of days or \"never\"")
        else:
            expiry = self.count(t, "expiry_days", p, 30, 1)
        banner = t.get("banner")
        if banner is not None and not isinstance(banner, str):
            self.fail((*p, "banner"), f"must be a string (\"\" removes the banner), "
                                      f"not {kind_of(banner)}")
        return SecureDefinition(
            name=name,
            description=self.text(t, "description", p),
            allow_print=self.flag(t, "allow_print", p, True),
            allow_reply=self.flag(t, "allow_reply", p, True),
            allow_reply_all=self.flag(t, "allow_reply_all", p, False),
            expiry_days=expiry,
            max_extension_days=self.count(t, "max_extension_days", p, 0, 0) or 0,
            read_receipt=self.flag(t, "read_receipt", p, False),
            banner=banner,
            requesters=self.requesters(t, p),
            routing=self.choice(t, "routing", p, SecureRouting, SecureRouting.EXTERNAL),
        )

    def one_way(self, t: dict[str, Any], p: KeyPath) -> Validity:
        validity = self.validity(t, p)
        if validity.bidirectional:
            self.fail((*p, "bidirectional"),
                      "Secure Messaging is for mail from internal senders only; a secure "
                      "policy or trigger cannot be Bi-Directional (remove the key)")
        return validity

    def secure_reference(self, t: dict[str, Any], p: KeyPath, names: Sequence[str]) -> str:
        name = self.text(t, "definition", p)
        if name not in names:
            self.fail((*p, "definition"), f"no secure definition is named {name!r}"
                      + suggest(name, list(names)))
        return name

    def secure_policy(self, t: dict[str, Any], p: KeyPath, names: Sequence[str]) -> SecurePolicy:
        self.table(t, p, SECURE_POLICY_KEYS, ("narrative",))
        no_action = self.flag(t, "take_no_action", p)
        if no_action == ("definition" in t):
            self.fail(p, "give either definition = \"<secure definition>\" or "
                         "take_no_action = true")
        return SecurePolicy(
            narrative=self.text(t, "narrative", p),
            definition=None if no_action else self.secure_reference(t, p, names),
            from_=self.scope(t, "from", p),
            to=self.scope(t, "to", p),
            validity=self.one_way(t, p),
        )

    # Content conditions (policy/content.py evaluates them) ------------------------------

    def condition(self, c: object, p: KeyPath) -> SecureCondition:
        t = self.table(c, p, CONDITION_KEYS)
        kinds = [k for k in CONDITION_MAIN_KEYS if k in t]
        if len(kinds) != 1:
            self.fail(p, "a condition is one of: " + ", ".join(
                f"{{ {k} = ... }}" for k in CONDITION_MAIN_KEYS) + " (header goes with equals)")
        kind = kinds[0]
        if (kind == "header") != ("equals" in t):
            self.fail(p, "'header' and 'equals' go together")
        for key in ("in", "threshold"):
            if key in t and kind != "dictionary":
                self.fail((*p, key), "only a dictionary condition takes it")
        if "whole_word" in t and not (kind.endswith("_contains") or kind == "dictionary"):
            self.fail((*p, "whole_word"), "only *_contains and dictionary conditions take it")
        case = self.flag(t, "case_sensitive", p)
        if kind == "dictionary":
            return self.dictionary(t, p, case)
        value = self.typed(t, "equals" if kind == "header" else kind, p, str, "")
        if not value.strip():
            self.fail((*p, kind), "must not be empty")
        if kind == "header":
            header = self.typed(t, "header", p, str, "").strip()
            if not header or any(ch.isspace() or ch == ":" for ch in header):
                self.fail((*p, "header"), f"{header!r} is not a header name")
            return SecureCondition(ConditionField.HEADER, value, header)
        if kind.startswith("attachment_"):
            return SecureCondition(ConditionField(kind), value, case_sensitive=case)
        field = ConditionField(kind.partition("_")[0])
        if kind.endswith("_matches"):
            try:
                compile_pattern(value, case)
            except InvalidPattern as exc:
                self.fail((*p, kind), str(exc), value)
            return SecureCondition(field, value, kind=ConditionKind.MATCHES, case_sensitive=case)
        return SecureCondition(field, value, whole_word=self.flag(t, "whole_word", p),
                               case_sensitive=case)

    def dictionary(self, t: dict[str, Any], p: KeyPath, case: bool) -> SecureCondition:
        terms = [" ".join(term.split()) for term in self.strings(t, "dictionary", p)]
        if not terms or not all(terms):
            self.fail((*p, "dictionary"), "must be a non-empty list of non-empty terms")
        self.unique(terms if case else [term.casefold() for term in terms], (*p, "dictionary"))
        threshold = self.typed(t, "threshold", p, int, 1)
        if threshold < 1:
            self.fail((*p, "threshold"), "must be a whole number of at least 1", threshold)
        where = self.typed(t, "in", p, str, "body")
        if where not in ("subject", "body"):
            self.fail((*p, "in"), 'must be "subject" or "body"', where)
        return SecureCondition(ConditionField(where), "", kind=ConditionKind.DICTIONARY,
                               whole_word=self.flag(t, "whole_word", p, True),
                               case_sensitive=case, terms=tuple(terms), threshold=threshold)

    def secure_trigger(self, t: dict[str, Any], p: KeyPath, names: Sequence[str]
                       ) -> SecureTrigger:
        self.table(t, p, SECURE_TRIGGER_KEYS, ("narrative", "definition", "conditions"))
        raw = t["conditions"]
        cp = (*p, "conditions")
        if not isinstance(raw, list) or not raw:
            self.fail(cp, "must be a non-empty array of conditions")
        return SecureTrigger(
            narrative=self.text(t, "narrative", p),
            definition=self.secure_reference(t, p, names),
            conditions=tuple(self.condition(c, (*cp, i)) for i, c in enumerate(raw)),
            match=self.choice(t, "match", p, TriggerMatch, TriggerMatch.ANY),
            from_=self.scope(t, "from", p),
            to=self.scope(t, "to", p),
            validity=self.one_way(t, p),
        )

    def secure_bypass(self, t: dict[str, Any], p: KeyPath) -> SecureBypass:
        self.table(t, p, SECURE_BYPASS_KEYS, ("narrative",))
        return SecureBypass(
            narrative=self.text(t, "narrative", p),
            option=self.choice(t, "option", p, BypassOption, BypassOption.DISABLE),
            from_=self.scope(t, "from", p),
            to=self.scope(t, "to", p),
            validity=self.validity(t, p),
        )

    def secure(self, data: dict[str, Any]) -> dict[str, Any]:
        """The PolicyModel fields of the Secure Messaging sections."""
        definitions: list[SecureDefinition] = []
        names = [b.name for b in BUILTIN_DEFINITIONS]
        for i, t in enumerate(self.tables(data, "secure_definitions")):
            d = self.secure_definition(t, ("secure_definitions", i))
            if d.name in names:
                self.fail(("secure_definitions", i, "name"),
                          f"secure definition name {d.name!r} is used twice")
            names.append(d.name)
            definitions.append(d)
        settings = self.secure_settings(data)
        if settings.tag_definition not in names:
            self.fail(("secure_messaging", "tag_definition"),
                      f"no secure definition is named {settings.tag_definition!r}"
                      + suggest(settings.tag_definition, names))
        return {
            "secure_settings": settings,
            "secure_definitions": tuple(definitions),
            "secure_policies": tuple(
                self.secure_policy(t, ("secure_policies", i), names)
                for i, t in enumerate(self.tables(data, "secure_policies"))),
            "secure_triggers": tuple(
                self.secure_trigger(t, ("secure_triggers", i), names)
                for i, t in enumerate(self.tables(data, "secure_triggers"))),
            "secure_bypass": tuple(
                self.secure_bypass(t, ("secure_bypass", i))
                for i, t in enumerate(self.tables(data, "secure_bypass"))),
        }

