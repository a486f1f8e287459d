"""`connectwiz validate` end to end against the lab: output, JSON, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from connectwiz.cli import main

pytestmark = pytest.mark.network


def test_all_supporting_tls_exits_0(lab_cli_args, capsys):
    assert main(["validate", *lab_cli_args, "trusted.example", "selfsigned.example"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("✔ trusted.example: Supports TLS — Strict — TLSv1.")
    assert lines[1].startswith("✔ selfsigned.example: Supports TLS — Relaxed — ")
    assert "self-signed" in lines[1] and len(lines) == 2


def test_one_unsupported_exits_1(lab_cli_args, capsys):
    assert main(["validate", *lab_cli_args, "trusted.example", "nostarttls.example"]) == 1
    out = capsys.readouterr().out
    assert "✖ nostarttls.example: TLS Not Supported — STARTTLS not offered" in out


def test_error_is_marked_and_exits_1(lab_cli_args, capsys):
    assert main(["validate", *lab_cli_args, "nxdomain.example"]) == 1
    assert capsys.readouterr().out.startswith("! nxdomain.example: Error — domain does not exist")


def test_json_output_is_the_contract(lab_cli_args, lab, capsys):
    code = main(["validate", "--json", *lab_cli_args, "--route",
                 f"mail.corp.example:{lab.smtp_port}", "BÜCHER.example", "mixed.example"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["target"] for d in data] == [f"mail.corp.example:{lab.smtp_port}",
                                           "xn--bcher-kva.example", "mixed.example"]
    assert [d["kind"] for d in data] == ["route", "domain", "domain"]
    # mixed.example: Enforced Strict delivers through mx1; the weaker hosts are warnings.
    assert [d["status"] for d in data] == ["strict", "strict", "strict"]
    assert [w.split()[0] for w in data[2]["warnings"]] == ["mx2.mixed.example",
                                                           "mx3.mixed.example"]
    assert data[0]["warnings"] == [] and data[1]["warnings"] == []
    assert [h["preference"] for h in data[2]["hosts"]] == [10, 20, 30]
    assert data[1]["hosts"][0]["rcpt"] is None


def test_verbose_shows_hosts_and_certificate(lab_cli_args, capsys):
    assert main(["validate", "-v", *lab_cli_args, "wrongname.example"]) == 0
    out = capsys.readouterr().out
    assert "mx.wrongname.example" in out and "(preference 10)" in out
    assert "names:     not-this-host.example" in out
    assert "issuer:    CN=connectwiz lab CA" in out and "key:       EC secp256r1 256 bits" in out


def test_email_shows_rcpt_reply_in_verbose(lab_cli_args, capsys):
    assert main(["validate", "-v", "--email", "x@partner.example", *lab_cli_args,
                 "rejectrcpt.example"]) == 0
    assert "RCPT TO:   550" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "nothing to validate"),
        (["not a domain"], "invalid domain 'not a domain': contains a space"),
        (["user@partner.example"], "looks like an e-mail address"),
        (["--route", "mail.example:99999"], "bad port"),
        (["--email", "nobody", "trusted.example"], "--email 'nobody'"),
    ],
)
def test_bad_input_exits_2_with_one_line(lab_cli_args, capsys, argv, message):
    assert main(["validate", *lab_cli_args, *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("connectwiz: ") and message in captured.err
    assert captured.err.count("\n") == 1


def test_ca_file_without_certificates_exits_2(lab_cli_args, tmp_path, capsys):
    bogus = tmp_path / "not-a-ca.pem"
    bogus.write_text("hello\n")
    argv = list(lab_cli_args)
    argv[argv.index("--ca-file") + 1] = str(bogus)
    assert main(["validate", *argv, "trusted.example"]) == 2
    assert "no PEM certificate" in capsys.readouterr().err


def test_real_process_keeps_stderr_clean_when_not_a_terminal(lab_cli_args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTWIZ_")}
    proc = subprocess.run(
        [sys.executable, "-m", "connectwiz", "validate", "--json", *lab_cli_args,
         "trusted.example"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress display when stderr is not a TTY
    assert json.loads(proc.stdout)[0]["status"] == "strict"


def test_progress_line_goes_to_a_terminal_only(lab_cli_args, monkeypatch, capsys):
    class Tty:
        def __init__(self) -> None:
            self.text = ""

        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> int:
            self.text += text
            return len(text)

        def flush(self) -> None:
            pass

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert main(["validate", *lab_cli_args, "trusted.example", "selfsigned.example"]) == 0
    assert "validated 1/2: " in tty.text and "validated 2/2: " in tty.text
    assert tty.text.endswith("\r\033[K")  # the line is cleared before the results print
    assert "validated" not in capsys.readouterr().out


def test_marks_fall_back_to_ascii_when_the_terminal_cannot_show_them():
    import io

    from connectwiz.commands.validate import _write

    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    _write(out, "✔ partner.example: Supports TLS — Strict — ok")
    _write(out, "✖ bücher.example: TLS Not Supported — STARTTLS not offered")
    out.seek(0)
    assert out.read().splitlines() == [
        "+ partner.example: Supports TLS - Strict - ok",
        "x b?cher.example: TLS Not Supported - STARTTLS not offered",
    ]
