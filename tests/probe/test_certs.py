"""Certificate analysis and classification as pure functions, with certificates made here."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from connectwiz.probe.certs import TrustStore, analyse_certificate, match_hostname
from connectwiz.probe.host import classify
from connectwiz.probe.results import Status

from .certfactory import DAY, NOW, make_ca, make_leaf, rsa_key

ROOT = make_ca("Test Root")
STORE = TrustStore((ROOT[0],))
HOST = "mx.partner.example"


def analyse(leaf, host=HOST, intermediates=None, store=STORE):
    return analyse_certificate(leaf, host, store, intermediates, now=NOW)


def test_trusted_valid_matching_certificate_is_strict():
    info = analyse(make_leaf([HOST], ROOT))
    assert (info.trusted, info.self_signed, info.hostname_match, info.expired) == (
        True, False, True, False)
    assert info.problems == []
    status, reason = classify("TLSv1.3", info.problems, HOST)
    assert status == Status.STRICT
    assert "TLSv1.3" in reason


def test_self_signed_is_relaxed_and_says_so():
    info = analyse(make_leaf([HOST], None))
    assert info.self_signed and not info.trusted
    status, reason = classify("TLSv1.2", info.problems, HOST)
    assert status == Status.RELAXED
    assert "self-signed" in reason


def test_unknown_issuer_names_the_issuer():
    other = make_ca("Other Root")
    info = analyse(make_leaf([HOST], other))
    assert not info.trusted and not info.self_signed
    status, reason = classify("TLSv1.3", info.problems, HOST)
    assert status == Status.RELAXED
    assert "unknown CA" in reason and "Other Root" in reason


def test_expired_certificate_from_trusted_ca_is_trusted_but_expired():
    leaf = make_leaf([HOST], ROOT, not_before=NOW - 400 * DAY, not_after=NOW - 30 * DAY)
    info = analyse(leaf)
    assert info.trusted and info.expired and info.hostname_match
    status, reason = classify("TLSv1.3", info.problems, HOST)
    assert status == Status.RELAXED
    assert "expired on" in reason
    assert (NOW - 30 * DAY).strftime("%Y-%m-%d") in reason


def test_expired_leaf_older_than_its_ca_still_names_only_the_expiry():
    young_root = make_ca("Young Root", not_before=NOW - DAY)  # re-issued CA, as in the lab
    leaf = make_leaf([HOST], young_root, not_before=NOW - 400 * DAY, not_after=NOW - 30 * DAY)
    info = analyse(leaf, store=TrustStore((young_root[0],)))
    assert info.trusted and info.expired
    assert len(info.problems) == 1 and "expired" in info.problems[0]


def test_not_yet_valid_certificate():
    info = analyse(make_leaf([HOST], ROOT, not_before=NOW + DAY, not_after=NOW + 90 * DAY))
    assert info.not_yet_valid and not info.expired and info.trusted
    assert "not valid before" in classify("TLSv1.3", info.problems, HOST)[1]


def test_name_mismatch_lists_names_on_certificate():
    info = analyse(make_leaf(["a.other.example", "b.other.example"], ROOT))
    assert info.trusted and not info.hostname_match
    status, reason = classify("TLSv1.3", info.problems, HOST)
    assert status == Status.RELAXED
    assert "a.other.example, b.other.example" in reason and "mismatch" in reason


def test_several_problems_are_all_reported():
    leaf = make_leaf(["elsewhere.example"], None, not_before=NOW - 90 * DAY,
                     not_after=NOW - DAY)
    reason = classify("TLSv1.2", analyse(leaf).problems, HOST)[1]
    assert "self-signed" in reason and "expired" in reason and "elsewhere.example" in reason


def test_wildcard_certificate_matches_one_label():
    info = analyse(make_leaf(["*.partner.example"], ROOT))
    assert info.hostname_match and info.problems == []
    assert classify("TLSv1.3", info.problems, HOST)[0] == Status.STRICT


def test_intermediate_sent_by_server_completes_the_chain():
    intermediate = make_ca("Test Intermediate", issuer=ROOT)
    leaf = make_leaf([HOST], intermediate)
    assert analyse(leaf, intermediates=[intermediate[0]]).problems == []
    without = analyse(leaf)
    assert not without.trusted
    assert without.problems[0] == (
        "certificate issued by an unknown CA (CN=Test Intermediate): neither in the trust "
        "store nor sent by the server (a missing intermediate certificate?)")


def test_unknown_ca_above_a_sent_intermediate_is_the_one_named():
    other = make_ca("Other Root")
    intermediate = make_ca("Sent Intermediate", issuer=other)
    info = analyse(make_leaf([HOST], intermediate), intermediates=[intermediate[0]])
    assert not info.trusted
    assert info.problems == ["certificate issued by an unknown CA (CN=Other Root, which issued "
                             "the intermediate CN=Sent Intermediate the server sent)"]


def test_untrusted_root_sent_by_the_server_is_named():
    other = make_ca("Sent Root")
    info = analyse(make_leaf([HOST], other), intermediates=[other[0]])
    assert info.problems == ["certificate chain ends in a root that is not trusted "
                             "(CN=Sent Root)"]


def test_no_trust_store_means_nothing_is_trusted():
    info = analyse(make_leaf([HOST], ROOT), store=TrustStore(()))
    assert not info.trusted and info.hostname_match


def test_ip_route_matches_ip_san_only():
    leaf = make_leaf(["mail.corp.example"], ROOT, ips=["192.0.2.7"])
    assert analyse(leaf, host="192.0.2.7").problems == []
    assert not analyse(leaf, host="192.0.2.8").hostname_match


def test_old_tls_is_unsupported_even_with_a_good_certificate():
    info = analyse(make_leaf([HOST], ROOT))
    status, reason = classify("TLSv1", info.problems, HOST)
    assert status == Status.UNSUPPORTED
    assert "TLSv1" in reason and "1.2" in reason


def test_certificate_details():
    leaf = make_leaf([HOST, "mx2.partner.example"], ROOT, key=rsa_key(2048))
    info = analyse(leaf)
    assert info.key_type == "RSA" and info.key_size == 2048
    assert info.signature_algorithm == "ecdsa-with-SHA256"  # signed by the EC root
    assert analyse(make_leaf([HOST], None, key=rsa_key(2048))).signature_algorithm == \
        "sha256WithRSAEncryption"
    assert info.names == (HOST, "mx2.partner.example")
    assert info.subject == f"CN={HOST}" and info.issuer == "CN=Test Root"
    ec_info = analyse(make_leaf([HOST], ROOT))
    assert ec_info.key_type == "EC secp256r1" and ec_info.key_size == 256
    as_json = ec_info.to_json()
    assert set(as_json) == {"subject", "issuer", "names", "not_before", "not_after", "trusted",
                            "self_signed", "hostname_match", "expired"}
    assert as_json["not_before"] == (NOW - 30 * DAY).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- OpenSSL's judgement: what the relay and Postfix enforce (issue 11) --------------------


def test_critical_subject_alt_name_with_a_subject_is_strict():
    """RFC 5280 says SHOULD NOT; OpenSSL (the relay, Postfix) accepts it, so validate must."""
    info = analyse(make_leaf([HOST], ROOT, san_critical=True))
    assert info.problems == []
    assert classify("TLSv1.3", info.problems, HOST)[0] == Status.STRICT


def test_sha1_leaf_from_the_trusted_ca_names_the_weak_digest():
    info = analyse(make_leaf([HOST], ROOT, digest=hashes.SHA1()))
    assert info.trusted and not info.self_signed
    assert len(info.problems) == 1
    assert "CA signature digest algorithm too weak" in info.problems[0]
    assert "ecdsa-with-SHA1" in info.problems[0] and "unknown CA" not in info.problems[0]


def test_client_auth_only_certificate_is_an_unsuitable_purpose():
    leaf = make_leaf([HOST], ROOT, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    info = analyse(leaf)
    assert info.trusted and info.hostname_match
    assert info.problems == ["certificate rejected: unsuitable certificate purpose"]


def test_rsa_1024_leaf_key_is_too_weak():
    info = analyse(make_leaf([HOST], ROOT, key=rsa_key(1024)))
    assert info.trusted
    assert info.problems == ["certificate rejected: EE certificate key too weak "
                             "(RSA 1024 bits, security level 2)"]


def test_common_name_is_used_only_without_a_dns_subject_alt_name():
    """OpenSSL's host check, which the relay and Postfix use (docs/validate.md says so)."""
    cn_only = analyse(make_leaf([HOST], ROOT, san=False))
    assert cn_only.names == (HOST,) and cn_only.problems == []
    # A SAN with only an IP address: the CN still names the host, as OpenSSL does.
    ip_only = analyse(make_leaf([], ROOT, ips=["192.0.2.7"], cn=HOST))
    assert ip_only.hostname_match and ip_only.problems == []
    # Any DNS name in the SAN: the CN is ignored.
    other = analyse(make_leaf(["mx.other.example"], ROOT, cn=HOST))
    assert not other.hostname_match


