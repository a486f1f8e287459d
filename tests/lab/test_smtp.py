"""Each lab SMTP profile behaves as declared, checked with plain smtplib/ssl on loopback."""

from __future__ import annotations

import hashlib
import smtplib
import socket
import ssl

import dns.resolver
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from connectwiz.lab import LabHandle, LabSession
from connectwiz.lab.ca import spki_sha256

pytestmark = pytest.mark.network

# OpenSSL verify codes (include/openssl/x509_vfy.h)
CERT_HAS_EXPIRED, DEPTH_ZERO_SELF_SIGNED, HOSTNAME_MISMATCH = 10, 18, 62


class LabSMTP(smtplib.SMTP):
    """smtplib client that talks to a lab host by name (for TLS) at the lab's address."""

    def __init__(self, lab: LabHandle, host: str, timeout: float = 5.0) -> None:
        self._address = lab.address_of(host)
        super().__init__(timeout=timeout)
        self._host = host  # what starttls() checks the certificate against
        code, msg = self.connect(host, lab.smtp_port)
        if code != 220:  # as smtplib.SMTP(host) does; connect() alone does not raise
            self.close()
            raise smtplib.SMTPConnectError(code, msg)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self._address, port), timeout)

    def client_port(self) -> int:
        assert self.sock is not None
        return self.sock.getsockname()[1]


def _strict(lab: LabHandle) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(lab.ca_file))


def _permissive() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _session(lab: LabHandle, host: str, client_port: int) -> LabSession:
    """The finished session of the connection from ``client_port`` to ``host``'s server.

    Matched on the server too, newest first: the shared lab has seen many connections, and an
    ephemeral port used earlier towards another server may come round again.
    """
    def find() -> LabSession | None:
        for s in reversed(lab.sessions_to(host)):
            if s.client[1] == client_port and s.closed:
                return s
        return None

    assert lab.wait_for(lambda: find() is not None), f"no session from port {client_port}"
    session = find()
    assert session is not None
    return session


def test_every_lab_server_listens_on_the_one_smtp_port(lab: LabHandle) -> None:
    hosts = {h.name: h for d in (*lab.domains.values(), *lab.expected_routes.values())
             for h in d.hosts if h.profile not in ("refused", "tarpit")}
    assert len({h.address for h in hosts.values()}) > 20
    for name in hosts:
        with socket.create_connection((lab.address_of(name), lab.smtp_port), timeout=5):
            pass


def test_trusted_verifies_against_lab_ca_with_hostname_check(lab: LabHandle) -> None:
    with LabSMTP(lab, "mx.trusted.example") as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        s.starttls(context=_strict(lab))
        assert isinstance(s.sock, ssl.SSLSocket)
        assert s.sock.version() in ("TLSv1.2", "TLSv1.3")
        port = s.client_port()
    session = _session(lab, "mx.trusted.example", port)
    assert session.server == "mx.trusted.example"
    assert session.tls and session.tls_version in ("TLSv1.2", "TLSv1.3") and session.tls_cipher
    assert session.commands == ["ehlo client.test", "STARTTLS", "QUIT"]
    assert not session.data_received


def test_mx_lookup_through_lab_dns_then_connect(lab: LabHandle) -> None:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [lab.nameserver[0]]
    r.port = lab.nameserver[1]
    mx = r.resolve("trusted.example", "MX")[0].exchange.to_text(omit_final_dot=True)
    address = r.resolve(mx, "A")[0].address
    assert address == lab.address_of(mx)
    with socket.create_connection((address, lab.smtp_port), timeout=5) as sock:
        assert sock.recv(512).startswith(b"220 mx.trusted.example ")


def test_trusted_tlsa_record_matches_the_served_key(lab: LabHandle) -> None:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [lab.nameserver[0]]
    r.port = lab.nameserver[1]
    tlsa = r.resolve("_25._tcp.mx.trusted.example", "TLSA")[0]
    with LabSMTP(lab, "mx.trusted.example") as s:
        s.starttls(context=_strict(lab))
        assert isinstance(s.sock, ssl.SSLSocket)
        der = s.sock.getpeercert(binary_form=True)
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert (tlsa.usage, tlsa.selector, tlsa.mtype) == (3, 1, 1)
    assert tlsa.cert.hex() == hashlib.sha256(spki).hexdigest()
    assert tlsa.cert.hex() == spki_sha256(lab.ca.issue(["any.example"])[0])


