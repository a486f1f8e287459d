"""``connectwiz portal`` as a process: HTTPS with --tls-cert/--tls-key, and usage errors."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest

from connectwiz.cli import build_parser
from connectwiz.cli import main as cli_main
from connectwiz.commands.portal import config_from
from connectwiz.commands.relay import settings_from
from connectwiz.errors import UserError
from connectwiz.lab.ca import LabCA
from connectwiz.portal.app import Portal, is_loopback
from connectwiz.probe.options import NetworkOptions
from connectwiz.relay.held import load_secure_key
from tests.portal.conftest import READER, hold, mime, png

pytestmark = pytest.mark.network


async def test_serves_https_with_secure_cookies_and_stops_on_sigterm(tmp_path: Path) -> None:
    ca = LabCA(tmp_path / "ca")
    cert, key = ca.issue(["localhost"])
    spool = tmp_path / "spool"
    key_file = tmp_path / "keys" / "secure.key"
    held, tokens = hold(spool, mime("cli"), key_file=key_file)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connectwiz", "portal", "--listen", "127.0.0.1:0",
        "--spool", str(spool), "--public-url", "https://localhost/secure",
        "--secure-key", str(key_file), "--tls-cert", str(cert), "--tls-key", str(key),
        "--relay", "127.0.0.1:9", "--hostname", "portal.test",
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        port = re.search(r"\blistening\b.* port=(\d+)", line)
        assert port, line
        ctx = ssl.create_default_context(cafile=str(ca.ca_file))
        connector = aiohttp.TCPConnector(ssl=ctx)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"https://localhost:{port.group(1)}/secure/m/{held}/{tokens[READER]}"
            async with session.get(url) as resp:
                page = await resp.text()
                assert resp.status == 200 and "Send me a code" in page
                assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
                cookie = resp.headers["Set-Cookie"]
                assert "Secure" in cookie and "HttpOnly" in cookie
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    rest = (await proc.stderr.read()).decode()
    assert tokens[READER] not in line + rest


@pytest.mark.parametrize(("argv", "message"), [
    (["--insecure-cookies", "--public-url", "https://mail.example.com/secure"],
     "only for http://127.0.0.1"),
    (["--tls-cert", "x.pem"], "go together"),
    (["--public-url", "ftp://x/secure"], "give an http(s) URL"),
    (["--spool", "/nonexistent/spool"], "no Secure Messaging store"),
    # Browsers drop Secure cookies on http://: every form would fail after starting.
    (["--public-url", "http://mail.example.com/secure"], "recipients must open https://"),
])
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
                      ) -> None:
    assert cli_main(["portal", "--spool", "/nonexistent/spool", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("connectwiz: ") and message in err and "Traceback" not in err


def test_relay_refuses_a_secure_key_others_can_read(tmp_path: Path) -> None:
    key = tmp_path / "secure.key"
    args = build_parser().parse_args(["relay", "--secure-key", str(key)])
    assert settings_from(args, NetworkOptions()).secure_key == str(key)  # made on first use
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    key.chmod(0o640)
    with pytest.raises(UserError, match="readable by others"):
        settings_from(args, NetworkOptions())


def test_portal_never_creates_a_key_and_refuses_one_that_cannot_open_held_mail(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool = tmp_path / "spool"
    relay_key = tmp_path / "relay.key"
    hold(spool, mime("k1"), key_file=relay_key)
    base = ["portal", "--spool", str(spool), "--public-url", "http://127.0.0.1/secure",
            "--listen", "127.0.0.1:0"]
    missing = tmp_path / "typo.key"
    assert cli_main([*base, "--secure-key", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err
    assert not missing.exists()  # it used to be created: a new key that opens nothing
    other = tmp_path / "other.key"
    load_secure_key(other)
    assert cli_main([*base, "--secure-key", str(other)]) == 2
    err = capsys.readouterr().err
    assert "cannot be decrypted" in err and err.count("\n") == 1


def test_relay_with_a_portal_url_makes_the_key_at_start(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    args = build_parser().parse_args(["relay", "--portal-url", "https://x.example/secure"])
    settings_from(args, NetworkOptions())
    assert (tmp_path / "config" / "connectwiz" / "secure.key").is_file()


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.0.2.10", False)])
def test_behind_proxy_warns_unless_on_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_portal_pages_carry_the_bundles_organisation_name_and_logo(tmp_path: Path) -> None:
    (tmp_path / "logo.png").write_bytes(png(4, 4, (0, 0, 0)))
    bundle = tmp_path / "bundle.toml"
    bundle.write_text('schema_version = 1\n[organisation]\ninternal_domains = ["corp.example"]\n'
                      'name = "Corp  Bank"\nlogo = "logo.png"\n')
    load_secure_key()
    (tmp_path / "spool" / "secure").mkdir(parents=True)
    args = build_parser().parse_args(["portal", "--bundle", str(bundle), "--spool",
                                      str(tmp_path / "spool"), "--public-url",
                                      "http://127.0.0.1/secure", "--insecure-cookies"])
    config = config_from(args)
    assert config.organisation == "Corp Bank" and config.logo == tmp_path / "logo.png"
    assert Portal(config).logo == (png(4, 4, (0, 0, 0)), "image/png")
    (tmp_path / "logo.png").write_text("<svg onload=alert(1)>")
    with pytest.raises(UserError, match="give a PNG or JPEG"):
        Portal(config)
    bundle.write_text(f'schema_version = 1\n[organisation]\nname = "{"x" * 101}"\n')
    with pytest.raises(UserError, match="at most 100 characters"):
        config_from(args)


def test_portal_takes_the_wording_from_the_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.toml"
    bundle.write_text('schema_version = 2\n[organisation]\ninternal_domains = ["corp.example"]\n'
                      '[secure_messaging]\naccent_colour = "#aa0000"\n'
                      'code_subject = "Your {organisation} code"\n')
    args = build_parser().parse_args(["portal", "--bundle", str(bundle), "--spool",
                                      str(tmp_path / "spool"), "--public-url",
                                      "http://127.0.0.1/secure", "--insecure-cookies"])
    wording = config_from(args).wording
    assert wording.accent_colour == "#aa0000" and wording.code_subject == "Your {organisation} code"
