"""SSL Mode on delivery and pinned client certificates on receipt, through the real relay with
real TLS: lab servers as the next hop, and clients presenting certificates made here."""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import aiosmtplib
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from connectwiz.policy.model import (
    Applies,
    ClientCertificatePin,
    DeliveryDefinition,
    DeliveryOption,
    EncryptionMode,
    ReceiptOption,
    ReceiptPolicy,
    Scope,
    SslMode,
)
from connectwiz.relay.events import EventLog
from connectwiz.relay.server import Relay
from tests.probe.certfactory import make_ca, make_leaf

from .conftest import (
    FAST,
    RELAXED,
    body,
    lab_messages,
    make_model,
    no_verify,
    send,
    token,
    wait_lab,
)

pytestmark = pytest.mark.network

LEGACY = DeliveryDefinition("Legacy servers", DeliveryOption.ENFORCED, EncryptionMode.RELAXED,
                            "1.0", ssl_mode=SslMode.LEGACY)
VERY_STRONG = replace(RELAXED, name="Very strong", ssl_mode=SslMode.VERY_STRONG)
STRONG = replace(RELAXED, name="Strong", ssl_mode=SslMode.STRONG)


async def _deliver(lab, relays, domain: str, definition: DeliveryDefinition,
                   spool: Path | None = None):
    r = await relays(make_model(lab, delivery={domain: definition}), spool=spool)
    tag = token()
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [f"rcpt-{tag}@{domain}"], body(tag))
    return r, msg_id, tag


async def test_legacy_ssl_mode_delivers_to_a_tls10_only_server(lab, relays) -> None:
    # Strong (the default) defers this server: see test_delivery's tls10 test.
    r, msg_id, tag = await _deliver(lab, relays, "tls10.example", LEGACY)
    record = await r.wait_status(msg_id, "delivered")
    assert record.attempts[-1]["tls_version"] == "TLSv1"
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)


async def test_very_strong_defers_a_server_with_only_rsa_key_exchange_that_strong_accepts(
        lab, relays, tmp_path) -> None:
    lab.add_sink(["rsakx.sslmode.example"], "rsakx")
    r, msg_id, _ = await _deliver(lab, relays, "rsakx.sslmode.example", VERY_STRONG)
    record = await r.wait_status(msg_id, "deferred")
    assert "handshake failed" in record.attempts[0]["error"]

    r, msg_id, tag = await _deliver(lab, relays, "rsakx.sslmode.example", STRONG,
                                    tmp_path / "spool2")
    record = await r.wait_status(msg_id, "delivered")
    assert record.attempts[-1]["tls_cipher"] in ("AES128-SHA", "AES256-SHA")
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)


# -- pinned client certificates ----------------------------------------------------------------


def _client(tmp_path: Path, name: str, issuer=None) -> tuple[ssl.SSLContext, bytes]:
    """A client TLS context presenting a new certificate (self-signed unless ``issuer``), and
    that certificate's DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_leaf([name], issuer, key=key, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,
                                                   ExtendedKeyUsageOID.SERVER_AUTH))
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = no_verify()
    ctx.load_cert_chain(cert_file, key_file)
    return ctx, cert.public_bytes(serialization.Encoding.DER)


def _pinning_model(lab, pins: dict[str, bytes]):
    """Enforced receipt from each sender domain, pinning the given certificate."""
    model = make_model(lab)
    return replace(model, receipt_policies=tuple(
        ReceiptPolicy(f"pinned {domain}", ReceiptOption.ENFORCED,
                      from_=Scope(Applies.DOMAIN, (domain,)), to=Scope(Applies.INTERNAL),
                      client_certificate=ClientCertificatePin(f"{domain}.pem", (der,)))
        for domain, der in pins.items()))


async def _try(port: int, sender: str, ctx: ssl.SSLContext | None) -> tuple[int, str]:
    """MAIL and RCPT over STARTTLS (when ``ctx``); the RCPT reply."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10,
                             local_hostname="client.test")
    await client.connect()
    try:
        if ctx is not None:
            await client.starttls(tls_context=ctx)
        await client.mail(sender)
        try:
            reply = await client.rcpt("bob@corp.example")
        except aiosmtplib.SMTPRecipientRefused as exc:
            return exc.code, exc.message
        return reply.code, reply.message
    finally:
        client.close()


