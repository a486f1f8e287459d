"""Edit a big bundle without running tomlkit over every [[external_domains]] entry.

tomlkit keeps comments and layout but parses slowly: at 10,000 partner domains the entries
are most of the file and most of a full parse. When the entries form one run of the file,
the text is split into head, run and tail. Head and tail are parsed by tomlkit as usual;
each entry of the run stays text (with the data tomli already read) until it is edited,
and only then is that one entry parsed by tomlkit. ``SplitDocument`` offers the few
document operations the edits use, so the edits do not know which kind they work on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import tomlkit
from tomlkit.items import AoT, Item, Table
from tomlkit.toml_document import TOMLDocument

from connectwiz.bundle.locate import code_lines

EXT = "external_domains"
_HEADER = re.compile(r"[ \t]*\[")
_EXT_ENTRY = re.compile(r"[ \t]*\[\[[ \t]*external_domains[ \t]*\]\]")
_EXT_SUBTABLE = re.compile(r"[ \t]*\[[ \t]*external_domains[ \t]*\.")


class Entry:
    """One [[external_domains]] entry: text and tomli data until edited, then a tomlkit
    document of its own."""

    def __init__(self, text: str = "", data: dict[str, Any] | None = None,
                 table: Table | None = None) -> None:
        self._text = text
        self._data = data or {}
        self._doc: TOMLDocument | None = None
        if table is not None:
            self._doc = tomlkit.document()
            self._doc.append(EXT, AoT([table]))

    @property
    def table(self) -> Table:
        if self._doc is None:
            self._doc = tomlkit.parse(self._text)
        return self._doc[EXT][0]

    @property
    def trivia(self) -> Any:
        return self.table.trivia

    def __getitem__(self, key: str) -> Any:
        return self.table[key] if self._doc is not None else self._data[key]

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            return default
        return self[key]

    def __contains__(self, key: str) -> bool:
        return key in (self.table if self._doc is not None else self._data)

    def __setitem__(self, key: str, value: Any) -> None:
        self.table[key] = value

    def __delitem__(self, key: str) -> None:
        del self.table[key]

    def as_string(self) -> str:
        return self._doc.as_string() if self._doc is not None else self._text

    def unwrap(self) -> dict[str, Any]:
        return self.table.unwrap() if self._doc is not None else self._data


class DomainRun:
    """The entries, in file order; stands in for the AoT."""

    def __init__(self, entries: list[Entry]) -> None:
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def __getitem__(self, index: int) -> Entry:
        return self._entries[index]

    def __delitem__(self, index: int) -> None:
        del self._entries[index]

    def append(self, table: Table) -> None:
        self._entries.append(Entry(table=table))

    def as_string(self) -> str:
        return "".join(e.as_string() for e in self._entries)

    def unwrap(self) -> list[dict[str, Any]]:
        return [e.unwrap() for e in self._entries]


class SplitDocument:
    """Head and tail tomlkit documents with the domain run between them."""

    def __init__(self, head: TOMLDocument, run: DomainRun, tail: TOMLDocument) -> None:
        self.head, self.run, self.tail = head, run, tail

    def _home(self, key: str) -> TOMLDocument:
        return self.head if key in self.head else self.tail

    def __contains__(self, key: str) -> bool:
        return bool(self.run) if key == EXT else key in self.head or key in self.tail

    def __getitem__(self, key: str) -> Any:
        return self.run if key == EXT else self._home(key)[key]

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            return default
        return self[key]

    def append(self, key: str, item: Item) -> None:
        if key != EXT:  # the run keeps its place, even when empty
            self.tail.append(key, item)

    def __delitem__(self, key: str) -> None:
        if key != EXT:
            del self._home(key)[key]

    def as_string(self) -> str:
        return self.head.as_string() + self.run.as_string() + self.tail.as_string()

    def unwrap(self) -> dict[str, Any]:
        data = self.head.unwrap()
        if self.run:
            data[EXT] = self.run.unwrap()
        data.update(self.tail.unwrap())
        return data


def _header_lines(lines: list[str]) -> list[int]:
    """Indexes of table header lines, skipping the inside of multi-line strings. (A valid
    bundle's arrays hold only strings, so no array line starts with '['.)"""
    return [i for i, line in code_lines(lines) if _HEADER.match(line)]


def split_document(text: str, data: dict[str, Any]) -> SplitDocument | None:
    """Split a validated bundle (``data`` is tomli's reading of ``text``), or None when its
    entries are not one run of [[external_domains]] tables (then parse it whole)."""
    entries = data.get(EXT)
    if not isinstance(entries, list) or not entries:
        return None
    lines = text.splitlines(keepends=True)
    headers = _header_lines(lines)
    starts = [i for i in headers if _EXT_ENTRY.match(lines[i])]
    if len(starts) != len(entries):
        return None
    first = starts[0]
    others = [i for i in headers
              if not (_EXT_ENTRY.match(lines[i]) or _EXT_SUBTABLE.match(lines[i]))]
    end = next((i for i in others if i > first), len(lines))
    ext_headers = [i for i in headers if i not in others]
    if ext_headers[-1] >= end:  # another table between two entries
        return None
    bounds = [*starts, end]
    run = DomainRun([Entry("".join(lines[a:b]), item)
                     for a, b, item in zip(bounds, bounds[1:], entries, strict=False)])
    head_text, tail_text = "".join(lines[:first]), "".join(lines[end:])
    head, tail = tomlkit.parse(head_text), tomlkit.parse(tail_text)
    if EXT in head or EXT in tail or set(head) & set(tail):
        return None  # e.g. [organisation] before the run and [organisation.x] after it
    doc = SplitDocument(head, run, tail)
    if doc.as_string() != text:  # belt and braces: the split must render the same text
        return None
    return doc


Document = TOMLDocument | SplitDocument
