"""The wizard's domain dialog shows what the domain publishes (MTA-STS, TLS-RPT, DANE) in
More, and the MTA-STS enforce warning in the verdict itself. Results come from the lab."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from textual.widgets import Static

from connectwiz.cli import main as cli_main
from connectwiz.policy.model import EncryptionMode
from connectwiz.probe import Target, TargetResult, validate_targets
from connectwiz.tui.components.domain_dialog import DomainValidateDialog
from connectwiz.tui.components.finish_warning import FinishWarningDialog
from connectwiz.tui.labels import result_details
from connectwiz.tui.probing import TargetValidated
from tests.tui.helpers import ROUTES, Setup, summary_drawn, wait_for, wizard
from tests.tui.test_mailflow import _bundle as mail_flow_bundle
from tests.tui.test_mailflow import _loaded, write_spool

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


# -- who decides TLS: the wizard asks what `explain --published` asks (tui.deciding) --------

def _bundle(path: Path, *domains: str, relaxed: bool = False) -> Path:
    Setup(route_modes={key: EncryptionMode.STRICT for key in ROUTES}).write(path)
    flag = ["--relaxed"] if relaxed else []
    assert cli_main(["domains", "add", "--bundle", str(path), *flag, *domains]) == 0
    return path


def _policy(path: Path, definition: str, domain: str) -> None:
    """A hand-written delivery policy from the organisation to ``domain``: more specific
    than the managed one (from everyone), so it wins."""
    if definition == "No TLS":
        assert cli_main(["policies", "add", "definition", "--bundle", str(path),
                         'name="No TLS"', 'option="none"']) == 0
    assert cli_main(["policies", "add", "delivery", "--bundle", str(path),
                     f'narrative="{definition} to {domain}"', f'definition="{definition}"',
                     'from={applies="internal"}',
                     f'to={{applies="domain", specifically=["{domain}"]}}']) == 0


async def _validate_in_dialog(app, pilot, domain: str) -> str:
    """Validate the first domain through its dialog (a real probe of the lab); the verdict
    once the decision is in."""
    await pilot.press("enter", "n", "v")
    await wait_for(pilot, lambda: isinstance(app.screen, DomainValidateDialog), what="dialog")
    await pilot.press("enter")  # the pre-filled postmaster@ address
    verdict = app.screen.query_one("#verdict", Static)
    # A real probe, then the MTA-STS fetch: generous on a loaded machine.
    await wait_for(pilot, lambda: "TLS decided by" in str(verdict.content), timeout=60,
                   what=f"the decision for {domain}")
    return str(verdict.content)


async def test_a_relaxed_policy_over_published_enforce_is_decided_by_the_bundle(
        bundle_path: Path, lab_network_options) -> None:
    domain = "sts-relaxed.example"
    app = wizard(_bundle(bundle_path, domain, relaxed=True), lab_network_options)
    async with app.run_test(size=(100, 40)) as pilot:
        verdict = await _validate_in_dialog(app, pilot, domain)
        await pilot.press("escape")  # the list's line under the table says the same
        detail = app.screen.query_one("#detail", Static)
        await wait_for(pilot, lambda: "TLS decided by" in str(detail.content), timeout=60,
                       what="detail")
        shown = str(detail.content)
    for text in (verdict, shown):
        assert "TLS decided by: bundle policy (Enforced TLS - Relaxed)" in text
        assert (f"{domain} publishes MTA-STS enforce, but the bundle's Enforced TLS - Relaxed "
                "wins: certificates the policy would refuse are accepted") in text


async def test_no_tls_for_an_enforce_domain_is_decided_by_the_bundle_and_warned(
        bundle_path: Path, lab_network_options) -> None:
    domain = "trusted.example"
    path = _bundle(bundle_path, domain)
    _policy(path, "No TLS", domain)
    app = wizard(path, lab_network_options)
    async with app.run_test(size=(100, 40)) as pilot:
        verdict = await _validate_in_dialog(app, pilot, domain)
        await pilot.press("escape", "f")
        await wait_for(pilot, lambda: summary_drawn(app, "1 domain"), timeout=60,
                       what="summary")
        published = app.screen.query_one("#published", Static)
        assert published.display
        summary = str(published.render())
    warning = f"{domain} publishes MTA-STS enforce, but the bundle's No TLS wins: mail goes in "
    assert "TLS decided by: bundle policy (No TLS)" in verdict and warning in verdict
    assert "Published MTA-STS enforce, overridden by the bundle" in summary
    assert warning in " ".join(summary.split())


async def test_an_opportunistic_policy_leaves_the_decision_to_published_mta_sts(
        bundle_path: Path, lab_network_options) -> None:
    domain = "sts-relaxed.example"
    path = _bundle(bundle_path, domain)
    assert cli_main(["policies", "add", "definition", "--bundle", str(path),
                     'name="Opportunistic"', 'option="opportunistic"']) == 0
    _policy(path, "Opportunistic", domain)
    app = wizard(path, lab_network_options)
    async with app.run_test(size=(100, 40)) as pilot:
        verdict = await _validate_in_dialog(app, pilot, domain)
    assert "TLS decided by: partner's MTA-STS enforce" in verdict
    assert "⚠" not in verdict.split("TLS decided by")[1]


async def test_dane_decides_with_a_dnssec_resolver(bundle_path: Path, lab_network_options,
                                                   lab) -> None:
    domain = "dane-bad.example"
    path = _bundle(bundle_path, domain)
    assert cli_main(["policies", "add", "definition", "--bundle", str(path),
                     'name="Opportunistic"', 'option="opportunistic"']) == 0
    _policy(path, "Opportunistic", domain)
    options = dataclasses.replace(lab_network_options, dnssec_resolver=lab.nameserver)
    app = wizard(path, options)
    async with app.run_test(size=(100, 40)) as pilot:
        verdict = await _validate_in_dialog(app, pilot, domain)
    assert "TLS decided by: partner's DANE" in verdict


async def test_mail_flow_shows_the_decision_and_looks_again_after_relaxed(
        bundle_path: Path, tmp_path: Path, lab_network_options) -> None:
    app = wizard(mail_flow_bundle(bundle_path), lab_network_options)
    app.spool = write_spool(tmp_path / "spool")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("m")
        screen = await _loaded(pilot)
        row = [f.domain for f in screen.flows].index("trusted.example")
        screen.query_one("DataTable").move_cursor(row=row)
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, DomainValidateDialog), what="dialog")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "trusted.example" in app.state.decisions, timeout=60,
                       what="the decision")
        await pilot.press("escape")
        detail = screen.query_one("#detail", Static)
        await wait_for(pilot, lambda: app.screen is screen and "TLS decided by: bundle policy "
                       "(Enforced TLS - Strict)" in str(detail.content), what="the decision")
        await pilot.press("r")  # Relaxed: the other domains would bounce, Finish anyway
        await wait_for(pilot, lambda: isinstance(app.screen, FinishWarningDialog),
                       what="the Finish warning")
        await pilot.press("a")
        await wait_for(pilot, lambda: "the bundle's Enforced TLS - Relaxed wins"
                       in str(detail.content), timeout=60, what="the decision looked up again")
