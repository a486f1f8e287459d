"""Targets and how a domain's verdict follows from its hosts' (pure logic)."""

from __future__ import annotations

import pytest

from connectwiz.errors import UserError
from connectwiz.probe.results import HostResult, Status, Target, summarise


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


def _host(n: int, status: Status, reason: str) -> HostResult:
    return HostResult(f"mx{n}.partner.example", f"192.0.2.{n}", 25, n * 10, status, reason)


@pytest.mark.parametrize(
    ("statuses", "verdict"),
    [
        ([Status.STRICT, Status.RELAXED], Status.STRICT),
        ([Status.RELAXED, Status.STRICT], Status.STRICT),  # Enforced Strict skips mx1
        ([Status.STRICT, Status.ERROR], Status.STRICT),  # unreachable hosts are skipped
        ([Status.ERROR, Status.UNSUPPORTED, Status.RELAXED], Status.RELAXED),
        ([Status.ERROR, Status.UNSUPPORTED], Status.UNSUPPORTED),
        ([Status.ERROR, Status.ERROR], Status.ERROR),
        ([], Status.ERROR),
    ],
)
def test_domain_gets_the_verdict_of_its_best_reachable_host(statuses, verdict):
    hosts = [_host(i + 1, s, f"reason {i + 1}") for i, s in enumerate(statuses)]
    assert summarise(hosts)[0] == verdict


def test_ten_mx_with_one_working_is_strict_with_a_warning_per_other_host():
    hosts = [_host(i, Status.ERROR, "connection refused") for i in range(1, 10)]
    hosts.insert(4, _host(10, Status.STRICT, "TLSv1.3, certificate trusted"))
    status, reason, warnings = summarise(hosts)
    assert status == Status.STRICT
    assert reason == "mx10.partner.example: TLSv1.3, certificate trusted"
    assert len(warnings) == 9
    assert warnings[0] == ("mx1.partner.example is not reachable now (connection refused); "
                           "mail goes to mx10.partner.example")


def test_weaker_host_warning_says_what_happens_while_the_better_one_is_down():
    hosts = [_host(1, Status.STRICT, "ok"), _host(2, Status.UNSUPPORTED, "STARTTLS not offered")]
    status, reason, warnings = summarise(hosts)
    assert (status, reason) == (Status.STRICT, "mx1.partner.example: ok")
    assert warnings == ("mx2.partner.example is weaker (unsupported: STARTTLS not offered): "
                        "while mx1.partner.example is down, mail under Enforced TLS is deferred",)


def test_nothing_reachable_is_an_error_naming_every_host():
    hosts = [_host(1, Status.ERROR, "connection refused"), _host(2, Status.ERROR, "timed out")]
    status, reason, warnings = summarise(hosts)
    assert status == Status.ERROR and warnings == ()
    assert reason == ("no mail host reachable: mx1.partner.example: connection refused; "
                      "mx2.partner.example: timed out")


def test_invalid_targets_are_user_errors():
    with pytest.raises(UserError, match="invalid domain"):
        Target.domain("exa mple.com")
    with pytest.raises(UserError, match="invalid route host"):
        Target.route("bad_host!", 25)
    with pytest.raises(UserError, match="invalid route port"):
        Target.route("mail.corp.example", 70000)