def test_expired_intermediate_is_named():
    old = make_ca("Old Intermediate", issuer=ROOT)
    leaf = make_leaf([HOST], old)
    info = analyse(leaf, intermediates=[old[0]], store=STORE)
    assert info.problems == []  # valid today
    later = analyse_certificate(leaf, HOST, STORE, [old[0]], now=NOW + 4000 * DAY)
    assert later.expired  # the leaf too; its own expiry is the one stated first
    assert any("expired" in p for p in later.problems)


@pytest.mark.parametrize(
    ("names", "host", "expected"),
    [
        (["mx.example.com"], "mx.example.com", True),
        (["MX.Example.COM."], "mx.example.com.", True),  # case and trailing dot do not matter
        (["*.example.com"], "mx.example.com", True),
        (["*.example.com"], "a.b.example.com", False),  # exactly one label
        (["*.example.com"], "example.com", False),  # not the bare parent
        (["*.com"], "example.com", False),  # too broad: two labels must follow the wildcard
        (["f*.example.com"], "foo.example.com", False),  # partial wildcards: not supported
        (["mx.*.example.com"], "mx.a.example.com", False),  # left-most label only
        (["*.*.example.com"], "a.b.example.com", False),
        (["other.example.com"], "mx.example.com", False),
        (["192.0.2.1"], "192.0.2.1", True),
        (["*.0.2.1"], "192.0.2.1", False),  # IPs never match DNS patterns
        (["192.0.2.1"], "mx.example.com", False),
        (["2001:db8::1"], "2001:DB8:0::1", True),
        ([], "mx.example.com", False),
    ],
)
def test_rfc6125_name_matching(names, host, expected):
    assert match_hostname(names, host) is expected



