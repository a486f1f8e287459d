import idna
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectwiz.policy.domains import (
    MAX_BATCH,
    InvalidDomain,
    Rejection,
    display_domain,
    is_normal_domain,
    normalize_domain,
    normalize_host,
    parse_domain_batch,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", "example.com"),
        ("  Partner.EXAMPLE.  ", "partner.example"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("ａｂｃ。com", "abc.com"),  # full-width letters and ideographic full stop
        ("mail-1.a-b.co.uk", "mail-1.a-b.co.uk"),
        ("1.example", "1.example"),  # a numeric label is fine; only the TLD may not be
    ],
)
def test_normalize_accepts(text: str, expected: str) -> None:
    assert normalize_domain(text) == expected


@pytest.mark.parametrize(
    ("text", "reason_part"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("bob@partner.example", "e-mail address"),
        ("https://partner.example", "URL"),
        ("partner.example/path", "URL or path"),
        ("*.partner.example", "wildcard"),
        ("192.0.2.1", "IP address"),
        ("[2001:db8::1]", "IP address"),
        ("2001:db8::1", "IP address"),
        ("a" * 64 + ".example", "longer than 63"),
        (".".join(["a" * 60] * 5) + ".example", "longer than 253"),
        ("localhost", "single label"),
        ("example.123", "all digits"),
        ("part_ner.example", "invalid characters"),
        ("part ner.example", "space"),
        ("-partner.example", "hyphen"),
        ("partner..example", "empty label"),
        ("partner.example..", "empty label"),
        ("xn--zz.example", "punycode"),
        ("ab--cd.example", "reserved"),
        ("a\u200db.example", "international"),
    ],
)
def test_normalize_rejects_with_reason(text: str, reason_part: str) -> None:
    with pytest.raises(InvalidDomain) as info:
        normalize_domain(text)
    assert reason_part in info.value.reason


def test_display_domain_shows_u_label() -> None:
    assert display_domain("xn--bcher-kva.example") == "bücher.example"


# Valid domains as an admin might type them, with the normal form they must come out as.
# st.text() alone almost never builds a valid domain, so the accepting branch needs these.
SCRIPTS = (
    "abcdefghijklmnopqrstuvwxyzäöüßéèçñøåłžœ",  # Latin (ß and ς stay: IDNA 2008)
    "αβγδεζηθικλμνξοπρσςτυφχψω",
    "абвгдежзийклмнопрстуфхцчшщэюя",
    "中文日本語漢字例子",
    "한국어도메인",
)
ASCII_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).filter(
    lambda label: label[2:4] != "--")


def _idna_ok(label: str) -> bool:
    try:
        return len(idna.encode(label)) <= 63
    except (idna.IDNAError, UnicodeError):
        return False


IDN_LABEL = st.sampled_from(SCRIPTS).flatmap(
    lambda script: st.text(alphabet=script + "0123456789-", min_size=1, max_size=12)
).filter(lambda label: not label.isascii() and _idna_ok(label))


@st.composite
def typed_domains(draw: st.DrawFn) -> tuple[str, str, str]:
    """(as typed, normal form, U-label form): ASCII and IDN labels, ASCII in any case,
    sometimes a trailing dot and surrounding blanks."""
    labels = draw(st.lists(ASCII_LABEL | IDN_LABEL, min_size=1, max_size=3))
    labels.append(draw(st.from_regex(r"[a-z]{2,6}", fullmatch=True) | IDN_LABEL))
    typed = [label.upper() if label.isascii() and draw(st.booleans()) else label
             for label in labels]
    text = ".".join(typed) + draw(st.sampled_from(["", "."]))
    text = draw(st.sampled_from(["", " ", "\t"])) + text + draw(st.sampled_from(["", "  "]))
    normal = ".".join(label if label.isascii() else idna.encode(label).decode()
                      for label in labels)
    return text, normal, ".".join(labels)


@given(typed_domains())
def test_valid_domains_and_idns_normalize_to_their_a_labels(
        domain: tuple[str, str, str]) -> None:
    text, normal, unicode = domain
    assert normalize_domain(text) == normal
    assert normalize_domain(normal) == normal  # the normal form is a fixed point
    assert normalize_host(text) == normal
    assert display_domain(normal) == unicode


