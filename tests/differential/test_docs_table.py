"""docs/validate.md "Engines compared" shows exactly what the differential suite enforces."""

from __future__ import annotations

from pathlib import Path

from .cases import CASES, INTENDED, docs_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "validate.md"


def _table_in_doc() -> str:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| case | shape |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def test_the_table_is_the_suites_case_list() -> None:
    assert _table_in_doc() == docs_table(), (
        "docs/validate.md is out of date; paste the output of "
        "`python -m tests.differential.cases` over its table")


def test_every_intended_difference_is_explained() -> None:
    notes = DOC.read_text(encoding="utf-8").split("¹ Intended differences:", 1)[1]
    for name in INTENDED:
        assert f"- `{name}`:" in notes, f"docs/validate.md gives no reason for {name}"
    assert {c.name for c in CASES if c.intended} == set(INTENDED)
