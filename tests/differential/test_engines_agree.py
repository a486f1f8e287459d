"""validate's verdict predicts enforcement: for every server shape of the corpus, validate,
the relay (Enforced Strict and Relaxed), posttls-finger and a real Postfix using the exported
tables must reach the outcomes tests/differential/cases.py derives from the verdict.

All engines run once, concurrently, in the module fixture (one validate process, two relays,
one posttls-finger per host, two Postfix instances); each case's test compares its row. The
Postfix legs need Postfix and root, like tests/interop (they must not skip on CI).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from connectwiz.lab import LabHandle
from connectwiz.probe.options import NetworkOptions
from tests.interop.postfix import peer_missing

from .cases import CASE_NAMES, CASES, CAUSE, ENGINES, PEER_ENGINES, Case
from .engines import (
    POSTTLS_FINGER,
    Outcomes,
    postfix_instances,
    run_finger,
    run_postfix,
    run_relays,
    run_validate,
)

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]

PEERS_MISSING = peer_missing() or (
    "posttls-finger is not installed (it comes with postfix)" if POSTTLS_FINGER is None
    else None)


@pytest.fixture(scope="module")
def outcomes(lab: LabHandle, lab_network_options: NetworkOptions,
             tmp_path_factory: pytest.TempPathFactory) -> Outcomes:
    out = Outcomes()
    spool = tmp_path_factory.mktemp("differential")

    async def everything(instances: dict | None) -> None:
        legs = [asyncio.to_thread(run_validate, lab, CASES, out),
                run_relays(lab, CASES, lab_network_options, Path(spool), out)]
        if instances is not None:
            legs += [run_finger(lab, CASES, out), run_postfix(lab, instances, CASES, out)]
        await asyncio.gather(*legs)

    if PEERS_MISSING:
        asyncio.run(everything(None))
    else:
        with postfix_instances(lab, CASES) as instances:
            asyncio.run(everything(instances))
    return out


def _compare(out: Outcomes, case: Case, engines: tuple[str, ...]) -> None:
    expected = case.expected()
    seen = out.seen.get(case.name, {})
    wrong = [e for e in engines if seen.get(e) != expected[e]]
    assert not wrong, f"{case.name} (verdict {case.verdict}):\n" + "\n".join(
        f"  {e}: got {seen.get(e)!r}, expected {expected[e]!r} -- "
        f"{out.detail.get(case.name, {}).get(e, '')}" for e in wrong)


CORE = tuple(e for e in ENGINES if e not in PEER_ENGINES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validate_predicts_the_relay(outcomes: Outcomes, case: Case) -> None:
    _compare(outcomes, case, CORE)


@pytest.mark.parametrize("name", list(CAUSE))
def test_validate_names_the_real_cause(outcomes: Outcomes, name: str) -> None:
    assert name in CASE_NAMES
    assert CAUSE[name] in outcomes.said[name], outcomes.said[name]


@pytest.mark.peer
@pytest.mark.skipif(PEERS_MISSING is not None, reason=PEERS_MISSING or "")
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_postfix_agrees(outcomes: Outcomes, case: Case) -> None:
    _compare(outcomes, case, PEER_ENGINES)