@pytest.mark.parametrize(("host", "code", "text"), [
    ("mx.expired.example", CERT_HAS_EXPIRED, "expired"),
    ("mx.selfsigned.example", DEPTH_ZERO_SELF_SIGNED, "self-signed"),
    ("mx.wrongname.example", HOSTNAME_MISMATCH, "Hostname mismatch"),
    ("legacy.corp.example", DEPTH_ZERO_SELF_SIGNED, "self-signed"),
])
def test_broken_certificates_fail_strict_verification_as_named(
        lab: LabHandle, host: str, code: int, text: str) -> None:
    with LabSMTP(lab, host) as s:
        s.ehlo("client.test")
        with pytest.raises(ssl.SSLCertVerificationError) as err:
            s.starttls(context=_strict(lab))
    assert err.value.verify_code == code
    assert text in err.value.verify_message


@pytest.mark.parametrize("host", ["mx.expired.example", "mx.selfsigned.example",
                                  "mx.wrongname.example"])
def test_broken_certificates_still_negotiate_modern_tls(lab: LabHandle, host: str) -> None:
    with LabSMTP(lab, host) as s:
        s.starttls(context=_permissive())
        assert isinstance(s.sock, ssl.SSLSocket)
        assert s.sock.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("host", [
    "mx.multiline.example", "mx.slow.example", "mx.rejectrcpt.example", "noemx.example",
    "mx1.mixed.example", "mail.cname-mx.example", "mx.cname-target.example",
    "mx.xn--bcher-kva.example", "mx07-a-long-label-so-the-mx-answer-outgrows-a-udp-packet"
    ".big.example", "mail.corp.example",
])
def test_other_trusted_hosts_verify_strictly(lab: LabHandle, host: str) -> None:
    address_host = "mail.cname-mx.example" if host == "mx.cname-target.example" else host
    with LabSMTP(lab, address_host) as s:
        s._host = host  # the name the certificate is checked against
        s.starttls(context=_strict(lab))
        assert isinstance(s.sock, ssl.SSLSocket)


@pytest.mark.parametrize("host", ["mx.nostarttls.example", "mx3.mixed.example",
                                  "old.corp.example"])
def test_no_starttls(lab: LabHandle, host: str) -> None:
    with LabSMTP(lab, host) as s:
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            s.starttls(context=_permissive())
        assert s.docmd("STARTTLS")[0] == 502


def test_tls10_only_server(lab: LabHandle) -> None:
    old = _permissive()
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning):
        old.minimum_version = ssl.TLSVersion.TLSv1
    with LabSMTP(lab, "mx.tls10.example") as s:
        s.starttls(context=old)
        assert isinstance(s.sock, ssl.SSLSocket)
        assert s.sock.version() == "TLSv1"
    with LabSMTP(lab, "mx.tls10.example") as s:
        s.ehlo("client.test")
        port = s.client_port()
        with pytest.raises((ssl.SSLError, ConnectionError)):
            s.starttls(context=_permissive())  # TLS 1.2 minimum by default
    session = _session(lab, "mx.tls10.example", port)
    assert not session.tls and session.tls_error


def test_starttls_answers_454(lab: LabHandle) -> None:
    with LabSMTP(lab, "mx.starttls454.example") as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        with pytest.raises(smtplib.SMTPResponseException) as err:
            s.starttls(context=_permissive())
    assert err.value.smtp_code == 454


def test_greeting_421(lab: LabHandle) -> None:
    with pytest.raises(smtplib.SMTPConnectError) as err:
        LabSMTP(lab, "mx.greeting421.example")
    assert err.value.smtp_code == 421


