"""client_context: the settings the probe and the relay rely on."""

from __future__ import annotations

import ssl

import pytest

from connectwiz.probe.tls import client_context, peer_chain
from connectwiz.smtpclient import SmtpClient


def test_verifying_context_requires_chain_and_name():
    ctx = client_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not client_context(check_hostname=False).check_hostname


def test_inspecting_context_accepts_anything_but_old_tls():
    ctx = client_context(verify=False)
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_legacy_context_allows_tls_1_0():
    ctx = client_context(verify=False, legacy=True)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1


@pytest.mark.network
async def test_ca_file_is_trusted_and_chain_is_readable(lab):
    """The relay's use: verify a lab server with --ca-file; the probe's: read what it sent."""
    host = "mx.trusted.example"
    for verify in (True, False):
        client = await SmtpClient.connect(lab.address_of(host), lab.smtp_port, 3.0)
        try:
            assert (await client.read_reply("greeting")).code == 220
            assert (await client.command("EHLO [127.0.0.1]", "ehlo")).code == 250
            assert (await client.command("STARTTLS", "starttls")).code == 220
            ssl_object = await client.starttls(
                client_context(verify=verify, ca_file=lab.ca_file), host)
            chain = peer_chain(ssl_object)
            assert host in str(chain[0].subject)
        finally:
            await client.close()
    # Without the lab CA the verifying context refuses the same server.
    client = await SmtpClient.connect(lab.address_of(host), lab.smtp_port, 3.0)
    try:
        await client.read_reply("greeting")
        await client.command("EHLO [127.0.0.1]", "ehlo")
        await client.command("STARTTLS", "starttls")
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.starttls(client_context(), host)
    finally:
        client.abort()
