"""Deeper content examination (policy/content.py): whole words and case rules, regular
expressions (RE2), dictionaries with a threshold, attachment names and types; bundle syntax
and its errors; bounded CPU on hostile patterns and bodies."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectwiz.bundle import Bundle
from connectwiz.bundle.errors import BundleError
from connectwiz.policy.content import AttachmentInfo, Examined, condition_matches, count_phrase
from connectwiz.policy.model import ConditionField, ConditionKind, SecureCondition

C = SecureCondition
F = ConditionField
K = ConditionKind


def examined(subject: str = "", body: str = "",
             attachments: tuple[AttachmentInfo, ...] = ()) -> Examined:
    return Examined(subject, body, (), attachments)


@pytest.mark.parametrize(("condition", "body", "expected"), [
    (C(F.BODY, "secret"), "top secretary", True),  # plain contains: a substring
    (C(F.BODY, "secret", whole_word=True), "top secretary", False),
    (C(F.BODY, "secret", whole_word=True), "top secret.", True),
    (C(F.BODY, "secret", whole_word=True), "_secret", False),  # underscore is a word char
    (C(F.BODY, "secret", whole_word=True), "secretary secret", True),  # a later hit counts
    (C(F.BODY, "Geheim", whole_word=True), "STRENG GEHEIM!", True),
    (C(F.BODY, "Geheim", case_sensitive=True), "STRENG GEHEIM", False),
    (C(F.BODY, "Geheim", case_sensitive=True), "streng Geheim", True),
    (C(F.BODY, "account  number"), "the ACCOUNT\n number is", True),  # white space folded
])
def test_phrases_whole_words_and_case(condition: SecureCondition, body: str,
                                      expected: bool) -> None:
    assert condition_matches(condition, examined(body=body)) is expected


@pytest.mark.parametrize(("condition", "subject", "expected"), [
    (C(F.SUBJECT, r"\bINV-\d{6}\b", kind=K.MATCHES), "re: inv-123456 overdue", True),
    (C(F.SUBJECT, r"\bINV-\d{6}\b", kind=K.MATCHES, case_sensitive=True),
     "re: inv-123456", False),
    (C(F.SUBJECT, r"\bINV-\d{6}\b", kind=K.MATCHES), "INV-1234567", False),
    (C(F.SUBJECT, r"^\[secure\]", kind=K.MATCHES), "fwd: [secure] x", False),
])
def test_regular_expressions(condition: SecureCondition, subject: str, expected: bool) -> None:
    assert condition_matches(condition, examined(subject=subject)) is expected


SALARY = C(F.BODY, "", kind=K.DICTIONARY, whole_word=True, threshold=3,
           terms=("salary", "payroll", "bonus"))


@pytest.mark.parametrize(("body", "expected"), [
    ("salary and bonus", False),  # two occurrences: below the threshold
    ("salary, payroll and bonus", True),
    ("salary salary SALARY", True),  # repeated terms count each time
    ("salaryman payrolls bonuses and a bonus", False),  # whole words only
])
def test_dictionary_threshold(body: str, expected: bool) -> None:
    assert condition_matches(SALARY, examined(body=body)) is expected


@given(st.text(alphabet="aäb_1 .-\n", max_size=40), st.text(alphabet="aäb_1", min_size=1,
                                                               max_size=3))
def test_word_count_shortcut_agrees_with_the_phrase_search(text: str, word: str) -> None:
    """One-word whole-word terms are counted from the text's words (one pass for a whole
    dictionary); that must give what the general phrase search gives."""
    content = examined(body=text)
    folded = content.text(F.BODY, False)
    assert (content.occurrences(F.BODY, word.casefold(), False, True)
            == count_phrase(folded, word.casefold(), True))


def test_attachment_names_and_types() -> None:
    files = (AttachmentInfo("Q3 Figures.XLSX", "application/vnd.ms-excel"),
             AttachmentInfo("", "application/pdf"))
    content = examined(attachments=files)
    assert condition_matches(C(F.ATTACHMENT_NAME, "*.xlsx"), content)
    assert not condition_matches(C(F.ATTACHMENT_NAME, "*.xlsx", case_sensitive=True), content)
    assert not condition_matches(C(F.ATTACHMENT_NAME, "*.xls"), content)  # whole name
    assert condition_matches(C(F.ATTACHMENT_NAME, "q? figures.*"), content)
    assert condition_matches(C(F.ATTACHMENT_TYPE, "application/pdf"), content)
    assert condition_matches(C(F.ATTACHMENT_TYPE, "application/*"), content)
    assert not condition_matches(C(F.ATTACHMENT_TYPE, "image/*"), content)
    assert not condition_matches(C(F.ATTACHMENT_NAME, "*"), examined())  # no attachments


def test_catastrophic_backtracking_pattern_on_a_large_body_stays_linear() -> None:
    """``(a+)+$`` takes Python's ``re`` exponential time on ``aaa…ab``; RE2 scans it once.
    The bound is generous (the machine is shared): backtracking would take years."""
    condition = C(F.BODY, "(a+)+$", kind=K.MATCHES, case_sensitive=True)
    hostile = examined(body="a" * 2_000_000 + "b")
    started = time.monotonic()
    assert not condition_matches(condition, hostile)
    assert time.monotonic() - started < 10


BUNDLE = '''\
schema_version = 2

[organisation]
internal_domains = ["corp.example"]

[[secure_triggers]]
narrative = "Deep content"
definition = "External Recipients"
conditions = [
  { subject_matches = "\\\\bINV-\\\\d{6}\\\\b" },
  { body_contains = "Secret", whole_word = true, case_sensitive = true },
  { dictionary = ["salary", "payroll"], threshold = 2, in = "subject" },
  { attachment_name = "*.xlsx" },
  { attachment_type = "application/pdf" },
]
'''


def load(text: str, tmp_path: Path) -> Bundle:
    path = tmp_path / "connectwiz.toml"
    path.write_text(text)
    return Bundle.load(path)


def test_bundle_conditions_load_and_round_trip(tmp_path: Path) -> None:
    model = load(BUNDLE, tmp_path).model
    assert model.secure_triggers[0].conditions == (
        C(F.SUBJECT, r"\bINV-\d{6}\b", kind=K.MATCHES),
        C(F.BODY, "Secret", whole_word=True, case_sensitive=True),
        C(F.SUBJECT, "", kind=K.DICTIONARY, whole_word=True, threshold=2,
          terms=("salary", "payroll")),
        C(F.ATTACHMENT_NAME, "*.xlsx"),
        C(F.ATTACHMENT_TYPE, "application/pdf"),
    )
    Bundle.from_model(model, tmp_path / "copy.toml").save()
    assert Bundle.load(tmp_path / "copy.toml").model == model


@pytest.mark.parametrize(("old", "new", "key", "problem"), [
    ('{ subject_matches = "\\\\bINV-\\\\d{6}\\\\b" }', '{ subject_matches = "(a" }',
     "conditions[0].subject_matches", "missing )"),
    # RE2 refuses what needs backtracking, at load time rather than on a message.
    ('{ subject_matches = "\\\\bINV-\\\\d{6}\\\\b" }', '{ subject_matches = "(a)\\\\1" }',
     "conditions[0].subject_matches", "not a valid RE2 regular expression"),
    ("threshold = 2", "threshold = 0", "conditions[2].threshold", "at least 1"),
    ('in = "subject"', 'in = "header"', "conditions[2].in", '"subject" or "body"'),
    ('["salary", "payroll"]', '["salary", "Salary"]', "conditions[2].dictionary[1]",
     "listed twice"),
    ('{ attachment_name = "*.xlsx" }', '{ attachment_name = "*.xlsx", whole_word = true }',
     "conditions[3].whole_word", "only *_contains and dictionary"),
    ('{ attachment_type = "application/pdf" }', '{ body_contains = "x", threshold = 2 }',
     "conditions[4].threshold", "only a dictionary"),
])
def test_bad_conditions_get_one_line_errors(tmp_path: Path, old: str, new: str, key: str,
                                            problem: str) -> None:
    assert old in BUNDLE
    with pytest.raises(BundleError) as info:
        load(BUNDLE.replace(old, new, 1), tmp_path)
    exc = info.value
    assert exc.key == f"secure_triggers[0].{key}", exc.key
    assert problem in str(exc) and "\n" not in str(exc)
