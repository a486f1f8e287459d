"""`connectwiz domains list|add|remove` end to end: files on disk, exit codes, messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from connectwiz.bundle import Bundle
from connectwiz.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_add_creates_the_bundle_and_list_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "b.toml"
    code, out, err = run(capsys, "domains", "add", "--bundle", str(path),
                         "Partner.Example", "bücher.example")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["added partner.example (strict)",
                                "added xn--bcher-kva.example (strict)"]
    code, out, _ = run(capsys, "domains", "list", "--bundle", str(path))
    assert code == 0
    assert out.splitlines()[0].split("\t") == ["partner.example", "strict", "not validated"]
    assert out.splitlines()[1].startswith("xn--bcher-kva.example (bücher.example)\t")
    code, out, _ = run(capsys, "domains", "list", "--json", "--bundle", str(path))
    assert [d["domain"] for d in json.loads(out)] == ["partner.example", "xn--bcher-kva.example"]


def test_relaxed_flag_may_follow_the_domains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "b.toml"
    code, out, _ = run(capsys, "domains", "add", "loose.example", "--relaxed", "--bundle",
                       str(path))
    assert (code, out) == (0, "added loose.example (relaxed)\n")
    model = Bundle.load(path).model
    assert [p.definition for p in model.delivery_policies] == ["Enforced TLS - Relaxed"]


def test_add_keeps_good_domains_and_reports_each_rejected_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "b.toml"
    code, out, err = run(capsys, "domains", "add", "--bundle", str(path),
                         "good.example", "someone@bad.example", "good.example", "*.wild.example")
    assert code == 1
    assert out == "added good.example (strict)\n"
    lines = err.splitlines()
    assert len(lines) == 3
    assert "'someone@bad.example'" in lines[0] and "e-mail address" in lines[0]
    assert "'good.example': given twice" in lines[1]
    assert "wildcards" in lines[2]
    assert [d.domain for d in Bundle.load(path).model.external_domains] == ["good.example"]


def test_add_only_bad_input_is_exit_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "b.toml"
    code, out, err = run(capsys, "domains", "add", "--bundle", str(path), "not a domain")
    assert (code, out) == (2, "")
    assert "contains a space" in err
    assert not path.exists()


def test_add_existing_domain_is_noted_not_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "b.toml"
    run(capsys, "domains", "add", "--bundle", str(path), "one.example")
    before = path.read_text(encoding="utf-8")
    code, out, err = run(capsys, "domains", "add", "--json", "--bundle", str(path), "ONE.example")
    assert code == 0
    assert json.loads(out) == {"added": [], "mode": "strict",
                               "already_configured": ["one.example"], "rejected": []}
    assert "already configured" in err
    assert path.read_text(encoding="utf-8") == before


def test_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b.toml"
    run(capsys, "domains", "add", "--bundle", str(path), "one.example", "two.example")
    code, out, err = run(capsys, "domains", "remove", "--bundle", str(path), "nope.example")
    assert code == 2 and out == ""
    assert err == "connectwiz: not an external domain of this bundle: nope.example\n"
    code, out, _ = run(capsys, "domains", "remove", "--bundle", str(path), "One.Example")
    assert (code, out) == (0, "removed one.example\n")
    model = Bundle.load(path).model
    assert [d.domain for d in model.external_domains] == ["two.example"]
    assert model.delivery_policies[0].to.specifically == ("two.example",)


def test_bundle_path_from_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "env.toml"
    monkeypatch.setenv("CONNECTWIZ_BUNDLE", str(path))
    assert run(capsys, "domains", "add", "env.example")[0] == 0
    assert "env.example" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize(("content", "words"), [
    (None, "no such file"),
    ("schema_version = 1\n[[external_domains]\n", "not valid TOML"),
    ("schema_version = 1\n[[external_domains]]\ndomian = 'x.example'\n",
     "external_domains[0].domian: unknown key 'domian' (did you mean 'domain'?)"),
])
def test_list_failures_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, words: str
) -> None:
    path = tmp_path / "b.toml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code, out, err = run(capsys, "domains", "list", "--bundle", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(f"connectwiz: {path}") and err.count("\n") == 1
    assert words in err


def test_broken_bundle_is_left_alone_by_add_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    broken = "schema_version = 1\n[organisation]\ninternal_domains = [\"acme.example\"\n"
    path.write_text(broken, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "connectwiz", "domains", "add", "--bundle",
                           str(path), "new.example"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"connectwiz: {path}:") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    assert path.read_text(encoding="utf-8") == broken


def test_concurrent_adds_never_lose_an_update(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    assert main(["domains", "add", "--bundle", str(path), "first.example"]) == 0
    names = [f"racer{i}.example" for i in range(6)]
    procs = [subprocess.Popen([sys.executable, "-m", "connectwiz", "domains", "add",
                               "--bundle", str(path), name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in names]
    won = []
    for name, proc in zip(names, procs, strict=True):
        out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            won.append(name)
            assert out == f"added {name} (strict)\n"
        else:  # refused with a clear reason, never a silent overwrite
            assert proc.returncode == 2, err
            assert ("being written by another process" in err
                    or "changed on disk since it was read" in err), err
    model = Bundle.load(path).model
    # exactly the winners' domains (in the order they saved), nothing half-written
    assert sorted(d.domain for d in model.external_domains) == sorted(["first.example", *won])
    assert set(model.delivery_policies[0].to.specifically) == {"first.example", *won}
