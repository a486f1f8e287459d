"""Address groups and address attributes from an LDAP directory, held in a cache.

Policy selection runs per message on the relay's event loop, so it never asks the
directory: it reads :attr:`DirectoryCache.snapshot`, an immutable picture of the directory
that :meth:`DirectoryCache.refresh` replaces in one assignment. Refreshes are blocking
(ldap3's synchronous strategy) and run in a worker thread: once when the policy loads,
then every ``refresh_seconds`` (relay/server.py). A failed refresh keeps the last good
snapshot, so data is at most one refresh interval plus one failed-refresh streak stale;
before the first success directory groups have no members and no address has
directory attributes (docs/policy-selection.md says what that means for policies).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from ldap3 import NONE, SUBTREE, Connection, Server
from ldap3.core.exceptions import LDAPException
from ldap3.utils.dn import parse_dn

from connectwiz.directory.snapshot import Snapshot
from connectwiz.policy.addresses import canonical_address
from connectwiz.policy.model import DirectorySettings

_MEMBER_ATTRIBUTES = ("member", "uniqueMember")
_PAGE = 500


class DirectoryError(Exception):
    """The directory could not be read; the message is one line for the log."""


def _dn_key(dn: str) -> str:
    try:
        return ",".join(f"{t.lower()}={v.lower()}" for t, v, _ in parse_dn(dn))
    except LDAPException:
        return dn.lower()


def _values(entry: Mapping[str, Any], name: str) -> list[str]:
    """An attribute's values as strings, whatever case the server spelled its name in."""
    for key, value in entry.items():
        if key.lower() == name.lower():
            items = value if isinstance(value, list) else [value]
            return [v if isinstance(v, str) else v.decode("utf-8", "replace") for v in items]
    return []


class DirectoryCache:
    """The latest directory snapshot for one :class:`DirectorySettings`."""

    def __init__(self, settings: DirectorySettings) -> None:
        self.settings = settings
        self.snapshot = Snapshot()

    def refresh(self) -> Snapshot:
        """Read the directory (blocking) and make the result current; DirectoryError when it
        cannot be read, the previous snapshot staying current."""
        try:
            snapshot = self._read()
        except LDAPException as exc:
            raise DirectoryError(f"{self.settings.url}: {exc}") from None
        except OSError as exc:
            raise DirectoryError(f"{self.settings.url}: {exc.strerror or exc}") from None
        self.snapshot = snapshot
        return snapshot

    def _connect(self) -> Connection:
        s = self.settings
        password = os.environ.get(s.password_env) if s.password_env else None
        if s.password_env and password is None:
            raise DirectoryError(f"{s.url}: the environment variable {s.password_env} holding "
                                 f"the bind password is not set")
        server = Server(s.url, connect_timeout=s.timeout_seconds, get_info=NONE)
        return Connection(server, user=s.bind_dn or None, password=password,
                          auto_bind=True, read_only=True, receive_timeout=s.timeout_seconds,
                          raise_exceptions=True)

    def _search(self, conn: Connection, search_filter: str,
                attributes: Iterable[str]) -> Iterator[tuple[str, Mapping[str, Any]]]:
        for item in conn.extend.standard.paged_search(
                self.settings.base_dn, search_filter, SUBTREE, attributes=list(attributes),
                paged_size=_PAGE, generator=True):
            if item.get("type") == "searchResEntry":
                yield item["dn"], item["attributes"]

    def _read(self) -> Snapshot:
        s = self.settings
        conn = self._connect()
        try:
            by_dn: dict[str, list[str]] = {}  # user DN -> its addresses
            attributes: dict[str, dict[str, frozenset[str]]] = {}
            for dn, entry in self._search(conn, s.user_filter, (s.mail_attribute, *s.attributes)):
                addresses = [a for a in (canonical_address(m).text
                                         for m in _values(entry, s.mail_attribute)) if a]
                by_dn[_dn_key(dn)] = addresses
                values = {name.lower(): frozenset(v.casefold() for v in _values(entry, name))
                          for name in s.attributes}
                for address in addresses:
                    attributes[address] = values
            raw_groups: dict[str, tuple[str, list[str]]] = {}  # DN -> (name, member DNs)
            for dn, entry in self._search(conn, s.group_filter,
                                          (s.group_name_attribute, *_MEMBER_ATTRIBUTES)):
                names = _values(entry, s.group_name_attribute)
                members = [_dn_key(m) for a in _MEMBER_ATTRIBUTES for m in _values(entry, a)]
                if names:
                    raw_groups[_dn_key(dn)] = (names[0], members)
        finally:
            conn.unbind()
        groups = {name.casefold(): frozenset(_expand(key, raw_groups, by_dn, set()))
                  for key, (name, _) in raw_groups.items()}
        return Snapshot(groups, attributes, datetime.now(UTC))


def _expand(group: str, groups: Mapping[str, tuple[str, list[str]]],
            users: Mapping[str, list[str]], seen: set[str]) -> Iterator[str]:
    """The addresses of a group's members, nested groups included (each group once, so a
    membership cycle ends)."""
    seen.add(group)
    for member in groups[group][1]:
        if member in groups:
            if member not in seen:
                yield from _expand(member, groups, users, seen)
        else:
            yield from users.get(member, ())
