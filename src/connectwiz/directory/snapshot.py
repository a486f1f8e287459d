"""What policy selection reads from a directory: an immutable snapshot (no LDAP here, so
selection does not import an LDAP client)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the directory said at ``loaded_at`` (None: never read)."""

    # casefolded group name -> member addresses (canonical, nested groups expanded)
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # address -> lower-case attribute name -> casefolded values
    attributes: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=dict)
    loaded_at: datetime | None = None

    def members(self, group: str) -> frozenset[str]:
        return self.groups.get(group.casefold(), frozenset())

    def has(self, address: str, attribute: str, value: str) -> bool:
        values = self.attributes.get(address, {}).get(attribute.lower(), ())
        return value.casefold() in values


def attribute_pair(text: str) -> tuple[str, str]:
    """``"department=Finance"`` -> ("department", "Finance"); ValueError (one line) if it is
    not ``attribute=value``."""
    name, eq, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not eq or not name or not value or not name.replace("-", "").isalnum():
        raise ValueError(f"{text!r} is not attribute=value (e.g. department=Finance)")
    return name, value
