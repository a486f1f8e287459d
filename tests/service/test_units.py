"""``connectwiz install-units``: the units pass ``systemd-analyze verify`` (and its offline
security review), the starting service.toml is a valid config, an existing one is kept."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from connectwiz.cli import build_parser, main
from connectwiz.relay.config import load_config

ANALYZE = shutil.which("systemd-analyze")
UNITS = ("connectwiz-relay.service", "connectwiz-portal.service")


def connectwiz_executable() -> str:
    found = Path(sys.executable).parent / "connectwiz"
    return str(found if found.exists() else shutil.which("connectwiz"))


@pytest.fixture
def installed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["install-units", "--prefix", str(tmp_path),
                 "--executable", connectwiz_executable()]) == 0
    capsys.readouterr()
    return tmp_path


def test_units_carry_the_promised_settings(installed: Path) -> None:
    relay = (installed / "etc/systemd/system" / UNITS[0]).read_text()
    portal = (installed / "etc/systemd/system" / UNITS[1]).read_text()
    exe = connectwiz_executable()
    assert f"ExecStart={Path(exe).resolve()} relay\n" in relay
    assert f"ExecStartPre={Path(exe).resolve()} relay --check\n" in relay
    assert "ExecReload=/bin/kill -HUP $MAINPID" in relay
    for line in ("User=connectwiz", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                 "StateDirectory=connectwiz", "Environment=CONNECTWIZ_BUNDLE="):
        assert line in relay
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" not in portal.replace(
        "# serves HTTPS itself (--tls-cert): AmbientCapabilities=CAP_NET_BIND_SERVICE", "")
    assert "ProtectSystem=strict" in portal and "User=connectwiz" in portal
    assert (installed / "etc/sysusers.d/connectwiz.conf").read_text().startswith("#")


def test_the_starting_config_is_valid(installed: Path) -> None:
    parser = build_parser()
    commands = parser.parse_args(["relay"]).commands
    config = load_config(installed / "etc/connectwiz/service.toml",
                         {"relay": commands["relay"], "portal": commands["portal"]})
    assert config["relay"]["listen"] == "0.0.0.0:25"
    assert config["relay"]["spool"] == config["portal"]["spool"] == "/var/lib/connectwiz/spool"
    assert config["portal"]["behind_proxy"] is True


def test_an_existing_config_is_kept(installed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = installed / "etc/connectwiz/service.toml"
    config.write_text("[relay]\n")
    assert main(["install-units", "--prefix", str(installed),
                 "--executable", connectwiz_executable()]) == 0
    assert config.read_text() == "[relay]\n" and "kept" in capsys.readouterr().out


def test_a_missing_executable_is_a_one_line_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install-units", "--prefix", str(tmp_path),
                 "--executable", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--executable" in err


@pytest.mark.peer
@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (Debian package "
                                            "systemd, in scripts/system-packages.txt)")
def test_systemd_analyze_verify_and_security(installed: Path) -> None:
    folder = installed / "etc/systemd/system"
    paths = [str(folder / u) for u in UNITS]
    done = subprocess.run([ANALYZE, "verify", *paths], capture_output=True, text=True,
                          timeout=120, check=False)
    # verify exits 0 on unknown keys and bad values too; they only show up as messages.
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    for path in paths:
        review = subprocess.run([ANALYZE, "security", "--offline=true", path],
                                capture_output=True, text=True, timeout=120, check=False)
        level = re.search(r"Overall exposure level for \S+: ([\d.]+)", review.stdout)
        assert level, review.stdout + review.stderr
        assert float(level[1]) <= 2.5, f"{path}: exposure {level[1]} (OK is below 4)"