async def test_receipt_requires_the_pinned_self_signed_client_certificate(
        lab, relays, tmp_path) -> None:
    pinned_ctx, pinned = _client(tmp_path, "mx.partner.example")
    other_ca = make_ca("Partner CA")
    other_ctx, _ = _client(tmp_path, "mx.other.example", other_ca)
    r = await relays(_pinning_model(lab, {"partner.example": pinned}))

    code, _ = await _try(r.port, "a@partner.example", pinned_ctx)
    assert code == 250
    tag = token()
    msg_id = await send(r.port, "a@partner.example", ["bob@corp.example"], body(tag),
                        tls=True, tls_context=pinned_ctx)
    record = await r.wait_status(msg_id, "delivered", "queued", "deferred")
    assert record.received["client_certificate_sha256"]

    code, message = await _try(r.port, "a@partner.example", no_verify())
    assert (code, message.split()[0]) == (530, "5.7.0")
    assert "client certificate is required" in message

    code, message = await _try(r.port, "a@partner.example", None)  # plaintext
    assert code == 530

    # A certificate nobody pinned: the handshake itself fails (documented in clientcert).
    with pytest.raises((aiosmtplib.SMTPException, ssl.SSLError, ConnectionError)):
        await _try(r.port, "a@partner.example", other_ctx)

    # Senders whose policy pins nothing are unaffected, with or without a certificate.
    assert (await _try(r.port, "a@elsewhere.example", no_verify()))[0] == 250


async def test_a_pinned_ca_accepts_its_leaves_but_only_for_its_own_policy(
        lab, relays, tmp_path) -> None:
    ca = make_ca("Partner Mail CA")
    ca_der = ca[0].public_bytes(serialization.Encoding.DER)
    leaf_ctx, _ = _client(tmp_path, "mx1.partner.example", ca)
    _, bank_pin = _client(tmp_path, "mx.bank.example")
    r = await relays(_pinning_model(lab, {"partner.example": ca_der,
                                          "bank.example": bank_pin}))
    assert (await _try(r.port, "a@partner.example", leaf_ctx))[0] == 250
    code, message = await _try(r.port, "a@bank.example", leaf_ctx)
    assert code == 530 and "not the one pinned" in message


async def test_reload_starts_asking_for_a_newly_pinned_certificate(lab, relays, tmp_path) -> None:
    ctx, der = _client(tmp_path, "mx.partner.example")
    models = [make_model(lab)]
    r = await relays(models[0])
    r.relay.load_policy = lambda: models[-1]
    # Nothing pinned: the relay asks for no certificate, so a pinned policy added by reload
    # must change the context new sessions get.
    models.append(_pinning_model(lab, {"partner.example": der}))
    assert await r.relay.reload()
    code, _ = await _try(r.port, "a@partner.example", ctx)
    assert code == 250
    code, _ = await _try(r.port, "a@partner.example", no_verify())
    assert code == 530


# -- the relay's own certificate ---------------------------------------------------------------


async def test_the_self_signed_default_is_warned_about_at_every_start(
        lab, tmp_path, lab_network_options, event_log) -> None:
    warnings = []
    for _ in range(2):  # made on the first start, reused on the second: both warn
        log = EventLog(json_lines=True, stream=event_log.log.stream)  # one listener per start
        log.subscribe(lambda event, fields: warnings.append(fields) if event == "warning"
                      else None)
        relay = Relay(lambda: make_model(lab), tmp_path / "spool", ("127.0.0.1", 0),
                      options=lab_network_options, settings=FAST, log=log)
        await relay.start()
        await relay.stop()
    assert [w["reason"].split("(")[1].split(";")[0] for w in warnings] == ["made now",
                                                                         "made earlier"]
    assert all("self-signed certificate for relay.corp.example" in w["reason"]
               and "--tls-cert" in w["fix"] for w in warnings)


async def test_a_publicly_trusted_client_certificate_keeps_tls_but_satisfies_no_pin(
        lab, relays, tmp_path, monkeypatch) -> None:
    # The system store, as OpenSSL reads it, is this test's CA (SSL_CERT_FILE).
    public = make_ca("Public Test CA")
    store = tmp_path / "system-cas.pem"
    store.write_bytes(public[0].public_bytes(serialization.Encoding.PEM))
    monkeypatch.setenv("SSL_CERT_FILE", str(store))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    public_ctx, _ = _client(tmp_path, "mx.bigmail.example", public)
    _, pinned = _client(tmp_path, "mx.partner.example")
    r = await relays(_pinning_model(lab, {"partner.example": pinned}))
    # The handshake succeeds (no lost TLS for senders that pin nothing) ...
    assert (await _try(r.port, "a@bigmail.example", public_ctx))[0] == 250
    # ... but the certificate is not the partner's pin.
    code, message = await _try(r.port, "a@partner.example", public_ctx)
    assert code == 530 and "not the one pinned" in message
