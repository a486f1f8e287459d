"""DANE (RFC 7672): TLSA association data, matching against presented chains, and the lab's
TLSA records with the AD bit (real DNS over loopback, real TLS handshakes)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from connectwiz.cli import main
from connectwiz.probe import Target, validate_targets
from connectwiz.probe.dane import (
    DaneHost,
    DaneResult,
    Tlsa,
    association_data,
    dnssec_resolver,
    lookup_tlsa,
    match_chain,
)
from connectwiz.probe.dns import make_resolver

from .certfactory import make_ca, make_leaf

ROOT = make_ca("DANE Root")
LEAF = make_leaf(["mx.example.com"], ROOT)
OTHER = make_leaf(["mx.example.com"], None, key=make_ca("unrelated")[1])
DER = LEAF.public_bytes(serialization.Encoding.DER)
ROOT_DER = ROOT[0].public_bytes(serialization.Encoding.DER)
SPKI = LEAF.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize(("selector", "mtype", "expected"), [
    (0, 0, DER), (0, 1, hashlib.sha256(DER).digest()), (0, 2, hashlib.sha512(DER).digest()),
    (1, 0, SPKI), (1, 1, hashlib.sha256(SPKI).digest()), (1, 2, hashlib.sha512(SPKI).digest()),
    (2, 1, None), (1, 3, None),
])
def test_association_data(selector, mtype, expected):
    assert association_data(DER, selector, mtype) == expected


def _host(*records: Tlsa) -> DaneHost:
    return DaneHost("mx.example.com", "_25._tcp.mx.example.com", records, authenticated=True)


def test_dane_ee_matches_the_leaf_only():
    record = Tlsa(3, 1, 1, hashlib.sha256(SPKI).digest())
    assert match_chain(_host(record), (DER, ROOT_DER)).matches is True
    other = OTHER.public_bytes(serialization.Encoding.DER)
    assert match_chain(_host(record), (other,)).matches is False
    # the same data as a DANE-TA record must be found among the issuers, not the leaf
    assert match_chain(_host(Tlsa(2, 1, 1, record.data)), (DER, ROOT_DER)).matches is False


def test_dane_ta_matches_an_issuer_the_server_sent():
    record = Tlsa(2, 0, 1, hashlib.sha256(ROOT_DER).digest())
    assert match_chain(_host(record), (DER, ROOT_DER)).matches is True
    assert match_chain(_host(record), (DER,)).matches is False  # the anchor was not sent


def test_pkix_usages_are_never_usable_for_smtp():
    host = match_chain(_host(Tlsa(1, 0, 0, DER), Tlsa(0, 0, 0, ROOT_DER)), (DER, ROOT_DER))
    assert not host.usable and host.matches is None
    assert all(not r.matches for r in host.records)


def test_result_authenticated_needs_every_published_host():
    signed = _host(Tlsa(3, 1, 1, b"x"))
    unsigned = DaneHost("mx2.example.com", "_25._tcp.mx2.example.com", (Tlsa(3, 1, 1, b"x"),))
    empty = DaneHost("mx3.example.com", "_25._tcp.mx3.example.com")
    assert DaneResult((signed, empty)).authenticated is True
    assert DaneResult((signed, unsigned)).authenticated is False
    assert DaneResult((empty,)).published is False and DaneResult((empty,)).authenticated is False


# --- against the lab ---------------------------------------------------------------------------


@pytest.mark.network
def test_ad_bit_only_when_dnssec_is_asked_for(lab_network_options):
    async def run() -> tuple[DaneHost, DaneHost]:
        asked = await lookup_tlsa("mx.dane-ok.example", dnssec_resolver(lab_network_options))
        plain = await lookup_tlsa("mx.dane-ok.example", make_resolver(lab_network_options))
        return asked, plain
    asked, plain = asyncio.run(run())
    assert asked.records and asked.authenticated is True
    assert plain.records == asked.records and plain.authenticated is False


@pytest.mark.network
async def test_validation_matches_tlsa_against_the_presented_certificate(lab_network_options):
    names = ["dane-ok.example", "dane-bad.example", "trusted.example", "selfsigned.example"]
    results = {r.target: r.dane for r in await validate_targets(
        [Target.domain(n) for n in names], lab_network_options)}
    ok, bad = results["dane-ok.example"], results["dane-bad.example"]
    assert ok.published and ok.authenticated and ok.hosts[0].matches is True
    assert [(r.usage, r.selector, r.matching_type) for r in ok.hosts[0].records] == [(3, 1, 1)]
    assert bad.published and bad.authenticated and bad.hosts[0].matches is False
    assert results["trusted.example"].hosts[0].matches is True
    none = results["selfsigned.example"]
    assert not none.published and none.hosts[0].name == "_25._tcp.mx.selfsigned.example"
    # the two DANE hosts really present a key no TLSA of dane-bad names
    assert ok.hosts[0].records[0].data != bad.hosts[0].records[0].data


@pytest.mark.network
def test_verbose_text_shows_dane(lab_cli_args, capsys):
    assert main(["validate", *lab_cli_args, "-v", "dane-bad.example", "dane-ok.example"]) == 0
    out = capsys.readouterr().out
    assert ("DANE:      _25._tcp.mx.dane-bad.example TLSA 3 1 1: does NOT match; "
            "DNSSEC-authenticated") in out
    assert "DANE:      _25._tcp.mx.dane-ok.example TLSA 3 1 1: matches the certificate" in out
