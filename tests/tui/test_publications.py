"""The wizard's domain dialog shows what the domain publishes (MTA-STS, TLS-RPT, DANE) in
More, and the MTA-STS enforce warning in the verdict itself. Results come from the lab."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.widgets import Static

from connectwiz.cli import main as cli_main
from connectwiz.policy.model import EncryptionMode
from connectwiz.probe import Target, TargetResult, validate_targets
from connectwiz.tui.components.domain_dialog import DomainValidateDialog
from connectwiz.tui.labels import result_details
from connectwiz.tui.probing import TargetValidated
from tests.tui.helpers import ROUTES, Setup, wizard

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def results(lab_network_options) -> dict[str, TargetResult]:
    names = ["sts-mismatch.example", "dane-bad.example", "trusted.example",
             "sts-relaxed.example"]
    found = asyncio.run(validate_targets([Target.domain(n) for n in names], lab_network_options))
    return {r.target: r for r in found}


def test_more_detail_lists_the_publications(results):
    text = result_details(results["trusted.example"])
    assert "MTA-STS:   mode enforce, max_age 86400 s, mx mx.trusted.example" in text
    assert "TLS-RPT:   reports to mailto:tls-reports@trusted.example" in text
    assert "TLSA 3 1 1: matches the certificate; DNSSEC-authenticated" in text
    assert "WARNING" not in text
    dane = result_details(results["dane-bad.example"])
    assert "TLSA 3 1 1: does NOT match" in dane and "MTA-STS:   not published" in dane


async def test_dialog_flags_enforce_with_failing_mx(results, bundle_path: Path):
    domain = "sts-mismatch.example"
    setup = Setup(route_modes={key: EncryptionMode.STRICT for key in ROUTES}, domains=[domain])
    app = wizard(setup.write(bundle_path))
    async with app.run_test() as pilot:
        await pilot.press("enter", "n", "v")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, DomainValidateDialog)
        dialog.post_message(TargetValidated(domain, results[domain]))
        await pilot.pause()
        verdict = str(dialog.query_one("#verdict", Static).content)
        details = str(dialog.query_one("#details", Static).content)
    assert "⚠ MTA-STS policy is enforce but MX fails strict checks" in verdict
    assert "mx.sts-mismatch.example matches no mx pattern" in verdict
    assert "mx.sts-mismatch.example: matches no pattern" in details


async def test_dialog_says_a_relaxed_policy_wins_over_published_enforce(results,
                                                                       bundle_path: Path):
    domain = "sts-relaxed.example"
    path = Setup(route_modes={key: EncryptionMode.STRICT for key in ROUTES}).write(bundle_path)
    assert cli_main(["domains", "add", "--bundle", str(path), "--relaxed", domain]) == 0
    app = wizard(path)
    async with app.run_test() as pilot:
        await pilot.press("enter", "n", "v")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, DomainValidateDialog)
        dialog.post_message(TargetValidated(domain, results[domain]))
        await pilot.pause()
        verdict = str(dialog.query_one("#verdict", Static).content)
    assert "Your Enforced Relaxed policy wins over its MTA-STS enforce" in verdict
