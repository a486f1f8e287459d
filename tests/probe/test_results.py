"""Targets and how a domain's verdict follows from its hosts' (pure logic)."""

from __future__ import annotations

import pytest

from connectwiz.errors import UserError
from connectwiz.probe.results import Status, Target, weakest


@pytest.mark.parametrize(
    ("host", "port", "label"),
    [
        ("Mail.Corp.Example.", 2525, "mail.corp.example:2525"),
        ("[2001:db8::25]", None, "[2001:db8::25]:25"),
        ("192.0.2.25", 587, "192.0.2.25:587"),
    ],
)
def test_route_targets_are_normalised(host, port, label):
    assert Target.route(host, port).label(25) == label


@pytest.mark.parametrize(
    ("statuses", "weakest_one"),
    [
        ([Status.STRICT, Status.RELAXED], Status.RELAXED),
        ([Status.STRICT, Status.ERROR], Status.ERROR),
        ([Status.ERROR, Status.UNSUPPORTED, Status.STRICT], Status.UNSUPPORTED),
        ([], Status.ERROR),
    ],
)
def test_domain_status_is_the_weakest_host(statuses, weakest_one):
    assert weakest(statuses) == weakest_one


def test_invalid_targets_are_user_errors():
    with pytest.raises(UserError, match="invalid domain"):
        Target.domain("exa mple.com")
    with pytest.raises(UserError, match="invalid route host"):
        Target.route("bad_host!", 25)
    with pytest.raises(UserError, match="invalid route port"):
        Target.route("mail.corp.example", 70000)
