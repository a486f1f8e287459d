"""Reading a bundle's parsed TOML: shapes (tables, arrays) and typed values (strings, flags,
choices, dates, domains, addresses, networks), each problem a BundleError naming the file,
line and key path. ``bundle.schema`` builds the PolicyModel with it."""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Sequence
from datetime import date, datetime, time
from enum import StrEnum
from typing import Any, NoReturn, TypeVar

from connectwiz.bundle.errors import BundleError
from connectwiz.bundle.locate import KeyPath, Locator, format_path
from connectwiz.policy import domains
from connectwiz.policy.addresses import InvalidAddress, normalize_address
from connectwiz.policy.domains import InvalidDomain, is_normal_domain, normalize_domain
from connectwiz.policy.model import IPNetwork

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


def kind_of(value: object) -> str:
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


def suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (expected one of: {', '.join(choices)})"



class TableReader:
    """Reads values out of the tables of one document; the first problem stops it."""

    def __init__(self, source: str, text: Callable[[], str]) -> None:
        self.source = source
        self._text = text
        self._locator: Locator | None = None
        self._domains: dict[str, str] = {}  # memo: the same domain appears in several lists

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
            self.fail(path, f"must be a table, not {kind_of(value)}")
        for key in value:
            if key not in known:
                self.fail((*path, key), f"unknown key {key!r}" + suggest(key, known))
        for key in required:
            if key not in value:
                self.fail(path, f"required key {key!r} is missing")
        return value

    def tables(self, data: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = data.get(key, [])
        if not isinstance(value, list):
            self.fail((key,), f"must be an array of tables ([[{key}]]), not {kind_of(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                self.fail((key, i), f"must be a table, not {kind_of(item)}")
        return value

    def typed(self, t: dict[str, Any], key: str, path: KeyPath, kind: type, default: Any) -> Any:
        value = t.get(key, default)
        bad = isinstance(value, bool) != (kind is bool) or not isinstance(value, kind)
        if key in t and bad:
            names = {str: "a string", bool: "true or false", int: "an integer"}
            self.fail((*path, key), f"must be {names[kind]}, not {kind_of(value)}")
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
        self.fail((*path, key), f"{value!r} is not valid" + suggest(value, choices))

    def when(self, t: dict[str, Any], key: str, path: KeyPath) -> datetime | None:
        if key not in t:
            return None
        value = t[key]
        example = "e.g. 2026-12-01T00:00:00Z"
        if not isinstance(value, datetime):
            self.fail((*path, key), f"must be a TOML date-time with a UTC offset ({example}), "
                                    f"not {kind_of(value)}")
        if value.tzinfo is None:
            self.fail((*path, key), f"has no UTC offset; add Z or +HH:MM ({example})")
        return value

    def strings(self, t: dict[str, Any], key: str, path: KeyPath) -> list[str]:
        value = t.get(key, [])
        if not isinstance(value, list):
            self.fail((*path, key), f"must be an array of strings, not {kind_of(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail((*path, key, i), f"must be a string, not {kind_of(item)}")
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

    def count(self, t: dict[str, Any], key: str, path: KeyPath, default: int | None,
              minimum: int) -> int | None:
        value = t.get(key, default)
        if key in t and (isinstance(value, bool) or not isinstance(value, int)
                         or value < minimum):
            self.fail((*path, key), f"must be a whole number of days, at least {minimum}")
        return value