def test_multiline_greeting(lab: LabHandle) -> None:
    address = lab.address_of("mx.multiline.example")
    with socket.create_connection((address, lab.smtp_port), timeout=5) as sock:
        f = sock.makefile("rb")
        lines = [f.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(f.readline())
    assert len(lines) == 3
    assert lines[0].startswith(b"220-mx.multiline.example")
    assert lines[-1].startswith(b"220 ")


def test_slow_greeting_arrives_late(lab: LabHandle) -> None:
    address = lab.address_of("mx.slow.example")
    with socket.create_connection((address, lab.smtp_port), timeout=5) as sock:
        sock.settimeout(0.2)  # well under the lab's 1.5 s delay
        with pytest.raises(TimeoutError):
            sock.recv(512)
        sock.settimeout(5)
        assert sock.recv(512).startswith(b"220 mx.slow.example ")


def test_tarpit_sends_nothing(lab: LabHandle) -> None:
    address = lab.address_of("mx.tarpit.example")
    with socket.create_connection((address, lab.smtp_port), timeout=0.5) as sock:
        port = sock.getsockname()[1]
        sock.sendall(b"EHLO client.test\r\n")
        with pytest.raises(TimeoutError):
            sock.recv(512)
    session = _session(lab, "mx.tarpit.example", port)
    assert session.profile == "tarpit" and not session.tls


def test_refused_host_has_nothing_listening(lab: LabHandle) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((lab.address_of("mx.refused.example"), lab.smtp_port),
                                 timeout=5)


def test_reject_rcpt_after_tls(lab: LabHandle) -> None:
    with LabSMTP(lab, "mx.rejectrcpt.example") as s:
        s.starttls(context=_strict(lab))
        s.ehlo("client.test")
        assert s.mail("probe@client.test")[0] == 250
        code, msg = s.rcpt("nobody@rejectrcpt.example")
    assert code == 550 and msg.startswith(b"5.1.1")


def test_validation_style_session_records_no_data(lab: LabHandle) -> None:
    with LabSMTP(lab, "mx.trusted.example") as s:
        s.starttls(context=_strict(lab))
        s.ehlo("client.test")
        s.mail("probe@client.test")
        assert s.rcpt("postmaster@trusted.example")[0] == 250
        s.rset()
        port = s.client_port()
    session = _session(lab, "mx.trusted.example", port)
    assert [c.split()[0].upper() for c in session.commands] == [
        "EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "RSET", "QUIT"]
    assert not session.data_received
    assert not [m for m in list(lab.messages) if m.session_id == session.id]


def test_delivered_message_is_stored_with_envelope_and_tls(lab: LabHandle) -> None:
    body = b"Subject: lab\r\n\r\n.leading dot\r\nbye\r\n"
    with LabSMTP(lab, "mail.corp.example") as s:
        s.starttls(context=_strict(lab))
        s.sendmail("alice@partner.example", ["bob@corp.example", "carol@corp.example"], body)
        port = s.client_port()
    session = _session(lab, "mail.corp.example", port)
    (msg,) = [m for m in list(lab.messages) if m.session_id == session.id]
    assert session.data_received
    assert msg.server == "mail.corp.example"
    assert msg.mail_from == "alice@partner.example"
    assert msg.rcpt_tos == ("bob@corp.example", "carol@corp.example")
    assert msg.data == body  # dot-stuffing undone
    assert msg.tls_version == session.tls_version and msg.tls_version is not None


def test_plaintext_delivery_is_recorded_as_such(lab: LabHandle) -> None:
    with LabSMTP(lab, "old.corp.example") as s:
        s.sendmail("alice@partner.example", ["bob@corp.example"], b"Subject: x\r\n\r\nx\r\n")
        port = s.client_port()
    session = _session(lab, "old.corp.example", port)
    (msg,) = [m for m in list(lab.messages) if m.session_id == session.id]
    assert not session.tls and msg.tls_version is None and msg.tls_cipher is None


def test_protocol_errors_are_answered_not_fatal(lab: LabHandle) -> None:
    with LabSMTP(lab, "mx.trusted.example") as s:
        assert s.docmd("MAIL", "FROM:<a@b.example>")[0] == 503  # before EHLO
        assert s.docmd("BOGUS")[0] == 500
        s.ehlo("client.test")
        assert s.docmd("DATA")[0] == 503  # before RCPT
        assert s.docmd("MAIL", "FROM:bad")[0] == 501
        assert s.noop()[0] == 250


def test_add_sink_serves_new_names_with_trusted_tls(lab: LabHandle) -> None:
    address, port = lab.add_sink(["sink.relay-test.example"])
    assert port == lab.smtp_port
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [lab.nameserver[0]]
    r.port = lab.nameserver[1]
    assert r.resolve("sink.relay-test.example", "A")[0].address == address
    with LabSMTP(lab, "sink.relay-test.example") as s:
        s.starttls(context=_strict(lab))
        s.sendmail("a@corp.example", ["b@relay-test.example"], b"Subject: s\r\n\r\ns\r\n")
    assert lab.wait_for(lambda: any(m.address[0] == address for m in list(lab.messages)))
    assert [x.server for x in lab.sessions_to("sink.relay-test.example")] == [
        "sink.relay-test.example"]
