"""WizardState: the wizard's edits, verdicts and "what changed", on a real Bundle, no UI."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from connectwiz.bundle import Bundle
from connectwiz.policy.model import EncryptionMode, ValidationStatus
from connectwiz.probe.options import NetworkOptions
from connectwiz.tui.state import WizardState, email_problem
from tests.tui.helpers import NOW, ROUTE_RESULTS, ROUTES, Setup


def state_for(path: Path) -> WizardState:
    return WizardState(Bundle.load_or_new(path), NetworkOptions(), clock=lambda: NOW)


@pytest.mark.parametrize("text", ["", "   ", "postmaster", "a@b", "a b@corp.example",
                                  "a@@corp.example"])
def test_email_problem_rejects(text: str) -> None:
    assert email_problem(text)


def test_email_problem_accepts_an_address() -> None:
    assert email_problem("postmaster@corp.example") is None


def test_nothing_is_written_until_save(bundle_path: Path) -> None:
    Setup(domains=["trusted.example"]).write(bundle_path)
    before = bundle_path.read_text()
    state = state_for(bundle_path)
    assert not state.unsaved()
    state.remove_domain("trusted.example")
    state.add_domains(["partner.example"])
    assert state.unsaved()
    assert bundle_path.read_text() == before
    state.save()
    assert not state.unsaved()
    assert [d.domain for d in Bundle.load(bundle_path).model.external_domains] == [
        "partner.example"]


def test_changes_since_load(bundle_path: Path) -> None:
    Setup(domains=["trusted.example", "selfsigned.example"]).write(bundle_path)
    state = state_for(bundle_path)
    assert state.changes().empty
    state.remove_domain("trusted.example")
    state.add_domains(["partner.example"])
    state.set_domain_mode("selfsigned.example", EncryptionMode.RELAXED)
    state.add_route("mx.corp.example", 2525)
    state.remove_route(ROUTES[2])
    changes = state.changes()
    assert changes.domains_added == ("partner.example",)
    assert changes.domains_removed == ("trusted.example",)
    assert changes.routes_added == (("mx.corp.example", 2525),)
    assert changes.routes_removed == (ROUTES[2],)
    assert changes.modes_changed == ("selfsigned.example",)


def test_route_verdicts_store_the_learned_mode(bundle_path: Path) -> None:
    Setup().write(bundle_path)
    state = state_for(bundle_path)
    assert not state.routes_ready()
    for key, result in ROUTE_RESULTS.items():
        state.record_route(key, result)
    modes = {(r.host, r.port): r.encryption_mode for r in state.model.inbound_routes}
    assert modes == {ROUTES[0]: EncryptionMode.STRICT, ROUTES[1]: EncryptionMode.RELAXED,
                     ROUTES[2]: None}
    last = state.route(ROUTES[2]).last_validation  # type: ignore[union-attr]
    assert last is not None and last.status is ValidationStatus.UNSUPPORTED and last.at == NOW
    assert [r.host for r in state.routes_blocking()] == ["old.corp.example"]
    state.remove_route(ROUTES[2])
    assert state.routes_ready()


def test_a_verdict_for_a_removed_route_is_dropped(bundle_path: Path) -> None:
    Setup().write(bundle_path)
    state = state_for(bundle_path)
    state.remove_route(ROUTES[0])
    state.record_route(ROUTES[0], ROUTE_RESULTS[ROUTES[0]])
    assert ROUTES[0] not in state.route_results
    assert state.route(ROUTES[0]) is None


def test_export_writes_toml_and_json(bundle_path: Path, tmp_path: Path) -> None:
    Setup(domains=["trusted.example"]).write(bundle_path)
    state = state_for(bundle_path)
    state.add_domains(["partner.example"])
    state.export(tmp_path / "out.toml", "toml")
    state.export(tmp_path / "out.json", "json")
    toml_domains = [d["domain"] for d in
                    tomllib.loads((tmp_path / "out.toml").read_text())["external_domains"]]
    json_domains = [d["domain"] for d in
                    json.loads((tmp_path / "out.json").read_text())["external_domains"]]
    assert toml_domains == json_domains == ["trusted.example", "partner.example"]
    assert not list(tmp_path.glob(".out.*")), "no temporary file is left behind"
    # the same file `connectwiz export -o` writes: readable by the mail team, not only by us
    assert (tmp_path / "out.json").read_text() == state.bundle.export_text("json")
    assert (tmp_path / "out.toml").stat().st_mode & 0o777 == 0o644
