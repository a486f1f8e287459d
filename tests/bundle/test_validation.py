"""Every validation error names the file, the line, the key path and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectwiz.bundle import Bundle, BundleError

from .conftest import HAND_WRITTEN


def _line_of(text: str, fragment: str) -> int:
    """The first line containing ``fragment``; the last one with a ``last:`` prefix."""
    lines = list(enumerate(text.splitlines(), 1))
    if fragment.startswith("last:"):
        fragment, lines = fragment[5:], lines[::-1]
    return next(i for i, line in lines if fragment in line)


def _error(text: str, tmp_path: Path) -> BundleError:
    path = tmp_path / "b.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BundleError) as info:
        Bundle.load(path)
    err = info.value
    assert err.file == str(path)
    assert "\n" not in str(err)
    return err


# (replace this, with this, key path, words in the problem, line containing)
CASES = [
    ('applies = "everyone" }', 'applies = "everyone", colour = "red" }',
     "delivery_policies[0].to.colour", "unknown key 'colour'", "colour"),
    ('override = true', 'overide = true',
     "delivery_policies[0].overide", "did you mean 'override'?", "overide"),
    ('min_tls = "1.3"', 'min_tls = "1.4"',
     "delivery_definitions[0].min_tls", "'1.4' is not one of", 'min_tls = "1.4"'),
    ('option = "enforced"\nencryption_mode = "strict"\nmin_tls = "1.3"',
     'option = "enforce"\nencryption_mode = "strict"\nmin_tls = "1.3"',
     "delivery_definitions[0].option", "did you mean 'enforced'?", 'option = "enforce"'),
    ('to = { applies = "everyone" }', 'to = { applies = "domains", specifically = ["x.example"] }',
     "delivery_policies[0].to.applies", "did you mean 'domain'?", 'applies = "domains"'),
    ('"10.0.0.0/8"', '"10.0.0.1/8"',
     "organisation.authorized_outbound[0]", "host bits set; did you mean '10.0.0.0/8'?",
     "10.0.0.1/8"),
    ('port = 25', 'port = 70000', "inbound_routes[0].port", "1 to 65535", "port = 70000"),
    ('port = 25', 'port = "25"', "inbound_routes[0].port", "1 to 65535", 'port = "25"'),
    ('host = "mx1.acme.example"', 'host = "mx1 acme"', "inbound_routes[0].host",
     "not an IP address or host name", 'host = "mx1 acme"'),
    ('added = 2026-11-01T09:00:00Z', 'added = 2026-11-01T09:00:00',
     "external_domains[0].added", "no UTC offset", "added = 2026-11-01T09:00:00"),
    ('added = 2026-11-01T09:00:00Z', 'added = "yesterday"',
     "external_domains[0].added", "must be a TOML date-time", 'added = "yesterday"'),
    ('definition = "Legal TLS 1.3"', 'definition = "Legal TLS 13"',
     "delivery_policies[0].definition", "did you mean 'Legal TLS 1.3'?",
     'definition = "Legal TLS 13"'),
    ('specifically = ["legal"]', 'specifically = ["legals"]',
     "delivery_policies[0].from.specifically[0]", "unknown address group 'legals'", "legals"),
    ('legal = ["counsel@acme.example"]', 'legal = ["counsel"]',
     "organisation.address_groups.legal[0]", "no @domain", 'legal = ["counsel"]'),
    ('name = "Legal TLS 1.3"', 'name = "Enforced TLS - Strict"',
     "delivery_definitions[1].name", "used twice", 'last:name = "Enforced TLS - Strict"'),
    ('internal_domains = ["acme.example"]', 'internal_domains = ["acme.example", "bank.example"]',
     "external_domains[0].domain", "also an internal domain", 'domain = "bank.example"'),
    ('override = true', 'override = true\nstart = 2026-12-01T00:00:00Z\nend = 2026-11-01T00:00:00Z',
     "delivery_policies[0].end", "later than start", "end = 2026-11-01"),
    ('to = { applies = "everyone" }', 'to = { applies = "everyone", specifically = ["a.example"] }',
     "delivery_policies[0].to.specifically", "not used with applies = 'everyone'",
     'specifically = ["a.example"] }'),
    ('to = { applies = "everyone" }', 'to = { based_on = "header", applies = "everyone" }',
     "delivery_policies[0].to.based_on", "unknown key 'based_on'", 'to = { based_on'),
    ('domain = "bank.example"     #', 'domain = "bank..example"     #',
     "external_domains[0].domain", "empty label", 'domain = "bank..example"'),
    ('[organisation]', '[organisation]\nrelay = true', "organisation.relay", "unknown key",
     "relay = true"),
    ('schema_version = 1', 'schema_version = 1\nextrnal_domains = []', "extrnal_domains",
     "did you mean 'external_domains'?", "extrnal_domains"),
]


@pytest.mark.parametrize(("old", "new", "key", "problem", "where"), CASES,
                         ids=[c[2] or c[3] for c in CASES])
def test_error_names_file_line_key_and_problem(
    tmp_path: Path, old: str, new: str, key: str, problem: str, where: str
) -> None:
    assert old in HAND_WRITTEN
    text = HAND_WRITTEN.replace(old, new, 1)
    err = _error(text, tmp_path)
    assert err.key == key
    assert problem in err.problem
    assert err.line == _line_of(text, where)
    assert str(err).startswith(f"{tmp_path / 'b.toml'}:{err.line}: {key}: ")


def test_error_in_a_long_managed_list_points_at_the_entry(tmp_path: Path) -> None:
    text = HAND_WRITTEN.replace('specifically = [\n    "bank.example",\n]\n\n[[receipt',
                                'specifically = [\n    "bank.example",\n    "stray.example",\n]'
                                '\n\n[[receipt', 1)
    err = _error(text, tmp_path)
    assert err.key == "delivery_policies[1].to.specifically[1]"
    assert "'stray.example' is not an external domain" in err.problem
    assert err.line == _line_of(text, '"stray.example"')


def test_domain_missing_from_managed_list_is_reported_on_the_domain(tmp_path: Path) -> None:
    text = HAND_WRITTEN.replace(
        'encryption_mode = "strict"\nlast_validation',
        'encryption_mode = "strict"\nlast_validation', 1,
    ).replace('[[delivery_definitions]]\n# Hand',
              '[[external_domains]]\ndomain = "new.example"\n\n[[delivery_definitions]]\n# Hand', 1)
    err = _error(text, tmp_path)
    assert err.key == "external_domains[1].domain"
    assert "missing from the managed delivery policy" in err.problem
    assert err.line == _line_of(text, 'domain = "new.example"')


@pytest.mark.parametrize(("text", "problem"), [
    ("[organisation]\n", "schema_version is missing"),
    ("schema_version = 3\n", "written by a newer connectwiz"),
    ("schema_version = 0\n", "unknown version 0"),
    ('schema_version = "1"\n', "must be an integer"),
])
def test_schema_version_problems(tmp_path: Path, text: str, problem: str) -> None:
    assert problem in _error(text, tmp_path).problem


def test_broken_toml_names_the_line(tmp_path: Path) -> None:
    text = HAND_WRITTEN.replace('port = 25', 'port = = 25', 1)
    err = _error(text, tmp_path)
    assert "not valid TOML" in err.problem
    assert err.line == _line_of(text, "port = = 25")


def test_duplicate_toml_key_is_a_toml_error(tmp_path: Path) -> None:
    text = HAND_WRITTEN.replace('port = 25', 'port = 25\nport = 26', 1)
    err = _error(text, tmp_path)
    assert err.line == _line_of(text, "port = 26")


def test_duplicate_external_domain(tmp_path: Path) -> None:
    text = HAND_WRITTEN.replace(
        '[[delivery_definitions]]\n# Hand',
        '[[external_domains]]\ndomain = "BANK.example."\n\n[[delivery_definitions]]\n# Hand', 1)
    err = _error(text, tmp_path)
    assert err.key == "external_domains[1].domain"
    assert "listed twice" in err.problem


def test_not_utf8_and_missing_and_directory(tmp_path: Path) -> None:
    bad = tmp_path / "b.toml"
    bad.write_bytes(b'schema_version = 1\n# caf\xe9\n')
    with pytest.raises(BundleError, match=r"b.toml:2: not UTF-8"):
        Bundle.load(bad)
    with pytest.raises(BundleError, match="no such file"):
        Bundle.load(tmp_path / "missing.toml")
    with pytest.raises(BundleError, match="is a directory"):
        Bundle.load(tmp_path)


def test_values_are_stored_normalised(tmp_path: Path) -> None:
    text = (HAND_WRITTEN.replace('"bank.example"', '"Bank.Example."')
            .replace('"2001:db8::/32"', '"2001:DB8:0::/32"')
            .replace('"counsel@acme.example"', '"Counsel@ACME.example"'))
    path = tmp_path / "b.toml"
    path.write_text(text, encoding="utf-8")
    model = Bundle.load(path).model
    assert model.external_domains[0].domain == "bank.example"
    assert str(model.organisation.authorized_outbound[1]) == "2001:db8::/32"
    assert model.organisation.address_groups["legal"] == ("counsel@acme.example",)


def test_international_domains_are_stored_as_a_labels(tmp_path: Path) -> None:
    bundle = Bundle.from_text("schema_version = 1\n")
    from datetime import UTC, datetime

    assert bundle.add_domains(["Bücher.example"], at=datetime.now(UTC)) == [
        "xn--bcher-kva.example"]
    assert Bundle.from_text(bundle.to_toml()).model.external_domains[0].domain == (
        "xn--bcher-kva.example")
