"""``connectwiz lab`` as a real subprocess: banner, info file, serving, clean stop."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.query
import pytest

from connectwiz.cli import main

pytestmark = pytest.mark.network


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "connectwiz", "lab", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _read_until_ready(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    out = []
    for line in proc.stdout:  # blocks until the lab has printed its example command
        out.append(line)
        if "connectwiz validate --nameserver" in line:
            return "".join(out)
    proc.wait(timeout=10)
    raise AssertionError(f"lab exited early: {proc.returncode}, {proc.stderr.read()}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_lab_command_writes_info_serves_and_stops_cleanly(tmp_path: Path, sig: int) -> None:
    info_file = tmp_path / "lab.json"
    proc = _start("--smtp-port", "0", "--write-info", str(info_file))
    try:
        banner = _read_until_ready(proc)
        info = json.loads(info_file.read_text())
        host, port = info["nameserver"].rsplit(":", 1)
        assert host == "127.0.0.1"
        assert f"--nameserver {info['nameserver']} --smtp-port {info['smtp_port']}" in banner
        assert f"--ca-file {info['ca_file']} trusted.example" in banner
        assert Path(info["ca_file"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
        assert info["domains"]["trusted.example"] == "strict"

        reply = dns.query.udp(dns.message.make_query("mx.trusted.example", "A"), host,
                              port=int(port), timeout=5)
        assert reply.answer[0][0].address == "127.0.0.10"
        with socket.create_connection(("127.0.0.10", info["smtp_port"]), timeout=5) as s:
            assert s.recv(512).startswith(b"220 ")
    finally:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert "Traceback" not in err


def test_lab_command_port_in_use_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Hold the port on the first lab SMTP address so the lab cannot bind it.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.10", 0))
        blocker.listen()
        assert main(["lab", "--smtp-port", str(blocker.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("connectwiz: cannot listen on port")
    assert "--smtp-port" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--write-info", "/nonexistent-dir/x.json"], "does not exist"),
    (["--smtp-port", "70000"], "expected 0 to 65535"),
])
def test_lab_command_rejects_bad_options(capsys: pytest.CaptureFixture[str], args: list[str],
                                         message: str) -> None:
    assert main(["lab", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
