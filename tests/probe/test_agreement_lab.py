"""Validate through the real path on server shapes where the verdict used to disagree with
what delivery does (issue 11): STARTTLS injection, SNI, several MX, IP-literal MX, --email."""

from __future__ import annotations

import json

import pytest

from connectwiz.cli import main
from connectwiz.probe import Status, Target, validate_targets

pytestmark = pytest.mark.network


def _add_mx(lab, domain: str, *records: str) -> None:
    """MX records for a new lab domain, before anything queries it."""
    for record in records:
        lab.lab.zone.add(f"{domain}.", "MX", record)


async def test_starttls_injection_is_discarded_and_rcpt_reply_is_the_servers(lab,
                                                                            lab_network_options):
    """CVE-2011-0411: plaintext after the STARTTLS 220 is never read as a reply over TLS."""
    lab.add_sink(["inject.truth.example"], "starttlsinject")
    (result,) = await validate_targets([Target.domain("inject.truth.example")],
                                       lab_network_options, email="someone@partner.example")
    assert result.status == Status.STRICT, result.reason
    (host,) = result.hosts
    # The server refuses the recipient; the injected lines said 250.
    assert host.rcpt is not None and host.rcpt.code == 550, host.rcpt


async def test_critical_subject_alt_name_is_strict(lab, lab_network_options):
    lab.add_sink(["sancrit.truth.example"], "sancritical")
    (result,) = await validate_targets([Target.domain("sancrit.truth.example")],
                                       lab_network_options)
    assert result.status == Status.STRICT, result.reason
    assert result.warnings == ()


async def test_certificate_that_depends_on_sni_is_reported(lab, lab_network_options):
    lab.add_sink(["sni.truth.example"], "sni")
    (result,) = await validate_targets([Target.domain("sni.truth.example")],
                                       lab_network_options)
    # The relay sends SNI (the MX name) and gets the right certificate ...
    assert result.status == Status.STRICT, result.reason
    # ... a client without SNI (Postfix by default) gets another one: said, with its problem.
    (warning,) = result.warnings
    assert warning.startswith("sni.truth.example presents another certificate to clients "
                              "that send no SNI")
    assert "name mismatch" in warning and "smtp_tls_servername" in warning


async def test_ten_mx_with_one_working_get_the_working_ones_verdict(lab, lab_network_options):
    """Unreachable hosts are skipped, as the relay skips them; each one is a warning."""
    refused = lab.address_of("mx.refused.example")  # nothing listens there
    for i in range(1, 10):
        lab.lab.zone.add(f"mx{i}.tenmx.truth.example.", "A", refused)
    _add_mx(lab, "tenmx.truth.example", *(f"{i * 10} mx{i}.tenmx.truth.example."
                                          for i in range(1, 10)),
            "55 mx.trusted.example.")
    (result,) = await validate_targets([Target.domain("tenmx.truth.example")],
                                       lab_network_options)
    assert result.status == Status.STRICT, result.reason
    assert result.reason.startswith("mx.trusted.example: TLSv1")
    assert len(result.hosts) == 10 and len(result.warnings) == 9
    assert all("is not reachable now" in w and "mail goes to mx.trusted.example" in w
               for w in result.warnings)


async def test_mx_naming_an_ip_address_says_so(lab, lab_network_options):
    _add_mx(lab, "ipmx.truth.example", f"10 {lab.address_of('mx.trusted.example')}.")
    (result,) = await validate_targets([Target.domain("ipmx.truth.example")],
                                       lab_network_options)
    assert result.status == Status.ERROR
    assert "names an IP address" in result.reason and "RFC 5321" in result.reason


def test_email_local_part_keeps_its_case(lab, lab_cli_args, capsys):
    before = len(lab.sessions_to("mx.trusted.example"))
    assert main(["validate", "--json", "--email", "Probe.User@Partner.EXAMPLE.", *lab_cli_args,
                 "trusted.example"]) == 0
    capsys.readouterr()
    assert lab.wait_for(lambda: all(s.closed for s in lab.sessions_to("mx.trusted.example")))
    commands = [c for s in lab.sessions_to("mx.trusted.example")[before:] for c in s.commands]
    assert "RCPT TO:<Probe.User@partner.example>" in commands


def test_non_ascii_email_is_a_per_host_note_and_keeps_every_result(lab_cli_args, capsys):
    """The lab servers do not offer SMTPUTF8: the address is not sent, nothing crashes."""
    code = main(["validate", "--json", "--email", "prøbe@partner.example", *lab_cli_args,
                 "trusted.example", "selfsigned.example", "nostarttls.example"])
    assert code == 1  # nostarttls
    data = json.loads(capsys.readouterr().out)
    assert [d["status"] for d in data] == ["strict", "relaxed", "unsupported"]
    rcpt = data[0]["hosts"][0]["rcpt"]
    assert rcpt["code"] == 0
    assert rcpt["message"] == ("not checked: prøbe@partner.example is not ASCII and the "
                               "server does not offer SMTPUTF8")


async def test_mx_whose_address_lookup_fails_is_skipped_not_fatal(lab, lab_network_options):
    """One MX name answering SERVFAIL leaves the other hosts to try, as the relay tries them."""
    lab.lab.zone.add_servfail("broken.servfailmx.truth.example.")
    _add_mx(lab, "servfailmx.truth.example", "10 broken.servfailmx.truth.example.",
            "20 mx.trusted.example.")
    (result,) = await validate_targets([Target.domain("servfailmx.truth.example")],
                                       lab_network_options)
    assert result.status == Status.STRICT, result.reason
    (warning,) = result.warnings
    assert warning.startswith("broken.servfailmx.truth.example is not reachable now (DNS "
                              "server failure (SERVFAIL)")
