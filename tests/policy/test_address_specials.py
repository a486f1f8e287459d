"""Addresses end up inside `RCPT TO:<...>`: unquoted specials in the local part are refused
by the one strict parser that the wizard, `validate --email` and the bundle all use."""

import pytest

from connectwiz.cli import main
from connectwiz.policy.addresses import InvalidAddress, normalize_address
from connectwiz.tui.state import email_problem


@pytest.mark.parametrize("text", ["a<b@x.example", "a>b@x.example", "bob@@x.example",
                                  "a\\b@x.example", "a,b@x.example", '"a"b@x.example',
                                  "a\x00b@x.example"])
def test_specials_in_the_local_part_are_refused(text: str) -> None:
    with pytest.raises(InvalidAddress, match="invalid characters before the @"):
        normalize_address(text)
    assert email_problem(text) is not None


@pytest.mark.parametrize("text", ["o'brien@x.example", "first.last+tag@x.example",
                                  "<Postmaster@X.Example>", '"odd@local"@x.example'])
def test_ordinary_local_parts_are_accepted(text: str) -> None:
    normalize_address(text)
    assert email_problem(text) is None


def test_validate_refuses_a_bad_email_before_probing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--email", "a>b@trusted.example", "trusted.example"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid characters before the @: '>'" in err