@given(st.text() | typed_domains().map(lambda d: d[0])
       | st.tuples(typed_domains(), st.text(max_size=3), st.integers(0, 300)).map(
           lambda t: t[0][0][:t[2]] + t[1] + t[0][0][t[2]:]))
def test_normalize_never_raises_anything_else(text: str) -> None:
    try:
        result = normalize_domain(text)
    except InvalidDomain as exc:
        assert exc.reason  # every rejection says why
    else:
        assert isinstance(result, str) and result
        assert normalize_domain(result) == result


_label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", fullmatch=True)
_names = st.one_of(
    st.text(),
    st.lists(_label, min_size=2, max_size=5).map(".".join),
    st.lists(st.one_of(_label, st.text(min_size=1, max_size=8)), min_size=2, max_size=4).map(
        ".".join
    ),
)


@given(_names)
def test_normalize_is_idempotent_and_round_trips_idna(text: str) -> None:
    try:
        result = normalize_domain(text)
    except InvalidDomain:
        return
    assert normalize_domain(result) == result
    assert result == result.lower() and result.isascii()
    assert idna.encode(idna.decode(result)).decode("ascii") == result


@given(st.one_of(_names, _names.map(str.lower)))
def test_fast_path_claims_only_what_normalize_domain_leaves_unchanged(text: str) -> None:
    if is_normal_domain(text):
        assert normalize_domain(text) == text


@pytest.mark.parametrize(("text", "fast"), [
    ("partner000001.example", True), ("mail-1.a-b.co.uk", True), ("1.example", True),
    ("Partner.example", False), ("xn--bcher-kva.example", False), ("ab--c.example", False),
    ("example", False), ("10.0.0.1", False), ("partner.example.", False),
    ("a" * 64 + ".example", False), ("a.1b", False),
])
def test_fast_path_recognises_what_connectwiz_writes(text: str, fast: bool) -> None:
    assert is_normal_domain(text) is fast


def test_batch_gives_every_nonblank_line_a_verdict() -> None:
    text = "Partner.example\n\nbad_domain.example\npartner.example.\nknown.example\n  \nnew.example"
    lines = parse_domain_batch(text, existing={"known.example"})
    assert [(ln.line_no, ln.domain, ln.rejection) for ln in lines] == [
        (1, "partner.example", None),
        (3, None, Rejection.INVALID),
        (4, None, Rejection.DUPLICATE),
        (5, None, Rejection.EXISTS),
        (7, "new.example", None),
    ]
    assert lines[2].reason == "duplicate of line 1"
    assert "invalid characters" in lines[1].reason


def test_batch_rejects_beyond_the_limit_and_keeps_them_listed() -> None:
    text = "\n".join(f"d{i}.example" for i in range(MAX_BATCH + 3))
    lines = parse_domain_batch(text)
    assert len(lines) == MAX_BATCH + 3
    assert sum(ln.accepted for ln in lines) == MAX_BATCH
    over = [ln for ln in lines if ln.rejection is Rejection.OVER_LIMIT]
    assert [ln.text for ln in over] == [f"d{i}.example" for i in range(MAX_BATCH, MAX_BATCH + 3)]


def test_batch_limit_counts_only_accepted_domains() -> None:
    text = "\n".join(["bad_one"] * 5 + [f"d{i}.example" for i in range(MAX_BATCH)])
    lines = parse_domain_batch(text)
    assert sum(ln.accepted for ln in lines) == MAX_BATCH


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mail.Corp.Example", "mail.corp.example"),
        ("exchange01", "exchange01"),  # internal servers may be known by a short name
        ("192.0.2.7", "192.0.2.7"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("2001:db8:0::1", "2001:db8::1"),
    ],
)
def test_normalize_host_accepts_names_short_names_and_ips(text: str, expected: str) -> None:
    assert normalize_host(text) == expected


@pytest.mark.parametrize("text", ["", "bad_host", "10.0.0", "mail.example/25", "*.corp.example"])
def test_normalize_host_rejects(text: str) -> None:
    with pytest.raises(InvalidDomain):
        normalize_host(text)
