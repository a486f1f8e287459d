"""Find the line of a key path (``delivery_policies[2].to.applies``) in a bundle's text.

tomllib gives values without positions, so schema errors are placed by a light line scan:
table headers and ``key =`` lines are indexed by their full path. It is only run when an
error is reported, and it falls back to the nearest enclosing key it can find.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence

KeyPath = tuple[str | int, ...]

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'[^']*'"
_PART = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_AOT = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]")
_TABLE = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_KEYVAL = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART_RE = re.compile(_PART)


def format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def code_lines(lines: Sequence[str]) -> Iterator[tuple[int, str]]:
    """(index, line) of each line that starts outside a multi-line string, so that a string's
    own lines are never taken for table headers or keys."""
    closing: str | None = None  # the quote that closes an open multi-line string
    for i, line in enumerate(lines):
        if closing is not None:
            if line.count(closing) % 2:
                closing = None
            continue
        yield i, line
        for quote in ('"""', "'''"):
            if line.count(quote) % 2:
                closing = quote


def _split(dotted: str) -> list[str]:
    return [p[1:-1] if p[0] in "\"'" else p for p in _PART_RE.findall(dotted)]


class Locator:
    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()
        self._index: dict[KeyPath, int] | None = None

    def _build(self) -> dict[KeyPath, int]:
        index: dict[KeyPath, int] = {}
        aot_counts: dict[KeyPath, int] = {}
        table: KeyPath = ()

        def resolve(parts: list[str]) -> KeyPath:
            out: list[str | int] = []
            for part in parts:
                out.append(part)
                if tuple(out) in aot_counts:
                    out.append(aot_counts[tuple(out)])
            return tuple(out)

        for i, line in code_lines(self._lines):
            no = i + 1
            if m := _AOT.match(line):
                parts = _split(m[1])
                key = (*resolve(parts[:-1]), parts[-1])
                aot_counts[key] = aot_counts.get(key, -1) + 1
                table = (*key, aot_counts[key])
                index.setdefault(key, no)
                index.setdefault(table, no)
                continue
            if m := _TABLE.match(line):
                table = resolve(_split(m[1]))
                index.setdefault(table, no)
                continue
            if m := _KEYVAL.match(line):
                index.setdefault((*table, *_split(m[1])), no)
        return index

    def line_of(self, path: Sequence[str | int], value: object = None) -> int | None:
        """The line of ``path``, or of its nearest known parent. When ``value`` is given and
        only a parent was found (an array element), the first line at or after the parent's
        that shows the value is returned, so errors in long multi-line arrays point home."""
        if self._index is None:
            self._index = self._build()
        key = tuple(path)
        for n in range(len(key), 0, -1):
            line = self._index.get(key[:n])
            if line is None:
                continue
            if value is not None and n < len(key):
                needle = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else None
                if needle:
                    for no in range(line, len(self._lines) + 1):
                        if needle in self._lines[no - 1]:
                            return no
            return line
        return None



_CLOSING = {"[": "]", "{": "}"}
_HEADER = re.compile(r"[ \t]*\[")
_TOML_POS = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def toml_error(text: str, message: str) -> tuple[int | None, str]:
    """The line to report for a TOML parser's ``message`` about ``text``, and the problem
    in words. An unclosed array or inline table is reported where it was opened; a problem
    at the end of the document at its last line."""
    m = _TOML_POS.search(message)
    problem = message[: m.start()] if m else message
    if m is None:
        return None, problem
    if m[1] is None:  # at end of document
        line, end = len(text.rstrip().splitlines()) or 1, len(text)
    else:
        line = int(m[1])
        end = sum(len(x) for x in text.splitlines(keepends=True)[: line - 1]) + int(m[2]) - 1
        problem += f" (column {m[2]})"
    found = unclosed_bracket(text, end)
    if found is not None:
        opened, kind = found
        return opened, f"{kind} opened on this line is not closed (noticed at line {line})"
    return line, problem


def unclosed_bracket(text: str, end: int) -> tuple[int, str] | None:
    """The line and kind ("array" or "inline table") of the innermost ``[`` or ``{`` value
    still open at offset ``end``, or None. A TOML parser notices the missing ``]`` only
    where the next thing cannot be part of the value (often lines later, or at the end of
    the document); the admin needs the line where it was opened."""
    stack: list[tuple[str, int]] = []
    line, i, end = 1, 0, min(end, len(text))
    while i < end:
        c = text[i]
        if (i == 0 or text[i - 1] == "\n") and not stack and _HEADER.match(text, i):
            i = _line_end(text, i)  # a [table] header, not an array
        elif c == "\n":
            line += 1
            i += 1
        elif c == "#":
            i = _line_end(text, i)
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            j = i + len(quote)
            while j < len(text) and not text.startswith(quote, j):
                if text[j] == "\n" and len(quote) == 1:
                    break  # an unterminated one-line string: the parser says so itself
                j += 2 if text[j] == "\\" and c == '"' else 1
            line += text.count("\n", i, j)
            i = j if j >= len(text) or text[j] == "\n" else j + len(quote)
        else:
            if c in _CLOSING:
                stack.append((c, line))
            elif stack and c == _CLOSING[stack[-1][0]]:
                stack.pop()
            i += 1
    if not stack:
        return None
    opener, opened = stack[-1]
    return opened, "array" if opener == "[" else "inline table"


def _line_end(text: str, i: int) -> int:
    j = text.find("\n", i)
    return len(text) if j < 0 else j
