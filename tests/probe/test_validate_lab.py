"""Every lab profile through the real path: lab DNS over UDP/TCP, real SMTP, real TLS."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from connectwiz.lab import Lab, ipv6_loopback_available
from connectwiz.lab.zones import DOMAINS, REFUSED_PROFILE, ROUTES
from connectwiz.probe import NetworkOptions, Status, Target, TargetResult, validate_targets

pytestmark = pytest.mark.network

# What each lab case's reason must mention (keyed by LabDomain.reason). A new lab case without
# an entry here fails the test on purpose: decide what validate should say about it.
REASON_TEXT = {
    "ok": "certificate trusted and valid",
    "self_signed": "self-signed",
    "expired": "expired on",
    "hostname_mismatch": "name mismatch",
    "no_starttls": "STARTTLS not offered",
    "tls_version": "only offers TLSv1.0",
    "starttls_454": "454",
    "greeting_421": "421",
    "slow_greeting": "certificate trusted and valid",
    "timeout": "greeting not received within 3 s",
    "refused": "connection refused",
    "rcpt_rejected": "certificate trusted and valid",
    "multiline_greeting": "certificate trusted and valid",
    "implicit_mx": "certificate trusted and valid",
    "mixed": "mx1.mixed.example: TLSv1",
    "cname": "certificate trusted and valid",
    "idn": "certificate trusted and valid",
    "tcp_fallback": "certificate trusted and valid",
    "mta_sts_testing": "certificate trusted and valid",
    "mta_sts_mx_mismatch": "certificate trusted and valid",
    "mta_sts_enforce_relaxed": "self-signed",
    "dane_match": "certificate trusted and valid",
    "dane_mismatch": "certificate trusted and valid",
    "dane_implicit_mx": "certificate trusted and valid",
    "dane_implicit_mx_mismatch": "certificate trusted and valid",
    "dane_implicit_mx_cname": "certificate trusted and valid",
    "null_mx": "accepts no mail",
    "no_address": "no address",
    "nxdomain": "NXDOMAIN",
    "servfail": "SERVFAIL",
    "dns_timeout": "timed out",
}


@pytest.fixture(scope="module")
def all_results(lab, lab_network_options) -> dict[str, TargetResult]:
    """One batch over every lab domain and route, as an admin would run it."""
    targets = [Target.domain(d.name) for d in DOMAINS]
    targets += [Target.route(r.name, lab.smtp_port) for r in ROUTES]
    results = asyncio.run(validate_targets(targets, lab_network_options))
    assert [r.target for r in results] == [t.label(lab.smtp_port) for t in targets]  # order
    return {r.target: r for r in results}


@pytest.mark.parametrize("name", [d.name for d in DOMAINS])
def test_lab_domain_verdict_and_reason(lab, all_results, name):
    expected = lab.domains[name]
    result = all_results[name]
    assert result.kind == "domain"
    assert result.status == expected.expected, result.reason
    assert REASON_TEXT[expected.reason] in result.reason
    # The hosts tried are the lab's hosts, in preference order, on their own addresses.
    reachable = [h for h in expected.hosts if h.profile != REFUSED_PROFILE]
    if expected.hosts:
        assert [h.host for h in result.hosts] == [h.name for h in expected.hosts]
        assert [h.address for h in result.hosts][:len(reachable)] == \
            [h.address for h in expected.hosts][:len(reachable)]
        assert all(h.port == lab.smtp_port for h in result.hosts)
    if expected.reason == "implicit_mx":
        assert result.hosts[0].host == name and result.hosts[0].preference == 0
    if expected.reason == "mixed":
        assert [h.status for h in result.hosts] == [Status.STRICT, Status.RELAXED,
                                                    Status.UNSUPPORTED]
        assert [h.preference for h in result.hosts] == [10, 20, 30]


@pytest.mark.parametrize("name", [r.name for r in ROUTES])
def test_lab_route_verdict_and_reason(lab, all_results, name):
    expected = lab.expected_routes[name]
    result = all_results[f"{name}:{lab.smtp_port}"]
    assert result.kind == "route"
    assert result.status == expected.expected, result.reason
    assert REASON_TEXT[expected.reason] in result.reason
    (host,) = result.hosts
    assert (host.host, host.address, host.preference) == (name, expected.hosts[0].address, None)


def test_strict_host_details(all_results):
    host = all_results["trusted.example"].hosts[0]
    assert host.starttls and host.tls_version in ("TLSv1.2", "TLSv1.3") and host.cipher
    cert = host.certificate
    assert cert is not None and cert.trusted and cert.hostname_match and not cert.expired
    assert "mx.trusted.example" in cert.names and "connectwiz lab CA" in cert.issuer
    assert host.rcpt is None  # no --email given


def test_relaxed_details_name_the_problem(all_results):
    wrong = all_results["wrongname.example"].hosts[0]
    assert wrong.certificate is not None and not wrong.certificate.hostname_match
    assert "not-this-host.example" in wrong.reason  # the names on the certificate are listed
    selfsigned = all_results["selfsigned.example"].hosts[0].certificate
    assert selfsigned is not None and selfsigned.self_signed and not selfsigned.trusted
    expired = all_results["expired.example"].hosts[0].certificate
    assert expired is not None and expired.expired and expired.trusted


def test_json_contract_shape(all_results):
    host_keys = {"host", "address", "port", "preference", "status", "reason", "starttls",
                 "tls_version", "cipher", "certificate", "rcpt", "elapsed_ms"}
    cert_keys = {"subject", "issuer", "names", "not_before", "not_after", "trusted",
                 "self_signed", "hostname_match", "expired"}
    for result in all_results.values():
        data = result.to_json()
        assert set(data) == {"target", "kind", "status", "reason", "warnings", "elapsed_ms",
                             "hosts", "mta_sts", "tls_rpt", "dane"}
        assert isinstance(data["warnings"], list)
        assert data["status"] in ("strict", "relaxed", "unsupported", "error")
        assert isinstance(data["elapsed_ms"], int) and data["reason"]
        for host in data["hosts"]:
            assert set(host) == host_keys
            assert isinstance(host["port"], int) and isinstance(host["starttls"], bool)
            if host["certificate"] is not None:
                assert set(host["certificate"]) == cert_keys
                assert host["certificate"]["not_after"].endswith("Z")
    assert all_results["xn--bcher-kva.example"].to_json()["target"] == "xn--bcher-kva.example"


async def test_tarpit_ends_as_error_within_the_greeting_timeout(lab):
    """The greeting has its own deadline (postscreen greets late), named in the reason."""
    options = NetworkOptions(nameserver=lab.nameserver, smtp_port=lab.smtp_port,
                             ca_file=lab.ca_file, timeout=3.0, greeting_timeout=1.0)
    (result,) = await validate_targets([Target.domain("tarpit.example")], options)
    assert result.status == Status.ERROR
    assert result.reason == "greeting not received within 1 s"
    assert result.elapsed_ms < 3000


async def test_email_checks_rcpt_and_never_sends_data(lab, lab_network_options):
    hosts = ["mx.trusted.example", "mx.rejectrcpt.example"]
    before = {h: len(lab.sessions_to(h)) for h in hosts}
    results = await validate_targets(
        [Target.domain("trusted.example"), Target.domain("rejectrcpt.example")],
        lab_network_options, email="probe-me@partner.example")
    ok, rejected = (r.hosts[0].rcpt for r in results)
    assert ok is not None and ok.code == 250
    assert rejected is not None and rejected.code == 550
    assert [r.status for r in results] == [Status.STRICT, Status.STRICT]  # RCPT is not TLS
    for host in hosts:
        assert lab.wait_for(lambda h=host: all(s.closed for s in lab.sessions_to(h)))
        # The probe, and a bare handshake without SNI (whose certificate it compares).
        probe, no_sni = sorted(lab.sessions_to(host)[before[host]:],
                               key=lambda s: len(s.commands), reverse=True)
        assert [c.split()[0] for c in no_sni.commands] == ["EHLO", "STARTTLS"]
        session = probe
        verbs = [c.split()[0].upper() for c in session.commands]
        assert "RCPT" in verbs and "RSET" in verbs and verbs[-1] == "QUIT"
        assert "DATA" not in verbs and not session.data_received
        assert session.tls
    assert not any(m.rcpt_tos == ("probe-me@partner.example",) for m in lab.messages)


async def test_shared_server_is_probed_once(lab, lab_network_options):
    host = "mx.trusted.example"
    before = len(lab.sessions_to(host))
    targets = [Target.domain("trusted.example"), Target.route(host, lab.smtp_port),
               Target.domain("Trusted.Example.")]
    results = await validate_targets(targets, lab_network_options)
    assert [r.status for r in results] == [Status.STRICT] * 3
    assert [r.hosts[0].preference for r in results] == [10, None, 10]
    assert len(lab.sessions_to(host)) - before == 2  # one probe: its two connections


async def test_progress_is_called_once_per_target(lab_network_options):
    seen: list[TargetResult] = []
    targets = [Target.domain(n) for n in ("trusted.example", "nxdomain.example",
                                          "nostarttls.example")]
    results = await validate_targets(targets, lab_network_options, progress=seen.append)
    assert sorted(r.target for r in seen) == sorted(r.target for r in results)
    assert {r.target: r for r in seen} == {r.target: r for r in results}


async def test_concurrency_one_still_validates_everything(lab_network_options):
    options = dataclasses.replace(lab_network_options, concurrency=1)
    targets = [Target.domain(n) for n in ("trusted.example", "mixed.example")]
    results = await validate_targets(targets, options)
    assert [r.status for r in results] == [Status.STRICT, Status.STRICT]


async def test_cancellation_stops_probes_and_leaves_no_tasks(lab):
    options = NetworkOptions(nameserver=lab.nameserver, smtp_port=lab.smtp_port,
                             ca_file=lab.ca_file, timeout=60.0)
    host = "mx.tarpit.example"
    before = len(lab.sessions_to(host))
    task = asyncio.create_task(validate_targets([Target.domain("tarpit.example")], options))
    assert await asyncio.to_thread(lab.wait_for, lambda: len(lab.sessions_to(host)) > before)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asyncio.all_tasks() == {asyncio.current_task()}
    session = lab.sessions_to(host)[before]
    assert await asyncio.to_thread(lab.wait_for, lambda: session.closed)


@pytest.mark.skipif(not ipv6_loopback_available(), reason="::1 cannot be bound on this host")
async def test_ipv6_only_mx_and_ipv6_route():
    """An MX with only an AAAA record, and a route given as an IPv6 literal, over ::1."""
    async with Lab(smtp_port=0, ipv6=True) as lab6:
        options = NetworkOptions(nameserver=lab6.nameserver, smtp_port=lab6.smtp_port,
                                 ca_file=lab6.ca_file, timeout=3.0, https_port=lab6.https_port)
        domain, route = await validate_targets(
            [Target.domain("v6.example"), Target.route("[::1]")], options,
            email="postmaster@v6.example")
        # The route names the server by address: a probe of its own (and no SNI to compare);
        # the domain's probe also makes a bare handshake without SNI.
        sessions = lab6.sessions
        assert await asyncio.to_thread(
            lab6.recorder.wait_for, lambda: len(sessions) == 3 and all(s.closed for s in sessions))
    assert domain.status == Status.STRICT, domain.reason
    (host,) = domain.hosts
    assert (host.host, host.address, host.port) == ("mx.v6.example", "::1", lab6.smtp_port)
    assert host.rcpt is not None and host.rcpt.code == 250
    # The certificate names mx.v6.example, not the address: TLS works, the name does not match.
    assert route.target == f"[::1]:{lab6.smtp_port}" and route.status == Status.RELAXED
    assert "name mismatch" in route.reason
    for session in sessions:
        assert session.commands[0] == "EHLO [IPv6:::1]"  # our address literal, RFC 5321 form
        assert session.tls and not session.data_received
