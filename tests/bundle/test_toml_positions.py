"""TOML syntax errors point where the admin has to look: an unclosed array or inline table
at the line that opened it (the parser only notices lines later, or at the end of the
file), and a problem at the end of the document at its last line, never without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectwiz.bundle import Bundle, BundleError
from connectwiz.bundle.locate import unclosed_bracket

UNCLOSED_ARRAY = """schema_version = 1

[organisation]
internal_domains = ["corp.example",
  "corp2.example"

[[inbound_routes]]
host = "mail.corp.example"
"""


def _error(tmp_path: Path, text: str) -> BundleError:
    path = tmp_path / "bundle.toml"
    path.write_text(text)
    with pytest.raises(BundleError) as info:
        Bundle.load(path)
    return info.value


def test_unclosed_array_is_reported_where_it_was_opened(tmp_path: Path) -> None:
    err = _error(tmp_path, UNCLOSED_ARRAY)
    assert err.line == 4
    assert err.problem == ("not valid TOML: array opened on this line is not closed "
                           "(noticed at line 7)")
    assert str(err).startswith(f"{tmp_path / 'bundle.toml'}:4: ")


@pytest.mark.parametrize(("text", "line", "kind"), [
    ('schema_version = 1\n[organisation]\ninternal_domains = ["a.example",\n  "b"\n', 3,
     "array"),
    ('schema_version = 1\norganisation = { internal_domains = [],\n', 2, "inline table"),
])
def test_unclosed_at_the_end_of_the_document(
        tmp_path: Path, text: str, line: int, kind: str) -> None:
    err = _error(tmp_path, text)
    assert err.line == line and f"{kind} opened on this line is not closed" in err.problem


def test_a_value_missing_at_the_end_names_the_last_line(tmp_path: Path) -> None:
    err = _error(tmp_path, "schema_version = 1\n[organisation]\ninternal_domains =")
    assert err.line == 3, "tomli says 'at end of document': the last line"
    assert "Invalid value" in err.problem


def test_brackets_in_strings_comments_and_headers_do_not_count() -> None:
    text = ('[organisation] # [\n'
            'a = ["]", \'[\', """\n[\n""", # ]\n'
            '  [1, 2], {x = "}"}]\n'
            '[[inbound_routes]]\n'
            'b = [\n')
    assert unclosed_bracket(text, len(text)) == (7, "array")
    assert unclosed_bracket(text, text.index("[[inbound")) is None