def test_expired_leaf_under_a_sent_intermediate_is_still_a_known_ca():
    """When strict verification fails for another reason, the chain through the intermediate
    the server sent still counts as trusted: the report names the expiry, not "unknown CA"."""
    intermediate = make_ca("Test Intermediate", issuer=ROOT)
    leaf = make_leaf([HOST], intermediate, not_before=NOW - 400 * DAY, not_after=NOW - 30 * DAY)
    other = make_ca("Unrelated Intermediate", issuer=ROOT)
    info = analyse(leaf, intermediates=[other[0], intermediate[0]])
    assert info.trusted and info.expired
    assert len(info.problems) == 1 and "expired" in info.problems[0]
    assert not analyse(leaf, intermediates=[other[0]]).trusted


def test_a_ca_with_the_right_name_but_another_key_is_not_the_issuer():
    impostor = make_ca("Test Root")  # same subject as ROOT, its own key
    leaf = make_leaf([HOST], ROOT)
    info = analyse(leaf, store=TrustStore((impostor[0],)))
    assert not info.trusted and "unknown CA" in info.problems[0]
    # Issuer and subject equal, but signed by another key: not self-signed.
    same_name = make_ca("Test Root", issuer=ROOT)
    assert not analyse(same_name[0]).self_signed


def test_a_ca_certificate_served_as_leaf_is_judged_as_openssl_judges_it():
    """Trusted, in date, and its CN (no SAN) names the host. OpenSSL (`openssl verify -purpose
    sslserver -verify_hostname`, and so the relay and Postfix) accepts a CA certificate as
    the server's own: so does the verdict. With an empty store the report says why not."""
    as_leaf = make_ca(HOST, issuer=ROOT)[0]
    info = analyse(as_leaf)
    assert info.names == (HOST,) and info.hostname_match and info.trusted
    assert info.problems == [] and info.rejections == ()
    untrusted = analyse(as_leaf, store=TrustStore(()))
    assert not untrusted.trusted and "unknown CA (CN=Test Root)" in untrusted.problems[0]


def test_validity_bounds_are_inclusive():
    leaf = make_leaf([HOST], ROOT)
    at_end = analyse_certificate(leaf, HOST, STORE, now=leaf.not_valid_after_utc)
    at_start = analyse_certificate(leaf, HOST, STORE, now=leaf.not_valid_before_utc)
    assert not at_end.expired and not at_start.not_yet_valid
    assert not analyse_certificate(leaf, HOST, STORE).expired  # now defaults to the clock


def test_dates_are_utc_whatever_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: a different calendar day
    time.tzset()
    try:
        end = NOW.replace(hour=23, minute=30) - 30 * DAY
        info = analyse(make_leaf([HOST], ROOT, not_before=NOW - 400 * DAY, not_after=end))
        assert f"certificate expired on {end:%Y-%m-%d}" in info.problems
        assert info.to_json()["not_after"] == f"{end:%Y-%m-%dT%H:%M:%S}Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_host_and_name_forms_that_still_match():
    assert match_hostname(["MX.EXAMPLE.BOX"], "mx.example.box.")
    assert match_hostname(["mx.example.box."], "MX.EXAMPLE.BOX")
    assert match_hostname(["2001:db8::1"], "[2001:db8::1]")


@pytest.mark.parametrize(("key", "expected"), [
    (ed25519.Ed25519PrivateKey.generate(), ("Ed25519", 256)),
    (ed448.Ed448PrivateKey.generate(), ("Ed448", 456)),
    (dsa.generate_private_key(2048), ("DSA", 2048)),
])
def test_key_types_are_named(key, expected):
    info = analyse(make_leaf([HOST], ROOT, key=key))
    assert (info.key_type, info.key_size) == expected


def test_an_impostor_intermediate_or_a_loop_does_not_make_a_known_ca():
    intermediate = make_ca("Test Intermediate", issuer=ROOT)
    impostor = make_ca("Test Intermediate")  # same name, self-signed, another key
    leaf = make_leaf([HOST], intermediate, not_before=NOW - 400 * DAY, not_after=NOW - 30 * DAY)
    assert analyse(leaf, intermediates=[impostor[0], intermediate[0]]).trusted
    # A and B sign each other: following issuers goes round without reaching an anchor.
    key_a, key_b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    a = make_ca("A", issuer=make_ca("B", key=key_b), key=key_a)
    b = make_ca("B", issuer=a, key=key_b)
    assert not analyse(make_leaf([HOST], a), intermediates=[a[0], b[0]]).trusted
