"""Content examination for Secure Messaging triggers: phrases (whole words, case rules),
regular expressions, dictionaries with a threshold, attachment names and types.

Pure: the relay parses the message (relay/secure.py ``parse_content``) and runs the
decision in a worker thread. CPU stays bounded on hostile input because every pattern is
RE2 (google-re2): matching is linear in the text, whatever the pattern (no backtracking,
so ``(a+)+$`` over a megabyte of ``a`` costs what any pattern costs), and constructs that
need backtracking (back-references, look-around) are refused when the bundle loads.
Phrases and dictionary terms use ``str.find``, also linear per term.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import re2

from connectwiz.policy.model import ConditionField, ConditionKind, SecureCondition

# RE2's own default; a pattern whose automaton needs more is refused at load, not at match.
_MAX_PATTERN_MEMORY = 8 << 20


class InvalidPattern(ValueError):
    """A regular expression or glob RE2 cannot compile; the message is one line."""


def _options(case_sensitive: bool) -> re2.Options:
    options = re2.Options()
    options.case_sensitive = case_sensitive
    options.log_errors = False  # the error reaches the admin as a bundle error instead
    options.max_mem = _MAX_PATTERN_MEMORY
    return options


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str, case_sensitive: bool = False) -> re2._Regexp:
    """The compiled RE2 pattern (cached: triggers share patterns across reloads)."""
    try:
        return re2.compile(pattern, _options(case_sensitive))
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise InvalidPattern(f"not a valid RE2 regular expression: {reason}") from None


def glob_pattern(glob: str) -> str:
    """``*`` any run of characters, ``?`` one character, everything else literal; the
    whole name must match."""
    out = []
    for ch in glob:
        out.append(".*" if ch == "*" else "." if ch == "?" else re2.escape(ch))
    return "^" + "".join(out) + "$"


def _fold_space(text: str) -> str:
    return " ".join(text.split())


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


# The same word characters as _is_word (Python documents \w as isalnum() plus "_"). A
# single-class pattern: linear time, no backtracking.
_WORD = re.compile(r"\w+")


def count_phrase(text: str, phrase: str, whole_word: bool) -> int:
    """Occurrences of ``phrase`` in ``text`` (non-overlapping); with ``whole_word`` only
    those not preceded or followed by a letter, digit or underscore."""
    if not phrase:
        return 0
    count, start = 0, 0
    while (at := text.find(phrase, start)) >= 0:
        end = at + len(phrase)
        if not whole_word or ((at == 0 or not _is_word(text[at - 1]))
                              and (end == len(text) or not _is_word(text[end]))):
            count += 1
            start = end
        else:
            start = at + 1
    return count


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    name: str  # the file name as sent ("" when the part names none)
    content_type: str  # lower case, e.g. "application/pdf"


class Examined:
    """A message's content prepared once (white space folded; case folded on demand),
    however many triggers look at it."""

    def __init__(self, subject: str, body: str, headers: Iterable[tuple[str, str]],
                 attachments: Iterable[AttachmentInfo]) -> None:
        self._text = {ConditionField.SUBJECT: _fold_space(subject),
                      ConditionField.BODY: _fold_space(body)}
        self._folded: dict[ConditionField, str] = {}
        self._words: dict[tuple[ConditionField, bool], Counter[str]] = {}
        self.headers: dict[str, set[str]] = {}
        for name, value in headers:
            self.headers.setdefault(name.strip().lower(), set()).add(
                _fold_space(value).casefold())
        self.attachments = tuple(attachments)

    def text(self, field: ConditionField, case_sensitive: bool) -> str:
        if case_sensitive:
            return self._text[field]
        if field not in self._folded:
            self._folded[field] = self._text[field].casefold()
        return self._folded[field]

    def occurrences(self, field: ConditionField, phrase: str, case_sensitive: bool,
                    whole_word: bool) -> int:
        """How often ``phrase`` (already folded like the text) occurs. A whole-word phrase
        that is one word is a lookup in the text's word counts (made once), so a dictionary
        of many terms costs one pass over the text, not one per term."""
        if whole_word and _WORD.fullmatch(phrase):
            key = (field, case_sensitive)
            if key not in self._words:
                self._words[key] = Counter(_WORD.findall(self.text(field, case_sensitive)))
            return self._words[key][phrase]
        return count_phrase(self.text(field, case_sensitive), phrase, whole_word)


def _phrase_key(text: str, case_sensitive: bool) -> str:
    text = _fold_space(text)
    return text if case_sensitive else text.casefold()


def condition_matches(condition: SecureCondition, examined: Examined) -> bool:
    field = condition.field
    if field is ConditionField.HEADER:
        wanted = _fold_space(condition.value).casefold()
        return wanted in examined.headers.get(condition.header.strip().lower(), ())
    if field in (ConditionField.ATTACHMENT_NAME, ConditionField.ATTACHMENT_TYPE):
        pattern = compile_pattern(glob_pattern(condition.value), condition.case_sensitive)
        return any(pattern.search(a.name if field is ConditionField.ATTACHMENT_NAME
                                  else a.content_type) for a in examined.attachments)
    if condition.kind is ConditionKind.MATCHES:
        # RE2 case folding, not casefold(): the pattern sees the text as sent.
        text = examined.text(field, True)
        return compile_pattern(condition.value, condition.case_sensitive).search(text) is not None
    case, whole = condition.case_sensitive, condition.whole_word
    if condition.kind is ConditionKind.DICTIONARY:
        total = 0
        for term in condition.terms:
            total += examined.occurrences(field, _phrase_key(term, case), case, whole)
            if total >= condition.threshold:
                return True
        return False
    return examined.occurrences(field, _phrase_key(condition.value, case), case, whole) > 0


def describe_condition(condition: SecureCondition) -> str:
    field = condition.field
    if field is ConditionField.HEADER:
        return f"header {condition.header} equals {condition.value!r}"
    if field is ConditionField.ATTACHMENT_NAME:
        return f"an attachment is named like {condition.value!r}"
    if field is ConditionField.ATTACHMENT_TYPE:
        return f"an attachment's type is {condition.value!r}"
    rules = [r for r, on in (("whole words", condition.whole_word),
                             ("case-sensitive", condition.case_sensitive)) if on]
    suffix = f" ({', '.join(rules)})" if rules else ""
    if condition.kind is ConditionKind.MATCHES:
        return f"{field.value} matches /{condition.value}/{suffix}"
    if condition.kind is ConditionKind.DICTIONARY:
        return (f"{field.value} has at least {condition.threshold} occurrence(s) of "
                f"{len(condition.terms)} dictionary terms{suffix}")
    return f"{field.value} contains {condition.value!r}{suffix}"
