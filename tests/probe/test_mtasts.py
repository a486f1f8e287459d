"""MTA-STS: record and policy parsing, anchored MX matching, and the HTTPS fetch against the
lab's policy server (real DNS, real TLS with the lab CA, all on loopback)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectwiz.cli import main
from connectwiz.lab.zones import STS_ADDRESS, STS_ID
from connectwiz.probe import Target, validate_targets
from connectwiz.probe.dns import make_resolver
from connectwiz.probe.mtasts import (
    MtaStsResult,
    PolicyError,
    StsPolicy,
    assess,
    lookup_mta_sts,
    mx_pattern_matches,
    parse_policy,
    parse_record,
)

GOOD_POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\n" \
              "max_age: 604800\r\n"


# --- pure parsing and matching ---------------------------------------------------------------


def test_record_with_one_version_and_an_id():
    assert parse_record(["v=spf1 -all", "v=STSv1; id=20190429T010101;"]) == (
        "v=STSv1; id=20190429T010101;", "20190429T010101")


@pytest.mark.parametrize(("texts", "words"), [
    (["v=spf1 -all"], "no v=STSv1"),
    (["v=STSv1; id=a", "v=STSv1; id=b"], "2 v=STSv1 records"),
    (["v=STSv1;"], "no id"),
    (["v=STSv1; id=has-dash"], "1 to 32 letters"),
    (["v=STSv1; id=" + "a" * 33], "1 to 32 letters"),
])
def test_unusable_records(texts, words):
    with pytest.raises(PolicyError, match=words):
        parse_record(texts)


def test_policy_fields_with_crlf_and_unknown_keys():
    policy = parse_policy(GOOD_POLICY + "future_key: ignored\r\n")
    assert policy == StsPolicy("enforce", 604800, ("mx1.example.com", "*.example.net"))


def test_policy_mode_none_needs_no_mx():
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\n").mx == ()


@pytest.mark.parametrize(("text", "words"), [
    ("mode: enforce\nmx: a.example\nmax_age: 1\n", "version: STSv1"),
    ("version: STSv1\nmode: block\nmx: a.example\nmax_age: 1\n", "mode must be"),
    ("version: STSv1\nmode: testing\nmx: a.example\nmax_age: 31557601\n", "max_age"),
    ("version: STSv1\nmode: testing\nmx: a.example\nmax_age: -1\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: 60\n", "at least one mx"),
    ("version: STSv1\nmode enforce\n", "key: value"),
])
def test_bad_policies(text, words):
    with pytest.raises(PolicyError, match=words):
        parse_policy(text)


@pytest.mark.parametrize(("pattern", "host", "expected"), [
    ("mx.example.com", "mx.example.com", True),
    ("MX.Example.com.", "mx.example.COM", True),
    ("mx.example.com", "mx2.example.com", False),
    ("*.example.com", "mx.example.com", True),
    ("*.example.com", "a.b.example.com", False),  # one label only
    ("*.example.com", "example.com", False),
    ("*.example.com", "mx.example.com.evil.test", False),  # anchored at the end
    ("*.mismatch.example", "mx.sts-mismatch.example", False),  # whole labels, not a suffix
])
def test_mx_patterns_are_anchored(pattern, host, expected):
    assert mx_pattern_matches(pattern, host) is expected


labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(st.lists(labels, min_size=2, max_size=4), st.lists(labels, min_size=0, max_size=3))
def test_wildcard_covers_exactly_one_extra_label(base, extra):
    domain = ".".join(base)
    host = ".".join([*extra, domain])
    assert mx_pattern_matches(f"*.{domain}", host) is (len(extra) == 1)


def test_assess_flags_enforce_when_a_host_fails():
    sts = MtaStsResult(True, policy=StsPolicy("enforce", 60, ("*.example.com",)))
    good = assess(sts, [("mx.example.com", True)])
    assert not good.enforce_failing and good.warning is None and good.all_mx_match
    unmatched = assess(sts, [("mx.example.com", True), ("mx.other.net", True)])
    assert unmatched.enforce_failing and "mx.other.net matches no mx pattern" in unmatched.warning
    weak = assess(sts, [("mx.example.com", False)])
    assert weak.enforce_failing and "not strict TLS" in weak.warning
    testing = assess(dataclasses.replace(sts, policy=StsPolicy("testing", 60, ("a.b",))),
                     [("mx.example.com", False)])
    assert not testing.enforce_failing and testing.all_mx_match is False


# --- the fetch, against the lab ---------------------------------------------------------------


def _lookup(options, domain: str) -> MtaStsResult:
    async def run() -> MtaStsResult:
        return await lookup_mta_sts(domain, options, make_resolver(options))
    return asyncio.run(run())


@pytest.mark.network
def test_enforce_policy_fetched_over_verified_https(lab, lab_network_options):
    result = _lookup(lab_network_options, "trusted.example")
    assert result.error is None and result.published
    assert result.id == STS_ID
    assert result.policy == StsPolicy("enforce", 86400, ("mx.trusted.example",))
    assert result.policy_url == "https://mta-sts.trusted.example/.well-known/mta-sts.txt"
    assert "mta-sts.trusted.example" in lab.lab.policy_server.requests
    # The policy host was resolved through the configured name server (the lab's).
    assert any(name == "mta-sts.trusted.example." and rdtype == "A"
               for _, name, rdtype in list(lab.lab.dns.queries))


@pytest.mark.network
def test_testing_mode(lab_network_options):
    result = _lookup(lab_network_options, "sts-testing.example")
    assert result.mode == "testing" and result.policy.mx == ("*.sts-testing.example",)


@pytest.mark.network
@pytest.mark.parametrize(("domain", "words"), [
    ("sts-redirect.example", "redirect (301)"),
    ("sts-html.example", "text/html, not text/plain"),
    ("sts-big.example", "larger than 64 KiB"),
    ("sts-404.example", "HTTP 404"),
    ("sts-double.example", "2 v=STSv1 records"),
])
def test_policies_that_must_be_refused(lab_network_options, domain, words):
    result = _lookup(lab_network_options, domain)
    assert result.published and result.policy is None
    assert words in result.error


@pytest.mark.network
def test_no_record_means_not_published(lab_network_options):
    result = _lookup(lab_network_options, "selfsigned.example")
    assert result == MtaStsResult(False)


@pytest.mark.network
def test_certificate_must_verify(lab_network_options):
    untrusting = dataclasses.replace(lab_network_options, ca_file=None)
    result = _lookup(untrusting, "trusted.example")
    assert result.policy is None
    assert "certificate of mta-sts.trusted.example not verified" in result.error


@pytest.mark.network
async def test_silent_policy_server_is_bounded_by_the_timeout(lab_network_options):
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, then never answer the TLS handshake

    server = await asyncio.start_server(hold, STS_ADDRESS, 0)
    port = server.sockets[0].getsockname()[1]
    options = dataclasses.replace(lab_network_options, https_port=port, timeout=0.5)
    try:
        result = await lookup_mta_sts("trusted.example", options, make_resolver(options))
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
    assert result.policy is None and "timed out after 0.5 s" in result.error


# --- through validation and the CLI ------------------------------------------------------------


@pytest.mark.network
async def test_enforce_with_failing_mx_is_flagged(lab_network_options):
    names = ["trusted.example", "sts-mismatch.example", "sts-relaxed.example",
             "sts-testing.example"]
    results = await validate_targets([Target.domain(n) for n in names], lab_network_options)
    by_name = {r.target: r.mta_sts for r in results}
    assert not by_name["trusted.example"].enforce_failing
    mismatch = by_name["sts-mismatch.example"]
    assert mismatch.enforce_failing and mismatch.all_mx_match is False
    assert "mx.sts-mismatch.example matches no mx pattern" in mismatch.warning
    relaxed = by_name["sts-relaxed.example"]
    assert relaxed.enforce_failing and relaxed.all_mx_match is True
    assert "mx.sts-relaxed.example is not strict TLS" in relaxed.warning
    assert not by_name["sts-testing.example"].enforce_failing


@pytest.mark.network
def test_cli_warns_loudly_without_verbose(lab_cli_args, capsys):
    assert main(["validate", *lab_cli_args, "sts-mismatch.example", "trusted.example"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("✔ sts-mismatch.example: Supports TLS — Strict")
    assert lines[1].startswith("    ! WARNING: MTA-STS policy is enforce but MX fails")
    assert len(lines) == 3  # trusted.example: nothing to warn about


@pytest.mark.network
def test_cli_verbose_and_json_show_the_policy(lab_cli_args, capsys, monkeypatch):
    assert main(["validate", *lab_cli_args, "-v", "sts-testing.example"]) == 0
    out = capsys.readouterr().out
    assert "MTA-STS:   mode testing, max_age 86400 s, mx *.sts-testing.example" in out
    assert "mx.sts-testing.example: matches *.sts-testing.example" in out
    argv = list(lab_cli_args)  # --https-port as the environment variable this time
    at = argv.index("--https-port")
    monkeypatch.setenv("CONNECTWIZ_HTTPS_PORT", argv[at + 1])
    del argv[at:at + 2]
    assert main(["validate", *argv, "--json", "trusted.example"]) == 0
    sts = json.loads(capsys.readouterr().out)[0]["mta_sts"]
    assert sts["mode"] == "enforce" and sts["mx_patterns"] == ["mx.trusted.example"]
    assert sts["mx"] == [{"host": "mx.trusted.example", "matches": True,
                          "pattern": "mx.trusted.example"}]
    assert sts["enforce_failing"] is False and sts["error"] is None


def test_bad_https_port_is_a_usage_error(capsys):
    assert main(["validate", "--https-port", "0", "trusted.example"]) == 2
    assert "--https-port 0" in capsys.readouterr().err


@pytest.mark.network
async def test_verifying_context_is_built_off_the_event_loop(lab_network_options, monkeypatch):
    """Loading the CA files for the policy fetch takes ~0.1 s: not on the loop (the wizard's)."""
    import threading

    from connectwiz.probe import mtasts

    built_in: list[threading.Thread] = []
    real = mtasts.client_context

    def recording(**kwargs):
        built_in.append(threading.current_thread())
        return real(**kwargs)

    monkeypatch.setattr(mtasts, "client_context", recording)
    mtasts.https_context.cache_clear()
    try:
        (result,) = await validate_targets([Target.domain("trusted.example")],
                                           lab_network_options)
    finally:
        mtasts.https_context.cache_clear()
    assert result.mta_sts is not None and result.mta_sts.policy is not None  # it was fetched
    assert built_in and threading.main_thread() not in built_in
