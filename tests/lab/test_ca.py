"""The lab CA issues certificates strict verifiers accept; the broken ones fail as named."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from connectwiz.lab.ca import LabCA, spki_sha256


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
