"""TLS-RPT (RFC 8460): parsing the _smtp._tls record, and the lookup against the lab DNS."""

from __future__ import annotations

import asyncio

import pytest

from connectwiz.probe import Target, validate_targets
from connectwiz.probe.dns import make_resolver
from connectwiz.probe.tlsrpt import TlsRptResult, lookup_tls_rpt, parse_tlsrpt


def test_one_record_with_two_addresses():
    result = parse_tlsrpt(["v=spf1 -all",
                           "v=TLSRPTv1; rua=mailto:a@example.com, https://r.example.com/x"])
    assert result.published and result.error is None
    assert result.rua == ("mailto:a@example.com", "https://r.example.com/x")


@pytest.mark.parametrize(("texts", "words"), [
    (["v=TLSRPTv1; rua=mailto:a@x", "v=TLSRPTv1; rua=mailto:b@x"], "exactly one"),
    (["v=TLSRPTv1;"], "no rua"),
    (["v=TLSRPTv1; rua=ftp://x.example/"], "mailto: or https:"),
    (["v=TLSRPTv10; rua=mailto:a@x"], "does not start with v=TLSRPTv1"),
])
def test_unusable_records(texts, words):
    result = parse_tlsrpt(texts)
    assert result.published and words in result.error


def test_no_record():
    assert parse_tlsrpt(["v=spf1 -all"]) == TlsRptResult(False)


@pytest.mark.network
@pytest.mark.parametrize(("domain", "rua"), [
    ("trusted.example", ("mailto:tls-reports@trusted.example",)),
    ("sts-testing.example", ("mailto:tlsrpt@sts-testing.example",
                             "https://reports.sts-testing.example/tlsrpt")),
    ("selfsigned.example", ()),
])
def test_lab_records(lab_network_options, domain, rua):
    async def run() -> TlsRptResult:
        return await lookup_tls_rpt(domain, make_resolver(lab_network_options))
    result = asyncio.run(run())
    assert result.rua == rua and result.published is bool(rua) and result.error is None


@pytest.mark.network
async def test_in_validation_json(lab_network_options):
    (domain,) = await validate_targets([Target.domain("sts-testing.example")],
                                       lab_network_options)
    data = domain.to_json()["tls_rpt"]
    assert data["published"] is True and len(data["rua"]) == 2
    (route,) = await validate_targets([Target.route("mail.corp.example",
                                                    lab_network_options.smtp_port)],
                                      lab_network_options)
    assert route.to_json()["tls_rpt"] is None  # routes publish nothing of interest
