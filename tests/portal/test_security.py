"""Unit tests of the portal's security helpers: pure logic with injected clocks, no network."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectwiz.errors import UserError
from connectwiz.portal.mailer import clean
from connectwiz.portal.security import (
    CodeBook,
    CodeResult,
    RateLimiter,
    Signer,
    ascii_filename,
    csrf_ok,
    csrf_token,
    derive_key,
    mask_address,
    safe_filename,
    sanitize_html,
)
from connectwiz.relay.held import load_secure_key, seal, unseal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


KEY = bytes(range(32))


def test_signed_value_round_trips_and_expires() -> None:
    clock = Clock()
    signer = Signer(KEY, clock)
    text = signer.dumps({"h": "ABC", "r": "x@y"}, ttl=60)
    assert signer.loads(text) == {"h": "ABC", "r": "x@y"}
    clock.now += 60
    assert signer.loads(text) is None


def test_tampered_or_foreign_signatures_are_refused() -> None:
    signer = Signer(KEY)
    text = signer.dumps({"h": "ABC"}, ttl=60)
    body, mac = text.split(".")
    forged = Signer(bytes(32)).dumps({"h": "ABC"}, ttl=60)
    for bad in (body + "." + mac[:-1] + ("A" if mac[-1] != "A" else "B"),
                body[:-2] + "xx." + mac, forged, "", None, "a.b.c", "nodot", "!!.??"):
        assert signer.loads(bad) is None, bad


@given(st.text(max_size=200))
def test_signer_never_raises_on_hostile_input(text: str) -> None:
    assert Signer(KEY).loads(text) is None


def test_keys_differ_per_purpose() -> None:
    assert derive_key(KEY, "cookies") != derive_key(KEY, "csrf")
    assert derive_key(KEY, "csrf") == derive_key(KEY, "csrf")
    assert derive_key(KEY, "csrf") != derive_key(bytes(32), "csrf")


def test_csrf_token_belongs_to_its_nonce() -> None:
    token = csrf_token(KEY, "nonce-1")
    assert csrf_ok(KEY, "nonce-1", token)
    assert not csrf_ok(KEY, "nonce-2", token)
    assert not csrf_ok(KEY, "nonce-1", token[:-1] + "0" if token[-1] != "0" else token[:-1] + "1")
    assert not csrf_ok(KEY, "nonce-1", None) and not csrf_ok(KEY, None, token)
    assert not csrf_ok(bytes(32), "nonce-1", token)


def test_rate_limiter_is_a_sliding_window_per_key() -> None:
    clock = Clock()
    limit = RateLimiter(2, 60, clock)
    assert limit.allow("a") and limit.allow("a")
    assert not limit.allow("a")
    assert limit.allow("b")  # other keys are separate
    assert limit.retry_after("a") == pytest.approx(60)
    clock.now += 30
    assert not limit.allow("a")  # refused events are not counted...
    clock.now += 30.5
    assert limit.allow("a")  # ...so the window frees up 60 s after the first
    assert limit.retry_after("b") == 0


def test_code_is_single_use() -> None:
    book = CodeBook(KEY, clock=Clock())
    code = book.issue("H|x@y")
    assert len(code) == 6 and code.isdigit()
    assert book.check("H|x@y", code) == CodeResult.OK
    assert book.check("H|x@y", code) == CodeResult.NONE


def test_three_wrong_codes_burn_it() -> None:
    book = CodeBook(KEY, clock=Clock())
    code = book.issue("s")
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    assert book.check("s", wrong) == CodeResult.WRONG
    assert book.attempts_left("s") == 2
    assert book.check("s", wrong) == CodeResult.WRONG
    assert book.check("s", wrong) == CodeResult.BURNT
    assert book.check("s", code) == CodeResult.NONE


def test_code_expires_and_a_new_one_replaces_the_old() -> None:
    clock = Clock()
    book = CodeBook(KEY, ttl=600, clock=clock)
    first = book.issue("s")
    second = book.issue("s")
    if first != second:
        assert book.check("s", first) == CodeResult.WRONG
    clock.now += 600
    assert book.check("s", second) == CodeResult.NONE


def test_code_is_bound_to_its_subject_and_spaces_are_ignored() -> None:
    book = CodeBook(KEY, clock=Clock())
    code = book.issue("a")
    other = book.issue("b")
    assert book.check("c", code) == CodeResult.NONE  # no code was issued for c
    if other != code:
        assert book.check("b", code) == CodeResult.WRONG  # a's code does not open b
    spaced = code[:3] + " " + code[3:]
    assert book.check("a", spaced) == CodeResult.OK


def test_codes_are_kept_only_as_hmacs() -> None:
    book = CodeBook(KEY, clock=Clock())
    code = book.issue("s")
    stored = repr(book._codes)
    assert code not in stored


@pytest.mark.parametrize(("name", "expected"), [
    ("report.pdf", "report.pdf"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\x\\evil.exe", "evil.exe"),
    ('a"b;c\r\nd.txt', "a_b_c d.txt"),
    ("Statement  March\t2026.pdf", "Statement March 2026.pdf"),
    (".hidden", "hidden"),
    ("", "attachment"),
    (None, "attachment"),
    ("Überweisung März.pdf", "Überweisung März.pdf"),
])
def test_safe_filename(name: str | None, expected: str) -> None:
    assert safe_filename(name) == expected


def test_safe_filename_keeps_the_extension_of_long_names() -> None:
    name = safe_filename("x" * 300 + ".pdf")
    assert len(name) == 120 and name.endswith(".pdf")


def test_sanitiser_removes_script_and_handlers_keeps_text() -> None:
    out, _ = sanitize_html(
        '<p style="x" onmouseover="e()">Hi <i>there</i></p><script>bad()</script>'
        '<form action="http://x"><input></form><a href="javascript:x()">l</a>')
    assert "Hi <i>there</i>" in out
    for bad in ("script", "onmouseover", "<form", "<input", "javascript:", "bad()"):
        assert bad not in out


def test_mask_address() -> None:
    assert mask_address("teller@bank.example") == "t****@bank.example"
    assert mask_address("a@b.example") == "a****@b.example"
    assert mask_address("nobody") == "n****"


def test_key_file_is_made_0600_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "secure.key"
    key = load_secure_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secure_key(path) == key


def test_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secure.key"
    load_secure_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(UserError, match="readable by others"):
        load_secure_key(path)
    path.write_text("not hex\n")
    os.chmod(path, 0o600)
    with pytest.raises(UserError, match="64 hex digits"):
        load_secure_key(path)


def test_sealed_content_needs_the_key_and_the_id() -> None:
    blob = seal(KEY, "ABC", b"secret body")
    assert b"secret body" not in blob
    assert unseal(KEY, "ABC", blob) == b"secret body"
    with pytest.raises(UserError, match="cannot be decrypted"):
        unseal(KEY, "ABD", blob)  # moved to another message's folder
    with pytest.raises(UserError, match="cannot be decrypted"):
        unseal(bytes(32), "ABC", blob)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(UserError, match="cannot be decrypted"):
        unseal(KEY, "ABC", tampered)
    with pytest.raises(UserError, match="not in the encrypted format"):
        unseal(KEY, "ABC", b"From: x\r\n\r\nplain")


@given(st.text(max_size=100))
def test_csrf_check_never_raises_on_hostile_input(text: str) -> None:
    assert not csrf_ok(KEY, "n", text)


def test_idle_keys_and_stale_codes_are_forgotten() -> None:
    clock = Clock()
    limit = RateLimiter(1, 60, clock)
    for n in range(10_001):
        limit.allow(f"ip{n}")
    clock.now += 61
    limit.allow("new")
    assert len(limit._events) == 1
    book = CodeBook(KEY, ttl=60, clock=clock)
    for n in range(10_001):
        book.issue(f"s{n}")
    clock.now += 61
    book.issue("fresh")
    assert list(book._codes) == ["fresh"]


@pytest.mark.parametrize("brk", ["\r\n", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028",
                                 "\u2029", "\x00", "\x7f"])
def test_header_values_the_portal_writes_have_no_line_breaks(brk: str) -> None:
    value = clean(f"Pay{brk}Bcc: x@evil.example  now")
    assert value == "Pay Bcc: x@evil.example now" and len(value.splitlines()) == 1
# -- edges found by scripts/mutation-check ---------------------------------------------------

def _signed(body: dict | list) -> str:
    """A cookie made without Signer: HMAC-SHA256 over the base64url body, no padding."""
    text = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    mac = hmac.new(KEY, text.encode(), hashlib.sha256).digest()
    return f"{text}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def test_the_mac_covers_the_body_and_bodies_are_checked() -> None:
    clock = Clock()
    signer = Signer(KEY, clock)
    assert signer.loads(_signed({"v": {"h": "X"}, "x": clock.now + 60})) == {"h": "X"}
    genuine = signer.dumps({"h": "ABC"}, ttl=60)
    forged_body = _signed({"v": {"h": "EVIL"}, "x": clock.now + 60}).split(".")[0]
    assert signer.loads(f"{forged_body}.{genuine.split('.')[1]}") is None
    for body in ([1], {"v": "text", "x": clock.now + 60}, {"v": {}, "x": "later"}, {"v": {}}):
        assert signer.loads(_signed(body)) is None, body
    assert "=" not in genuine  # cookie values carry no base64 padding


def test_lone_surrogates_are_refused_not_raised() -> None:
    assert not csrf_ok(KEY, "n", "\ud800")
    assert Signer(KEY).loads("abc.\udfff") is None


def test_derived_keys_are_stable() -> None:
    """Known answer: a change would void every cookie and code the portal has handed out."""
    assert derive_key(KEY, "cookie").hex() == (
        "cde427cced7f07334ff122a8eb9dee32cc2e90c23a44177ce57e6395610a9aa6")


def test_rate_limit_window_edges_and_retry_after_the_oldest() -> None:
    clock = Clock()
    limit = RateLimiter(2, 60, clock)
    assert limit.allow("a")
    clock.now += 10
    assert limit.allow("a") and not limit.allow("a")
    assert limit.retry_after("a") == pytest.approx(50)  # the oldest leaves first
    clock.now += 50  # exactly one window after the first event
    assert limit.allow("a")


def test_forgetting_idle_keys_keeps_the_limited_ones() -> None:
    """A flood of new keys (IP addresses) must not reset the limit of a busy one."""
    clock = Clock()
    limit = RateLimiter(1, 60, clock)
    assert limit.allow("victim") and not limit.allow("victim")
    for n in range(10_001):
        limit.allow(f"ip{n}")
    assert not limit.allow("victim")


def test_codes_use_the_whole_range_and_unknown_subjects_have_no_attempts() -> None:
    book = CodeBook(KEY, clock=Clock())
    codes = [book.issue(f"s{n}") for n in range(200)]
    assert max(int(c) for c in codes) >= 1000 and len(set(codes)) > 150
    assert book.attempts_left("nobody") == 0


@pytest.mark.parametrize(("name", "expected"), [
    ("Xmas  list.txtX", "Xmas list.txtX"),  # spaces kept, runs folded to one
    ("x" * 121, "x" * 120),
    ("x" * 300, "x" * 120),
    ("a.b" + "x" * 300 + ".pdf", "a.b" + "x" * 113 + ".pdf"),
    ("x" * 200 + "." + "y" * 50, ("x" * 200 + "." + "y" * 50)[:120]),
    ("x" * 200 + ".abcdefghij", "x" * 109 + ".abcdefghij"),
    ("x" * 200 + ".abcdefghijk", "x" * 120),
])
def test_safe_filename_truncation(name: str, expected: str) -> None:
    assert safe_filename(name) == expected


def test_header_filename_is_ascii_and_links_open_without_referrer() -> None:
    assert ascii_filename("Überweisung März?.pdf") == "_berweisung M_rz_.pdf"
    out, _ = sanitize_html('<a href="https://x.example/">x</a>')
    assert 'rel="noopener noreferrer"' in out
    assert mask_address("a@b@bank.example") == "a****@bank.example"


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4))
def test_any_value_round_trips(value: dict[str, str]) -> None:
    signer = Signer(KEY)
    assert signer.loads(signer.dumps(value, ttl=60)) == value
