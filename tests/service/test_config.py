"""service.toml beside the bundle: options for relay, portal and queue; the command line
overrides it; errors name file, line and key; ``relay --check``."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from pathlib import Path

import pytest

from connectwiz.cli import main, parse
from connectwiz.errors import UserError
from connectwiz.lab.ca import LabCA
from tests.relay.test_process import BUNDLE, RelayProcess

MINIMAL_BUNDLE = BUNDLE.format(route_host="mail.corp.example", route_port=25)


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "bundle.toml").write_text(MINIMAL_BUNDLE)
    return folder


def write(etc: Path, text: str) -> Path:
    path = etc / "service.toml"
    path.write_text(text)
    return path


def test_values_apply_and_the_command_line_wins(etc: Path) -> None:
    write(etc, '[relay]\nlisten = "0.0.0.0:25"\nmax_size = 20480000\nlog_json = true\n'
               'backoff-min = 60\n\n[portal]\npublic_url = "https://mail.corp.example/secure"\n')
    bundle = str(etc / "bundle.toml")
    args = parse(["relay", "--bundle", bundle])
    assert (args.listen, args.max_size, args.log_json, args.backoff_min) == \
        ("0.0.0.0:25", 20480000, True, 60.0)
    args = parse(["relay", "--bundle", bundle, "--listen", "127.0.0.1:2600", "--max-size", "5"])
    assert (args.listen, args.max_size) == ("127.0.0.1:2600", 5)
    assert parse(["relay", "--bundle", bundle]).listen == "0.0.0.0:25"  # defaults not kept
    assert parse(["portal", "--bundle", bundle]).public_url == "https://mail.corp.example/secure"


def test_found_through_connectwiz_bundle_and_read_by_queue(etc: Path, monkeypatch) -> None:
    write(etc, '[relay]\nspool = "/var/lib/connectwiz/spool"\nhostname = "relay.corp.example"\n')
    monkeypatch.setenv("CONNECTWIZ_BUNDLE", str(etc / "bundle.toml"))
    args = parse(["queue", "list"])
    assert (args.spool, args.hostname) == ("/var/lib/connectwiz/spool", "relay.corp.example")
    assert parse(["relay"]).spool == "/var/lib/connectwiz/spool"
    assert parse(["portal"]).spool is None  # [portal] has its own table


def test_an_explicit_config_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nothere\.toml: no such file"):
        parse(["relay", "--config", str(tmp_path / "nothere.toml")])


@pytest.mark.parametrize(("text", "expected"), [
    ('[relay]\nlisten = "0.0.0.0:25"\nmax_sise = 10\n',
     "service.toml:3: relay.max_sise: unknown option (did you mean 'max_size'?)"),
    ('[relay]\n\nmax_size = "big"\n', "service.toml:3: relay.max_size: expected an integer"),
    ('[relay]\nidle_timeout = -1\n', "service.toml:2: relay.idle_timeout: must be positive"),
    ('[relay]\nlog_json = "yes"\n', "service.toml:2: relay.log_json: expected true or false"),
    ('[relay]\nlisten = "0.0.0.0:99999"\n', "service.toml:2: relay.listen: bad port"),
    ('[relay]\ntls_cert = "/nonexistent.pem"\n',
     "service.toml:2: relay.tls_cert: no such file: /nonexistent.pem"),
    ('[relays]\nlisten = "x"\n',
     "service.toml:1: relays: unknown table (did you mean 'relay'?); expected [relay] or "
     "[portal]"),
    ('[portal]\nbehind_proxy = true\nmax_size = 10\n',
     "service.toml:3: portal.max_size: unknown option"),
    ('[relay]\nlisten = \n', "service.toml:2: not valid TOML: Invalid value"),
    ('[relay]\ncheck = true\n', "service.toml:2: relay.check: unknown option"),
])
def test_errors_name_file_line_key_and_a_suggestion(etc: Path, text: str, expected: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    write(etc, text)
    assert main(["relay", "--bundle", str(etc / "bundle.toml"), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"connectwiz: {etc / expected}")


def test_check_passes_on_a_good_setup(etc: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    ca = LabCA(tmp_path / "ca")
    cert, key = ca.issue(["relay.corp.example"])
    spool = tmp_path / "spool"
    write(etc, f'[relay]\nspool = "{spool}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
               f'hostname = "relay.corp.example"\nsecure_key = "{tmp_path / "k" / "s.key"}"\n'
               'listen = "127.0.0.1:0"\nmetrics = "127.0.0.1:9101"\n')
    assert main(["relay", "--bundle", str(etc / "bundle.toml"), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"ok    config: {etc / 'service.toml'}" in out
    assert "ok    bundle:" in out and "1 inbound routes" in out
    assert "ok    tls:" in out and "relay.corp.example" in out
    assert "will be created" in out and "configuration is ready" in out
    assert not spool.exists() and not (tmp_path / "k").exists(), "--check creates nothing"


def test_check_reports_each_problem(etc: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    ca = LabCA(tmp_path / "ca")
    now = dt.datetime.now(dt.UTC)
    cert, key = ca.issue(["relay.corp.example"], not_before=now - dt.timedelta(days=60),
                         not_after=now - dt.timedelta(days=1))
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o755)
    spool.chmod(0o755)
    secure = tmp_path / "secure.key"
    secure.write_text("00" * 32 + "\n")
    secure.chmod(0o644)
    (etc / "bundle.toml").write_text(MINIMAL_BUNDLE.replace('"relaxed"', '"relaxd"'))
    code = main(["relay", "--bundle", str(etc / "bundle.toml"), "--check", "--spool",
                 str(spool), "--tls-cert", str(cert), "--tls-key", str(key),
                 "--secure-key", str(secure), "--backoff-min", "10", "--backoff-max", "5"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  bundle:" in out and "relaxd" in out and "bundle.toml:" in out
    assert "FAIL  options: --backoff-max must not be smaller than --backoff-min" in out
    assert "FAIL  tls:" in out and "expired" in out
    assert "FAIL  spool:" in out and "chmod 700" in out
    assert "FAIL  secure key:" in out and "readable by others" in out
    assert "5 problem(s) found" in out


@pytest.mark.network
async def test_a_relay_started_from_the_config_alone(lab, etc: Path, tmp_path: Path) -> None:
    spool = tmp_path / "cfg-spool"
    host, port = lab.nameserver
    write(etc, f'[relay]\nspool = "{spool}"\nhostname = "cfg.corp.example"\n'
               f'nameserver = "{host}:{port}"\nca_file = "{lab.ca_file}"\n'
               f'smtp_port = {lab.smtp_port}\nlisten = "127.0.0.1:0"\nlog_json = true\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connectwiz", "relay",
        env={**os.environ, "CONNECTWIZ_BUNDLE": str(etc / "bundle.toml")},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    relay = RelayProcess(proc)
    try:
        listening = await relay.wait_event("listening")
        assert listening["spool"] == str(spool)
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        banner = (await reader.readline()).decode()
        writer.close()
        assert banner.startswith("220 cfg.corp.example")
    finally:
        await relay.kill()
