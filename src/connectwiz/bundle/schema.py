"""Schema v1 and v2 of the bundle: plain TOML data (from tomllib or tomlkit) to a validated
PolicyModel, and a PolicyModel back to plain data. v2 adds the Secure Messaging sections;
a bundle without them is written as v1, so older connectwiz versions keep reading it.

Every problem is reported as a BundleError naming the file, line, key path and what is wrong;
the first problem found stops validation. Stored values are normalised (domains in A-label
form, addresses lower case, networks in canonical form).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Sequence
from datetime import date, datetime, time
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from connectwiz.bundle.errors import BundleError
from connectwiz.bundle.locate import KeyPath, Locator, format_path
from connectwiz.directory.snapshot import attribute_pair
from connectwiz.policy import domains
from connectwiz.policy.addresses import InvalidAddress, normalize_address
from connectwiz.policy.content import InvalidPattern, compile_pattern
from connectwiz.policy.domains import InvalidDomain, is_normal_domain, normalize_domain
from connectwiz.policy.model import (
    DEFAULT_RETENTION_DAYS,
    DEFAULT_SUBJECT_TAG,
    DEFAULT_TAG_DEFINITION,
    Applies,
    BasedOn,
    BypassOption,
    ClientCertificatePin,
    ConditionField,
    ConditionKind,
    DeliveryDefinition,
    DeliveryOption,
    DeliveryPolicy,
    DirectorySettings,
    EncryptionMode,
    ExternalDomain,
    InboundRoute,
    IPNetwork,
    LastValidation,
    Organisation,
    PolicyModel,
    ReceiptOption,
    ReceiptPolicy,
    Requesters,
    Scope,
    SecureBypass,
    SecureCondition,
    SecureDefinition,
    SecurePolicy,
    SecureRouting,
    SecureSettings,
    SecureTrigger,
    SslMode,
    TriggerMatch,
    ValidationStatus,
    Validity,
)
from connectwiz.policy.secure import BUILTIN_DEFINITIONS
from connectwiz.policy.sslmode import LEVELS, TLS_ORDER
from connectwiz.policy.wording import Wording, problems

SCHEMA_VERSION = 1  # what a bundle without Secure Messaging is written as
SECURE_SCHEMA_VERSION = 2  # the Secure Messaging sections need this
LATEST_SCHEMA_VERSION = SECURE_SCHEMA_VERSION
TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")

TOP_KEYS = (
    "schema_version", "organisation", "directory", "inbound_routes", "external_domains",
    "delivery_definitions", "delivery_policies", "receipt_policies",
    "secure_messaging", "secure_definitions", "secure_policies", "secure_triggers",
    "secure_bypass",
)
SECURE_KEYS = TOP_KEYS[-5:]
DIRECTORY_KEYS = ("url", "base_dn", "bind_dn", "password_env", "user_filter", "mail_attribute",
                  "group_filter", "group_name_attribute", "attributes", "refresh_seconds",
                  "timeout_seconds")
DIRECTORY_DEFAULTS = DirectorySettings("", "")
ORGANISATION_KEYS = ("internal_domains", "authorized_outbound", "address_groups", "name",
                     "logo")
ROUTE_KEYS = ("host", "port", "encryption_mode", "last_validation")
DOMAIN_KEYS = ("domain", "added", "encryption_mode", "last_validation")
VALIDATION_KEYS = ("status", "at", "reason")
DEFINITION_KEYS = ("name", "option", "encryption_mode", "min_tls", "managed", "ssl_mode")
VALIDITY_KEYS = ("enabled", "start", "end", "override", "bidirectional", "source_ips")
DELIVERY_KEYS = ("narrative", "definition", "from", "to", *VALIDITY_KEYS, "managed")
RECEIPT_KEYS = ("narrative", "option", "from", "to", *VALIDITY_KEYS, "managed",
                "client_certificate")
FROM_KEYS = ("based_on", "applies", "specifically")
TO_KEYS = ("applies", "specifically")
WORDING_TEXT_KEYS = ("notification_subject", "notification_text", "code_subject", "code_text",
                     "default_banner")
WORDING_COLOUR_KEYS = ("accent_colour", "bar_colour")
SECURE_SETTINGS_KEYS = ("max_retention_days", "subject_tag", "tag_definition",
                        *WORDING_COLOUR_KEYS, *WORDING_TEXT_KEYS)
SECURE_DEFINITION_KEYS = ("name", "description", "allow_print", "allow_reply", "allow_reply_all",
                          "expiry_days", "max_extension_days", "read_receipt", "banner",
                          "may_request", "routing")
REQUESTER_KEYS = ("groups", "domains", "addresses")
SECURE_POLICY_KEYS = ("narrative", "definition", "take_no_action", "from", "to", *VALIDITY_KEYS)
SECURE_TRIGGER_KEYS = ("narrative", "definition", "match", "conditions", "from", "to",
                       *VALIDITY_KEYS)
SECURE_BYPASS_KEYS = ("narrative", "option", "from", "to", *VALIDITY_KEYS)
# A condition's main key (exactly one) and its modifiers.
_CONDITION_MAIN = ("subject_contains", "body_contains", "subject_matches", "body_matches",
                   "header", "attachment_name", "attachment_type", "dictionary")
CONDITION_KEYS = (*_CONDITION_MAIN, "equals", "whole_word", "case_sensitive", "in", "threshold")

E = TypeVar("E", bound=StrEnum)

_ENUM_VALUES: dict[type[StrEnum], dict[str, StrEnum]] = {}


def parse_network(text: str) -> IPNetwork:
    """A CIDR (or a single address, meaning /32 or /128). Host bits set is an error, since
    ``10.0.0.1/8`` is more often a typo than a wish to allow all of 10/8."""
    text = text.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{text!r} has host bits set; did you mean '{fixed}'?") from None
        raise ValueError(
            f"{text!r} is not an IPv4 or IPv6 network (e.g. 192.0.2.0/24)"
        ) from None


def normalize_host(text: str) -> str:
    """An inbound route's host: an IP address (canonical form) or a host name."""
    try:
        return domains.normalize_host(text)
    except InvalidDomain as exc:
        raise ValueError(f"{text!r} is not an IP address or host name: {exc.reason}") from None


