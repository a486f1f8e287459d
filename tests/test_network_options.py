import pytest

from connectwiz.errors import UserError
from connectwiz.probe.options import options_from, parse_host_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("::1", ("::1", 53)),
        ("mx.example", ("mx.example", 53)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, 53) == expected


@pytest.mark.parametrize("text", ["host:0", "host:70000", "host:abc", ":25", "[::1"])
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(UserError):
        parse_host_port(text, 25)


def test_options_fall_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTWIZ_NAMESERVER", "127.0.0.1:5300")
    monkeypatch.setenv("CONNECTWIZ_SMTP_PORT", "2525")
    monkeypatch.setenv("CONNECTWIZ_TIMEOUT", "2.5")
    opts = options_from()
    assert opts.nameserver == ("127.0.0.1", 5300)
    assert (opts.smtp_port, opts.timeout, opts.concurrency) == (2525, 2.5, 50)
    assert options_from(nameserver="127.0.0.2").nameserver == ("127.0.0.2", 53)


def test_options_reject_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTWIZ_TIMEOUT", "soon")
    with pytest.raises(UserError, match="CONNECTWIZ_TIMEOUT"):
        options_from()


def test_missing_ca_file_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="no such file"):
        options_from(ca_file=str(tmp_path / "nope.pem"))


@pytest.mark.parametrize(
    "kwargs", [{"timeout": 0}, {"timeout": -1.0}, {"concurrency": 0}, {"smtp_port": 70000}]
)
def test_options_reject_out_of_range_values(kwargs: dict) -> None:
    with pytest.raises(UserError):
        options_from(**kwargs)
