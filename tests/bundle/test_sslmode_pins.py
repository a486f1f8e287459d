"""SSL Mode and pinned client certificates in the bundle: reading, errors, round trip, and
their Postfix export."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from connectwiz.bundle import Bundle, BundleError
from connectwiz.bundle.postfix import MAIN_CF, SENDER_TLS, TLS_POLICY, export_postfix
from connectwiz.cli import main
from connectwiz.policy.model import SslMode
from connectwiz.policy.sslmode import LEVELS, effective_min_tls, level_of
from tests.probe.certfactory import make_ca, make_leaf

BUNDLE = '''\
schema_version = 1

[[delivery_definitions]]
name = "Old bank"
option = "enforced"
encryption_mode = "relaxed"
{definition}

[[delivery_policies]]
narrative = "old bank"
definition = "Old bank"
to = {{ applies = "domain", specifically = ["bank.example"] }}

[[receipt_policies]]
narrative = "partner with a pinned certificate"
option = "enforced"
from = {{ applies = "domain", specifically = ["partner.example"] }}
{receipt}
'''


def _write(tmp_path: Path, definition: str = "", receipt: str = "") -> Path:
    path = tmp_path / "bundle.toml"
    path.write_text(BUNDLE.format(definition=definition, receipt=receipt))
    return path


def _pem(tmp_path: Path, name: str, cert) -> str:
    (tmp_path / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return name


@pytest.mark.parametrize(("definition", "mode", "minimum"), [
    ("", SslMode.STRONG, "1.2"),
    ('min_tls = "1.0"', SslMode.LEGACY, "1.0"),  # bundles from before SSL Mode keep working
    ('ssl_mode = "very_strong"\nmin_tls = "1.3"', SslMode.VERY_STRONG, "1.3"),
    ('ssl_mode = "legacy"', SslMode.LEGACY, "1.2"),
])
def test_ssl_mode_is_read_with_its_default(tmp_path, definition, mode, minimum) -> None:
    bundle = Bundle.load(_write(tmp_path, definition))
    [d] = bundle.model.delivery_definitions
    assert level_of(d).mode is mode and effective_min_tls(d) == minimum
    # Written back exactly as given: no ssl_mode appears where there was none.
    assert ("ssl_mode" in bundle.to_toml()) == ("ssl_mode" in definition)


@pytest.mark.parametrize(("definition", "key", "words"), [
    ('ssl_mode = "strng"', "delivery_definitions[0].ssl_mode", "did you mean 'strong'?"),
    ('ssl_mode = "strong"\nmin_tls = "1.0"', "delivery_definitions[0].min_tls",
     "'1.0' is older than ssl_mode = 'strong' allows (TLS 1.2 or newer)"),
])
def test_ssl_mode_errors_name_the_key(tmp_path, definition, key, words) -> None:
    with pytest.raises(BundleError) as info:
        Bundle.load(_write(tmp_path, definition))
    assert info.value.key == key and words in str(info.value)


def test_each_ssl_mode_is_exported_as_postfix_ciphers(tmp_path) -> None:
    for mode in SslMode:
        minimum = "1.0" if mode is SslMode.LEGACY else "1.2"
        model = Bundle.load(_write(tmp_path, f'ssl_mode = "{mode}"\nmin_tls = "{minimum}"')
                            ).model
        out = export_postfix(model)
        line = next(x for x in out.files[TLS_POLICY].splitlines()
                    if x.startswith("bank.example\t"))
        protocols = "TLSv1" if minimum == "1.0" else "TLSv1.2"
        assert line == f"bank.example\tencrypt protocols=>={protocols} {LEVELS[mode].postfix}"
    assert LEVELS[SslMode.VERY_STRONG].postfix == \
        "ciphers=high exclude=kRSA:SHA1:SHA256:SHA384"


def test_a_pinned_certificate_is_loaded_from_the_bundles_folder(tmp_path) -> None:
    leaf = make_leaf(["mx.partner.example"], None)
    name = _pem(tmp_path, "partner.pem", leaf)
    bundle = Bundle.load(_write(tmp_path, receipt=f'client_certificate = "{name}"'))
    [policy] = bundle.model.receipt_policies
    assert policy.client_certificate is not None
    assert policy.client_certificate.certificates == (
        leaf.public_bytes(serialization.Encoding.DER),)
    assert 'client_certificate = "partner.pem"' in bundle.to_toml()
    assert bundle.to_json()["receipt_policies"][0]["client_certificate"] == "partner.pem"


@pytest.mark.parametrize(("content", "words"), [
    (None, "cannot read 'partner.pem' (relative to the bundle's folder)"),
    (b"not a certificate\n", "'partner.pem' holds no PEM certificate"),
])
def test_a_bad_pin_file_is_a_clear_error(tmp_path, content, words) -> None:
    if content is not None:
        (tmp_path / "partner.pem").write_bytes(content)
    path = _write(tmp_path, receipt='client_certificate = "partner.pem"')
    with pytest.raises(BundleError) as info:
        Bundle.load(path)
    line = 1 + path.read_text().splitlines().index('client_certificate = "partner.pem"')
    assert info.value.key == "receipt_policies[0].client_certificate"
    assert words in str(info.value) and info.value.line == line


def test_pinned_certificates_export_to_check_ccert_access(tmp_path) -> None:
    leaf = make_leaf(["mx.partner.example"], None)
    ca, _ = make_ca("Partner CA")
    (tmp_path / "pins.pem").write_bytes(b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca)))
    out = export_postfix(Bundle.load(
        _write(tmp_path, receipt='client_certificate = "pins.pem"')).model)
    digest = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    fingerprint = ":".join(digest[i:i + 2] for i in range(0, 64, 2))
    rows = [x for x in out.files["client_certs_1"].splitlines() if not x.startswith("#")]
    assert rows == [f"{fingerprint}\tOK"]
    assert "partner.example\tconnectwiz_ccert_1" in out.files[SENDER_TLS]
    main_cf = out.files[MAIN_CF]
    assert "smtpd_tls_ask_ccert = yes" in main_cf
    assert ("connectwiz_ccert_1 = reject_plaintext_session, check_ccert_access "
            "texthash:${config_directory}/connectwiz/client_certs_1, reject") in main_cf
    assert any("pins a CA certificate" in w for w in out.warnings)


def test_explain_shows_the_ssl_mode_and_the_pinned_certificate(tmp_path, capsys) -> None:
    name = _pem(tmp_path, "partner.pem", make_leaf(["mx.partner.example"], None))
    path = _write(tmp_path, 'ssl_mode = "very_strong"',
                  f'client_certificate = "{name}"')
    assert main(["explain", "--bundle", str(path), "--from", "a@partner.example",
                 "--to", "x@bank.example"]) == 0
    out = capsys.readouterr().out
    assert "Delivery: Old bank (enforced, relaxed, TLS 1.2+, SSL Mode very_strong)" in out
    assert "Receipt: enforced, client certificate pinned in partner.pem" in out
