"""The lab CA issues certificates strict verifiers accept; the broken ones fail as named."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from connectwiz.lab.ca import LabCA, LeafShape, spki_sha256


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA(tmp_path_factory.mktemp("ca"))


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify(ca: LabCA, cert_path: Path, name: str) -> list[x509.Certificate]:
    verifier = (PolicyBuilder().store(Store([ca.certificate]))
                .build_server_verifier(x509.DNSName(name)))
    return verifier.verify(_load(cert_path), [])


def test_ca_file_is_the_root_certificate(ca: LabCA) -> None:
    root = _load(ca.ca_file)
    assert root == ca.certificate
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_issued_certificate_passes_strict_verification(ca: LabCA, key_type: str) -> None:
    cert, key = ca.issue(["mx.trusted.example", "alt.trusted.example"], key_type=key_type)
    chain = _verify(ca, cert, "alt.trusted.example")
    assert chain[-1] == ca.certificate
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    eku = _load(cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku


def test_wrong_name_fails_verification(ca: LabCA) -> None:
    cert, _ = ca.issue(["mx.someone-else.example"])
    with pytest.raises(VerificationError):
        _verify(ca, cert, "mx.wrongname.example")


def test_expired_certificate_fails_verification(ca: LabCA) -> None:
    now = dt.datetime.now(dt.UTC)
    cert, _ = ca.issue(["mx.expired.example"], not_before=now - dt.timedelta(days=60),
                       not_after=now - dt.timedelta(days=30))
    assert _load(cert).not_valid_after_utc < now
    with pytest.raises(VerificationError):
        _verify(ca, cert, "mx.expired.example")


def test_self_signed_does_not_chain_to_the_ca(ca: LabCA) -> None:
    cert, _ = ca.self_signed(["mx.selfsigned.example"])
    loaded = _load(cert)
    assert loaded.issuer == loaded.subject
    with pytest.raises(VerificationError):
        _verify(ca, cert, "mx.selfsigned.example")


def test_leaf_key_is_shared_so_issuing_is_cheap(ca: LabCA) -> None:
    first, key1 = ca.issue(["a.example"])
    second, key2 = ca.issue(["b.example"])
    assert key1 == key2 and first != second
    assert spki_sha256(first) == spki_sha256(second)
    assert len(spki_sha256(first)) == 64


# --- the differential corpus's shapes (LeafShape) ---------------------------------------------


def _pem_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def test_shape_san_critical_cn_only_and_ip(ca: LabCA) -> None:
    critical = _load(ca.issue(["mx.a.example"], shape=LeafShape(san_critical=True))[0])
    assert critical.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    cn_only = _load(ca.issue(["mx.b.example"], shape=LeafShape(cn_only=True))[0])
    with pytest.raises(x509.ExtensionNotFound):
        cn_only.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert cn_only.subject.rfc4514_string() == "CN=mx.b.example"
    ip = _load(ca.issue([], shape=LeafShape(ips=("127.0.3.22",)))[0])
    san = ip.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.3.22"]
    assert san.get_values_for_type(x509.DNSName) == []


def test_shape_sha1_client_auth_and_weak_key(ca: LabCA) -> None:
    sha1 = _load(ca.issue(["mx.c.example"], shape=LeafShape(sha1=True))[0])
    assert sha1.signature_hash_algorithm is not None
    assert sha1.signature_hash_algorithm.name == "sha1"
    assert sha1.issuer == ca.certificate.subject
    client = _load(ca.issue(["mx.d.example"], shape=LeafShape(client_auth_only=True))[0])
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    weak = _load(ca.issue(["mx.e.example"], key_type="rsa1024")[0])
    assert weak.public_key().key_size == 1024  # type: ignore[union-attr]


def test_shape_intermediate_sent_or_missing(ca: LabCA) -> None:
    sent = _pem_chain(ca.issue(["mx.f.example"], shape=LeafShape(intermediate="sent"))[0])
    missing = _pem_chain(ca.issue(["mx.g.example"], shape=LeafShape(intermediate="missing"))[0])
    assert len(sent) == 2 and len(missing) == 1
    assert sent[0].issuer == missing[0].issuer == sent[1].subject != ca.certificate.subject
    sent[1].verify_directly_issued_by(ca.certificate)
    assert _verify_with(ca, sent, "mx.f.example")[-1] == ca.certificate
    with pytest.raises(VerificationError):
        _verify_with(ca, missing, "mx.g.example")


def _verify_with(ca: LabCA, chain: list[x509.Certificate], name: str) -> list[x509.Certificate]:
    verifier = (PolicyBuilder().store(Store([ca.certificate]))
                .build_server_verifier(x509.DNSName(name)))
    return verifier.verify(chain[0], chain[1:])