def check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port {port!r} is not a number from 1 to 65535")
    return port


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, time):
        return "a time"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (expected one of: {', '.join(choices)})"


class _Validator:
    def __init__(self, source: str, text: Callable[[], str]) -> None:
        self.source = source
        self._text = text
        self._locator: Locator | None = None
        self._domains: dict[str, str] = {}  # memo: the same domain appears in several lists
        self.groups: dict[str, tuple[str, ...]] = {}
        self.directory: DirectorySettings | None = None

    def fail(self, path: KeyPath, problem: str, value: object = None) -> NoReturn:
        if self._locator is None:
            self._locator = Locator(self._text())
        line = self._locator.line_of(path, value)
        raise BundleError(problem, file=self.source, line=line, key=format_path(path) or None)

    # Shapes -----------------------------------------------------------------------------

    def table(
        self, value: object, path: KeyPath, known: Sequence[str], required: Sequence[str] = ()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"must be a table, not {_kind(value)}")
        for key in value:
            if key not in known:
                self.fail((*path, key), f"unknown key {key!r}" + _suggest(key, known))
        for key in required:
            if key not in value:
                self.fail(path, f"required key {key!r} is missing")
        return value

    def tables(self, data: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = data.get(key, [])
        if not isinstance(value, list):
            self.fail((key,), f"must be an array of tables ([[{key}]]), not {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                self.fail((key, i), f"must be a table, not {_kind(item)}")
        return value

    def typed(self, t: dict[str, Any], key: str, path: KeyPath, kind: type, default: Any) -> Any:
        value = t.get(key, default)
        bad = isinstance(value, bool) != (kind is bool) or not isinstance(value, kind)
        if key in t and bad:
            names = {str: "a string", bool: "true or false", int: "an integer"}
            self.fail((*path, key), f"must be {names[kind]}, not {_kind(value)}")
        return value

    def text(self, t: dict[str, Any], key: str, path: KeyPath, default: str = "") -> str:
        value = self.typed(t, key, path, str, default)
        if key in t and not value.strip() and key in ("name", "narrative", "definition"):
            self.fail((*path, key), "must not be empty")
        return value

    def flag(self, t: dict[str, Any], key: str, path: KeyPath, default: bool = False) -> bool:
        return self.typed(t, key, path, bool, default)

    def choice(self, t: dict[str, Any], key: str, path: KeyPath, enum: type[E], default: E) -> E:
        if key not in t:
            return default
        value = t[key]
        members = _ENUM_VALUES.get(enum)
        if members is None:
            members = _ENUM_VALUES[enum] = {m.value: m for m in enum}
        if isinstance(value, str) and value in members:
            return members[value]  # type: ignore[return-value]
        choices = list(members)
        if not isinstance(value, str):
            self.fail((*path, key), f"must be a string, one of: {', '.join(choices)}")
        self.fail((*path, key), f"{value!r} is not valid" + _suggest(value, choices))

    def when(self, t: dict[str, Any], key: str, path: KeyPath) -> datetime | None:
        if key not in t:
            return None
        value = t[key]
        example = "e.g. 2026-12-01T00:00:00Z"
        if not isinstance(value, datetime):
            self.fail((*path, key), f"must be a TOML date-time with a UTC offset ({example}), "
                                    f"not {_kind(value)}")
        if value.tzinfo is None:
            self.fail((*path, key), f"has no UTC offset; add Z or +HH:MM ({example})")
        return value

    def strings(self, t: dict[str, Any], key: str, path: KeyPath) -> list[str]:
        value = t.get(key, [])
        if not isinstance(value, list):
            self.fail((*path, key), f"must be an array of strings, not {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail((*path, key, i), f"must be a string, not {_kind(item)}")
        return value

    def unique(self, items: Sequence[str], path: KeyPath) -> None:
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item in seen:
                self.fail((*path, i), f"{item!r} is listed twice", item)
            seen.add(item)

    # Values -----------------------------------------------------------------------------

    def domain(self, text: str, path: KeyPath) -> str:
        known = self._domains.get(text)
        if known is not None:
            return known
        if is_normal_domain(text):  # what connectwiz writes: no IDNA work at 10k domains
            self._domains[text] = text
            return text
        try:
            result = normalize_domain(text)
        except InvalidDomain as exc:
            self.fail(path, f"{text!r} {exc.reason}", text)
        self._domains[text] = result
        return result

    def domains(self, t: dict[str, Any], key: str, path: KeyPath) -> tuple[str, ...]:
        items = self.strings(t, key, path)
        result = [self.domain(d, (*path, key, i)) for i, d in enumerate(items)]
        self.unique(result, (*path, key))
        return tuple(result)

    def address(self, text: str, path: KeyPath) -> str:
        try:
            return normalize_address(text)
        except InvalidAddress as exc:
            self.fail(path, f"{text!r} {exc.reason}", text)

    def networks(self, t: dict[str, Any], key: str, path: KeyPath) -> tuple[IPNetwork, ...]:
        result: list[IPNetwork] = []
        for i, text in enumerate(self.strings(t, key, path)):
            try:
                result.append(parse_network(text))
            except ValueError as exc:
                self.fail((*path, key, i), str(exc), text)
        self.unique([str(n) for n in result], (*path, key))
        return tuple(result)

    def validation(self, t: dict[str, Any], path: KeyPath) -> LastValidation | None:
        if "last_validation" not in t:
            return None
        p = (*path, "last_validation")
        v = self.table(t["last_validation"], p, VALIDATION_KEYS, ("status", "at"))
        status = self.choice(v, "status", p, ValidationStatus, ValidationStatus.ERROR)
        at = self.when(v, "at", p)
        assert at is not None  # required above
        return LastValidation(status, at, self.text(v, "reason", p))

    # Sections ---------------------------------------------------------------------------

    def organisation(self, data: dict[str, Any]) -> Organisation:
        p: KeyPath = ("organisation",)
        t = self.table(data.get("organisation", {}), p, ORGANISATION_KEYS)
        groups_path = (*p, "address_groups")
        raw_groups = t.get("address_groups", {})
        if not isinstance(raw_groups, dict):
            self.fail(groups_path,
                      f"must be a table of name = [addresses], not {_kind(raw_groups)}")
        groups: dict[str, tuple[str, ...]] = {}
        for name in raw_groups:
            members = self.strings(raw_groups, name, groups_path)
            addrs = [self.address(a, (*groups_path, name, i)) for i, a in enumerate(members)]
            self.unique(addrs, (*groups_path, name))
            groups[name] = tuple(addrs)
        self.groups = groups
        name = " ".join(self.typed(t, "name", p, str, "").split())  # one line on the page
        if len(name) > 100:
            self.fail((*p, "name"), "must be at most 100 characters (it heads every portal page)")
        return Organisation(
            internal_domains=self.domains(t, "internal_domains", p),
            authorized_outbound=self.networks(t, "authorized_outbound", p),
            address_groups=groups,
            name=name,
            logo=self.typed(t, "logo", p, str, "").strip(),
        )

    # Directory (directory/ldap.py reads it) -----------------------------------------------

    def directory_settings(self, data: dict[str, Any]) -> DirectorySettings | None:
        if "directory" not in data:
            return None
        p: KeyPath = ("directory",)
        t = self.table(data["directory"], p, DIRECTORY_KEYS, ("url", "base_dn"))
        url = self.typed(t, "url", p, str, "").strip()
        if not url.lower().startswith(("ldap://", "ldaps://")):
            self.fail((*p, "url"), "must start with ldap:// or ldaps://", url)
        text = {k: self.typed(t, k, p, str, "").strip()
                for k in DIRECTORY_KEYS if k in t and k not in
                ("url", "attributes", "refresh_seconds", "timeout_seconds")}
        for key in ("base_dn", "mail_attribute", "group_name_attribute", "user_filter",
                    "group_filter"):
            if key in text and not text[key]:
                self.fail((*p, key), "must not be empty")
        for key in ("user_filter", "group_filter"):
            if key in text and not (text[key].startswith("(") and text[key].endswith(")")):
                self.fail((*p, key), "must be an LDAP filter in parentheses, e.g. (mail=*)",
                          text[key])
        attributes = [a.strip() for a in self.strings(t, "attributes", p)]
        for i, name in enumerate(attributes):
            if not name or not name.replace("-", "").isalnum():
                self.fail((*p, "attributes", i), f"{name!r} is not an LDAP attribute name")
        self.unique([a.lower() for a in attributes], (*p, "attributes"))
        numbers = {}
        for key, low in (("refresh_seconds", 10), ("timeout_seconds", 1)):
            numbers[key] = self.typed(t, key, p, int, getattr(DIRECTORY_DEFAULTS, key))
            if numbers[key] < low:
                self.fail((*p, key), f"must be at least {low}", numbers[key])
        return DirectorySettings(url=url, attributes=tuple(attributes), **text, **numbers)

    def attribute(self, text: str, p: KeyPath) -> str:
        """An address_attribute entry: ``name=value``, ``name`` one the directory reads."""
        if self.directory is None:
            self.fail(p, "address_attribute needs a [directory] section to read attributes "
                         "from", text)
        try:
            name, value = attribute_pair(text)
        except ValueError as exc:
            self.fail(p, str(exc), text)
        known = {a.lower(): a for a in self.directory.attributes}
        if name.lower() not in known:
            self.fail(p, f"attribute {name!r} is not in directory.attributes"
                         + _suggest(name, list(known.values()) or ["(none listed)"]), text)
        return f"{known[name.lower()]}={value}"

    def route(self, t: dict[str, Any], p: KeyPath) -> InboundRoute:
        self.table(t, p, ROUTE_KEYS, ("host",))
        host_text = self.typed(t, "host", p, str, "")
        try:
            host = normalize_host(host_text)
            port = check_port(t.get("port", 25))
        except ValueError as exc:
            key = "port" if str(exc).startswith("port") else "host"
            self.fail((*p, key), str(exc))
        mode = self.choice(t, "encryption_mode", p, EncryptionMode, None)  # type: ignore[arg-type]
        return InboundRoute(host, port, mode, self.validation(t, p))

    def external_domain(self, t: dict[str, Any], p: KeyPath) -> ExternalDomain:
        self.table(t, p, DOMAIN_KEYS, ("domain",))
        domain = self.domain(self.typed(t, "domain", p, str, ""), (*p, "domain"))
        return ExternalDomain(
            domain=domain,
            added=self.when(t, "added", p),
            encryption_mode=self.choice(t, "encryption_mode", p, EncryptionMode,
                                        EncryptionMode.STRICT),
            last_validation=self.validation(t, p),
        )

    def definition(self, t: dict[str, Any], p: KeyPath) -> DeliveryDefinition:
        self.table(t, p, DEFINITION_KEYS, ("name",))
        min_tls = t.get("min_tls", "1.2")
        if isinstance(min_tls, float):  # min_tls = 1.2 written without quotes
            min_tls = f"{min_tls:.1f}"
        if min_tls not in TLS_VERSIONS:
            self.fail((*p, "min_tls"), f"{min_tls!r} is not one of: {', '.join(TLS_VERSIONS)}")
        return DeliveryDefinition(
            name=self.text(t, "name", p),
            option=self.choice(t, "option", p, DeliveryOption, DeliveryOption.OPPORTUNISTIC),
            encryption_mode=self.choice(t, "encryption_mode", p, EncryptionMode,
                                        EncryptionMode.STRICT),
            min_tls=min_tls,
            managed=self.flag(t, "managed", p),
            ssl_mode=self.ssl_mode(t, p, min_tls),
        )

    def scope(self, t: dict[str, Any], side: str, p: KeyPath) -> Scope:
        if side not in t:
            return Scope()
        sp = (*p, side)
        known = FROM_KEYS if side == "from" else TO_KEYS
        s = self.table(t[side], sp, known)
        applies = self.choice(s, "applies", sp, Applies, Applies.EVERYONE)
        based_on = self.choice(s, "based_on", sp, BasedOn, BasedOn.ENVELOPE)
        entries = self.strings(s, "specifically", sp)
        lp = (*sp, "specifically")
        keyed = applies in (Applies.DOMAIN, Applies.INDIVIDUAL, Applies.ADDRESS_GROUP,
                            Applies.ADDRESS_ATTRIBUTE)
        if keyed and not entries:
            self.fail(lp if "specifically" in s else (*sp, "applies"),
                      f"applies = '{applies}' needs at least one entry in 'specifically'")
        if not keyed and entries:
            self.fail(lp, f"'specifically' is not used with applies = '{applies}'")
        if applies is Applies.DOMAIN:
            items = [self.domain(e, (*lp, i)) for i, e in enumerate(entries)]
        elif applies is Applies.INDIVIDUAL:
            items = [self.address(e, (*lp, i)) for i, e in enumerate(entries)]
        elif applies is Applies.ADDRESS_ATTRIBUTE:
            items = [self.attribute(e, (*lp, i)) for i, e in enumerate(entries)]
        else:
            items = list(entries)
            for i, name in enumerate(items):
                # Without a directory every group must be the bundle's; with one, a name the
                # bundle does not define is a directory group (checked when it is read).
                if name not in self.groups and self.directory is None:
                    self.fail((*lp, i), f"unknown address group {name!r}"
                              + _suggest(name, list(self.groups) or ["(none defined)"]), name)
        self.unique(items, lp)
        return Scope(applies, tuple(items), based_on)

    def validity(self, t: dict[str, Any], p: KeyPath) -> Validity:
        start, end = self.when(t, "start", p), self.when(t, "end", p)
        if start is not None and end is not None and end <= start:
            self.fail((*p, "end"), "must be later than start")
        return Validity(
            enabled=self.flag(t, "enabled", p, True),
            start=start,
            end=end,
            override=self.flag(t, "override", p),
            bidirectional=self.flag(t, "bidirectional", p),
            source_ips=self.networks(t, "source_ips", p),
        )

    def delivery_policy(
        self, t: dict[str, Any], p: KeyPath, definitions: dict[str, DeliveryDefinition]
    ) -> DeliveryPolicy:
        self.table(t, p, DELIVERY_KEYS, ("narrative", "definition"))
        name = self.text(t, "definition", p)
        if name not in definitions:
            self.fail((*p, "definition"), f"no [[delivery_definitions]] is named {name!r}"
                      + _suggest(name, list(definitions) or ["(none defined)"]))
        return DeliveryPolicy(
            narrative=self.text(t, "narrative", p),
            definition=name,
            from_=self.scope(t, "from", p),
            to=self.scope(t, "to", p),
            validity=self.validity(t, p),
            managed=self.flag(t, "managed", p),
        )

    def receipt_policy(self, t: dict[str, Any], p: KeyPath) -> ReceiptPolicy:
        self.table(t, p, RECEIPT_KEYS, ("narrative",))
        return ReceiptPolicy(
            narrative=self.text(t, "narrative", p),
            option=self.choice(t, "option", p, ReceiptOption, ReceiptOption.OPPORTUNISTIC),
            from_=self.scope(t, "from", p),
            to=self.scope(t, "to", p),
            validity=self.validity(t, p),
            managed=self.flag(t, "managed", p),
            client_certificate=self.client_certificate(t, p),
        )

    # SSL Mode and pinned client certificates (issue 18) ---------------------------------

    def ssl_mode(self, t: dict[str, Any], p: KeyPath, min_tls: str) -> SslMode | None:
        if "ssl_mode" not in t:
            return None  # Strong, or Legacy for an older min_tls: see sslmode.default_mode
        mode = self.choice(t, "ssl_mode", p, SslMode, SslMode.STRONG)
        floor = LEVELS[mode].min_tls
        if TLS_ORDER.index(min_tls) < TLS_ORDER.index(floor):
            self.fail((*p, "min_tls"), f"'{min_tls}' is older than ssl_mode = '{mode}' allows "
                                       f"(TLS {floor} or newer); raise min_tls or choose "
                                       f"ssl_mode = 'legacy'")
        return mode

    def client_certificate(self, t: dict[str, Any], p: KeyPath) -> ClientCertificatePin | None:
        """A PEM file (relative to the bundle's folder) holding the certificate(s) a sending
        server must present: its own, or the CA that issued it."""
        if "client_certificate" not in t:
            return None
        # Imported here: most bundles pin nothing, and every command loads a bundle.
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        key = (*p, "client_certificate")
        name = self.typed(t, "client_certificate", p, str, "").strip()
        if not name:
            self.fail(key, "must name a PEM certificate file (relative to the bundle's folder)")
        folder = Path(self.source).parent if not self.source.startswith("<") else Path()
        try:
            pem = (folder / name).read_bytes()
        except OSError as exc:
            self.fail(key, f"cannot read {name!r} (relative to the bundle's folder): "
                           f"{exc.strerror or exc}")
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except ValueError:
            self.fail(key, f"{name!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        return ClientCertificatePin(name, tuple(
            c.public_bytes(serialization.Encoding.DER) for c in certs))

    # Secure Messaging (schema v2) ---------------------------------------------------------

    def count(self, t: dict[str, Any], key: str, path: KeyPath, default: int | None,
              minimum: int) -> int | None:
        value = t.get(key, default)
        if key in t and (isinstance(value, bool) or not isinstance(value, int)
                         or value < minimum):
            self.fail((*path, key), f"must be a whole number of days, at least {minimum}")
        return value

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
                          + _suggest(name, list(self.groups) or ["(none defined)"]), name)
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
                                      f"not {_kind(banner)}")
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
                      + _suggest(name, list(names)))
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
        kinds = [k for k in _CONDITION_MAIN if k in t]
        if len(kinds) != 1:
            self.fail(p, "a condition is one of: " + ", ".join(
                f"{{ {k} = ... }}" for k in _CONDITION_MAIN) + " (header goes with equals)")
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
                      + _suggest(settings.tag_definition, names))
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

    # The whole document -----------------------------------------------------------------

    def model(self, data: dict[str, Any]) -> PolicyModel:
        self.schema_version(data)
        self.table(data, (), TOP_KEYS)
        self.directory = self.directory_settings(data)
        org = self.organisation(data)

        routes: list[InboundRoute] = []
        seen_routes: dict[tuple[str, int], int] = {}
        for i, t in enumerate(self.tables(data, "inbound_routes")):
            route = self.route(t, ("inbound_routes", i))
            key = (route.host, route.port)
            if key in seen_routes:
                self.fail(("inbound_routes", i, "host"),
                          f"route {route.host}:{route.port} is listed twice "
                          f"(also inbound_routes[{seen_routes[key]}])")
            seen_routes[key] = i
            routes.append(route)

        domains: list[ExternalDomain] = []
        seen_domains: dict[str, int] = {}
        internal = set(org.internal_domains)
        for i, t in enumerate(self.tables(data, "external_domains")):
            ext = self.external_domain(t, ("external_domains", i))
            if ext.domain in seen_domains:
                self.fail(("external_domains", i, "domain"),
                          f"{ext.domain!r} is listed twice "
                          f"(also external_domains[{seen_domains[ext.domain]}])")
            if ext.domain in internal:
                self.fail(("external_domains", i, "domain"),
                          f"{ext.domain!r} is also an internal domain "
                          f"(organisation.internal_domains)")
            seen_domains[ext.domain] = i
            domains.append(ext)

        definitions: dict[str, DeliveryDefinition] = {}
        for i, t in enumerate(self.tables(data, "delivery_definitions")):
            d = self.definition(t, ("delivery_definitions", i))
            if d.name in definitions:
                self.fail(("delivery_definitions", i, "name"),
                          f"definition name {d.name!r} is used twice")
            definitions[d.name] = d

        delivery = tuple(
            self.delivery_policy(t, ("delivery_policies", i), definitions)
            for i, t in enumerate(self.tables(data, "delivery_policies"))
        )
        receipt = tuple(
            self.receipt_policy(t, ("receipt_policies", i))
            for i, t in enumerate(self.tables(data, "receipt_policies"))
        )
        self.managed(domains, definitions, delivery, receipt)
        return PolicyModel(org, tuple(routes), tuple(domains), tuple(definitions.values()),
                           delivery, receipt, **self.secure(data), directory=self.directory)

    def schema_version(self, data: dict[str, Any]) -> None:
        if "schema_version" not in data:
            self.fail((), f"schema_version is missing; a v{SCHEMA_VERSION} bundle starts with "
                          f"'schema_version = {SCHEMA_VERSION}'")
        version = data["schema_version"]
        if isinstance(version, bool) or not isinstance(version, int):
            self.fail(("schema_version",), f"must be an integer, not {_kind(version)}")
        if version > LATEST_SCHEMA_VERSION:
            self.fail(("schema_version",),
                      f"version {version} was written by a newer connectwiz; this one reads "
                      f"versions {SCHEMA_VERSION} to {LATEST_SCHEMA_VERSION} (upgrade connectwiz)")
        if version < SCHEMA_VERSION:
            self.fail(("schema_version",), f"unknown version {version}; expected "
                                           f"{SCHEMA_VERSION} or {LATEST_SCHEMA_VERSION}")
        if version < SECURE_SCHEMA_VERSION:
            for key in SECURE_KEYS:
                if key in data:
                    self.fail((key,), f"Secure Messaging sections need schema_version = "
                                      f"{SECURE_SCHEMA_VERSION} (this bundle says {version})")

    def managed(
        self, domains: list[ExternalDomain], definitions: dict[str, DeliveryDefinition],
        delivery: tuple[DeliveryPolicy, ...], receipt: tuple[ReceiptPolicy, ...],
    ) -> None:
        """The managed policies list exactly the external domains (by encryption mode), so
        what the relay enforces is what ``domains list`` shows."""
        by_mode: dict[EncryptionMode, int] = {}
        for i, pol in enumerate(delivery):
            if not pol.managed:
                continue
            if pol.to.applies is not Applies.DOMAIN:
                self.fail(("delivery_policies", i, "to", "applies"),
                          "a managed policy (managed = true) must apply to 'domain'")
            mode = definitions[pol.definition].encryption_mode
            if mode in by_mode:
                self.fail(("delivery_policies", i, "managed"),
                          f"a second managed delivery policy with encryption_mode = '{mode}' "
                          f"(the first is delivery_policies[{by_mode[mode]}]); keep one")
            by_mode[mode] = i
        receipt_at = None
        for i, rpol in enumerate(receipt):
            if not rpol.managed:
                continue
            if rpol.from_.applies is not Applies.DOMAIN:
                self.fail(("receipt_policies", i, "from", "applies"),
                          "a managed policy (managed = true) must apply to 'domain'")
            if receipt_at is not None:
                self.fail(("receipt_policies", i, "managed"),
                          f"a second managed receipt policy (the first is "
                          f"receipt_policies[{receipt_at}]); keep one")
            receipt_at = i

        modes = {d.domain: d.encryption_mode for d in domains}
        for mode, i in by_mode.items():
            for k, name in enumerate(delivery[i].to.specifically):
                if modes.get(name) is not mode:
                    self.fail(("delivery_policies", i, "to", "specifically", k),
                              f"{name!r} is not an external domain with encryption_mode = "
                              f"'{mode}'; a managed policy lists only those (fix the "
                              f"[[external_domains]] entry or remove it here)", name)
        if receipt_at is not None:
            for k, name in enumerate(receipt[receipt_at].from_.specifically):
                if name not in modes:
                    self.fail(("receipt_policies", receipt_at, "from", "specifically", k),
                              f"{name!r} is not in [[external_domains]]; a managed policy lists "
                              f"only those (add the domain there or remove it here)", name)
        strict_sets = {mode: set(delivery[i].to.specifically) for mode, i in by_mode.items()}
        received = set(receipt[receipt_at].from_.specifically) if receipt_at is not None else set()
        for j, ext in enumerate(domains):
            where = ("external_domains", j, "domain")
            if ext.domain not in strict_sets.get(ext.encryption_mode, ()):
                self.fail(where, f"{ext.domain!r} is missing from the managed delivery policy "
                                 f"with encryption_mode = '{ext.encryption_mode}' "
                                 f"(managed = true); add it to that policy's 'specifically' list")
            if ext.domain not in received:
                self.fail(where, f"{ext.domain!r} is missing from the managed receipt policy "
                                 f"(managed = true); add it to that policy's 'from.specifically'")


def build_model(data: dict[str, Any], source: str, text: Callable[[], str]) -> PolicyModel:
    """Validate parsed TOML data. ``text`` gives the document text, only needed (and only
    called) to find the line of an error."""
    return _Validator(source, text).model(data)
