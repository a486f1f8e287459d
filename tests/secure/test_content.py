"""Message handling without the network: content for triggers, the client header, banners,
the notification."""

from __future__ import annotations

from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage

from hypothesis import given
from hypothesis import strategies as st

from connectwiz.relay.held import token_hash
from connectwiz.relay.secure import notification
from connectwiz.relay.secure_content import add_banner, parse_content, strip_header


def _mime(plain: str, html: str | None = None, attachment: bytes | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "alice@corp.example"
    msg["To"] = "teller@bank.example"
    msg["Subject"] = "=?utf-8?q?Vertraulich_=E2=80=93_Q3?="
    msg["X-Connectwiz-Secure"] = "External Recipients"
    msg.set_content(plain)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="octet-stream",
                           filename="data.bin")
    return msg.as_bytes(policy=email_policy.SMTP)


def _parts(raw: bytes) -> dict[str, list[str]]:
    msg = message_from_bytes(raw, policy=email_policy.default)
    out: dict[str, list[str]] = {}
    for part in msg.walk():
        if not part.is_multipart():
            out.setdefault(part.get_content_type(), []).append(str(part.get_content()))
    return out


def test_parse_content_reads_decoded_subject_text_html_and_headers() -> None:
    raw = _mime("Account number 42\n", "<html><body><p>Top <b>secret</b></p></body></html>")
    content = parse_content(raw)
    assert content.subject == "Vertraulich – Q3"
    assert "Account number 42" in content.body and "Top secret" in content.body
    assert content.requested == "External Recipients"
    assert ("X-Connectwiz-Secure", "External Recipients") in content.headers


def test_parse_content_survives_garbage() -> None:
    content = parse_content(b"\xff\xfe not a message at all \r\n\r\n\x00")
    assert content.requested is None


def test_strip_header_removes_the_header_and_its_continuation_only() -> None:
    raw = (b"From: a@corp.example\r\nX-Connectwiz-Secure: All\r\n Recipients\r\n"
           b"Subject: x-connectwiz-secure: stays\r\n\r\nX-Connectwiz-Secure: body stays\r\n")
    out = strip_header(raw, "X-Connectwiz-Secure")
    assert out == (b"From: a@corp.example\r\nSubject: x-connectwiz-secure: stays\r\n\r\n"
                   b"X-Connectwiz-Secure: body stays\r\n")


def test_default_style_banner_goes_on_top_of_plain_and_html_parts_not_attachments() -> None:
    raw = _mime("Hello Bob\n", "<html><body><p>Hello Bob</p></body></html>", b"\x00\x01banner")
    out = add_banner(raw, "Sent securely by alice@corp.example")
    parts = _parts(out)
    assert parts["text/plain"][0].startswith("Sent securely by alice@corp.example")
    assert "Hello Bob" in parts["text/plain"][0]
    html = parts["text/html"][0]
    assert html.index("Sent securely by") < html.index("<p>Hello Bob")
    assert html.index("<body>") < html.index("Sent securely by")
    msg = message_from_bytes(out, policy=email_policy.default)
    [attachment] = [p for p in msg.walk() if p.get_content_disposition() == "attachment"]
    assert attachment.get_content() == b"\x00\x01banner"


def test_custom_html_banner_is_text_in_plain_parts() -> None:
    out = add_banner(_mime("Hi\n", "<p>Hi</p>"), "<div class='x'>Confidential <b>copy</b></div>")
    parts = _parts(out)
    assert parts["text/plain"][0].startswith("Confidential copy")
    assert "<div class='x'>Confidential <b>copy</b></div>" in parts["text/html"][0]


def test_a_message_without_text_parts_is_left_unchanged() -> None:
    msg = EmailMessage()
    msg["From"] = "alice@corp.example"
    msg.set_content(b"%PDF", maintype="application", subtype="pdf")
    raw = msg.as_bytes(policy=email_policy.SMTP)
    assert add_banner(raw, "banner") == raw


def test_notification_carries_link_and_expiry_but_no_content() -> None:
    state = {"expires_at": "2026-12-01T00:00:00Z",
             "definition": {"allow_reply": True, "routing": "external"}}
    link = "https://mail.corp.example/secure/m/ABC/tok"
    raw = notification("alice@corp.example", "teller@bank.example", link, state, "relay.test")
    msg = message_from_bytes(raw, policy=email_policy.default)
    assert msg["To"] == "teller@bank.example"
    assert msg["Subject"] == "Secure message from alice@corp.example"
    text = msg.get_content()
    assert link in text and "2026-12-01T00:00:00Z" in text and "reply" in text
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")


def test_token_hash_is_sha256_hex() -> None:
    assert token_hash("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


_NAMES = st.sampled_from(["From", "Subject", "X-Connectwiz-Secure", "x-connectwiz-SECURE",
                          "X-Connectwiz-Securely", "To"])
_VALUE = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20)


@given(headers=st.lists(st.tuples(_NAMES, _VALUE, st.booleans()), max_size=8),
       body=st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"\r\n")))
def test_strip_header_keeps_everything_else(headers, body) -> None:
    lines = []
    kept = []
    for name, value, folded in headers:
        block = [f"{name}: {value}".encode()] + ([b"\tmore"] if folded else [])
        lines += block
        if name.lower() != "x-connectwiz-secure":
            kept += block
    raw = b"\r\n".join([*lines, b""]) + b"\r\n" + body
    expected = b"\r\n".join([*kept, b""]) + b"\r\n" + body
    assert strip_header(raw, "X-Connectwiz-Secure") == expected
