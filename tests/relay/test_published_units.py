"""relay.published without the network: the DANE certificate check (RFC 7672 §3.1)."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.serialization import Encoding

from connectwiz.probe.dane import DaneHost, Tlsa
from connectwiz.relay.published import TLSA, Published

from ..probe.certfactory import make_ca, make_leaf

HOST = "mx.partner.example"


def _der(cert) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _published(usage: int, cert) -> Published:
    record = Tlsa(usage, 0, 1, hashlib.sha256(_der(cert)).digest())
    return Published(TLSA, "partner.example", "dane",
                     tlsa=DaneHost(HOST, f"_25._tcp.{HOST}", (record,), True))


def test_dane_ee_matches_the_key_whatever_the_names() -> None:
    leaf = make_leaf(["other.example"], None)  # self-signed, another name: DANE-EE accepts
    assert _published(3, leaf).check_chain(HOST, (_der(leaf),)) == ""


def test_dane_ee_other_certificate_is_refused() -> None:
    leaf, other = make_leaf([HOST], None), make_leaf([HOST], make_ca())
    assert "no TLSA record" in _published(3, other).check_chain(HOST, (_der(leaf),))


def test_dane_ta_needs_the_chain_to_reach_the_anchor_and_the_mx_name() -> None:
    ca = make_ca("Partner CA")
    good = make_leaf([HOST], ca)
    policy = _published(2, ca[0])
    assert policy.check_chain(HOST, (_der(good), _der(ca[0]))) == ""
    wrong_name = make_leaf(["www.partner.example"], ca)
    assert "not mx.partner.example" in policy.check_chain(HOST, (_der(wrong_name),
                                                                 _der(ca[0])))
    # A forger sends the partner's real CA certificate after a leaf it signed itself.
    forged = make_leaf([HOST], make_ca("Forger"))
    assert "does not chain to the trust anchor" in policy.check_chain(
        HOST, (_der(forged), _der(ca[0])))
