"""Shared fixtures.

``lab``: one lab for the whole test session (CA, DNS on 127.0.0.1, SMTP servers on
127.0.0.10+), running in a background thread so sync tests, async tests and Textual apps
can all use it. It is a :class:`connectwiz.lab.LabHandle`: ``nameserver``, ``smtp_port``,
``ca_file``, ``ca``, ``domains`` (name -> LabDomain with ``expected`` verdict and
``reason``), ``routes``, ``expected_routes``, live ``sessions``/``messages``,
``sessions_to(host)``, ``address_of(host)``, ``wait_for(predicate, timeout)``,
``add_sink(names)``. The lab is shared: find your own sessions (e.g. by client port or by
a server you added with ``add_sink``) rather than counting all of them.

``lab_network_options``: NetworkOptions pointing at the lab, timeout 3 s (the slow lab
servers greet after 1.5 s; tarpit and DNS-timeout cases fail after 3 s); ``lab_cli_args``:
the same as command-line options, with the CONNECTWIZ_* variables unset.

``event_log``: the event log for relays a test starts (``event_log.log``), written to a file
in the test's folder rather than to stderr, where lines a relay logs between tests would
land in pytest's output; ``event_log.events()`` reads it back, and a failing test's report
shows it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connectwiz.lab import LabHandle, run_in_thread
from connectwiz.probe.options import NetworkOptions
from connectwiz.relay.events import EventLog

LAB_TIMEOUT = 3.0


@pytest.fixture(scope="session")
def lab() -> Iterator[LabHandle]:
    handle = run_in_thread(smtp_port=0)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def lab_network_options(lab: LabHandle) -> NetworkOptions:
    return NetworkOptions(nameserver=lab.nameserver, smtp_port=lab.smtp_port,
                          ca_file=lab.ca_file, timeout=LAB_TIMEOUT,
                          greeting_timeout=LAB_TIMEOUT, concurrency=50,
                          https_port=lab.https_port)


@pytest.fixture
def lab_cli_args(lab: LabHandle, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The same settings as command-line options (a fresh list), CONNECTWIZ_* variables unset."""
    for var in ("NAMESERVER", "SMTP_PORT", "CA_FILE", "TIMEOUT", "GREETING_TIMEOUT",
                "CONCURRENCY", "HTTPS_PORT"):
        monkeypatch.delenv(f"CONNECTWIZ_{var}", raising=False)
    host, port = lab.nameserver
    return ["--nameserver", f"{host}:{port}", "--smtp-port", str(lab.smtp_port),
            "--ca-file", str(lab.ca_file), "--https-port", str(lab.https_port),
            "--timeout", str(LAB_TIMEOUT), "--greeting-timeout", str(LAB_TIMEOUT)]


EVENT_LOG = pytest.StashKey[Path]()


@dataclass(frozen=True)
class EventLogFile:
    path: Path
    log: EventLog

    def text(self) -> str:
        return self.path.read_text("utf-8")

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines()]


@pytest.fixture
def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLogFile]:
    path = tmp_path / "relay-events.jsonl"
    with path.open("a", encoding="utf-8") as stream:
        request.node.stash[EVENT_LOG] = path  # for the report of a failing test
        yield EventLogFile(path, EventLog(json_lines=True, stream=stream))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test's report shows its relays' event log (``event_log``).

    On CI, a test marked ``peer`` (it needs a real Postfix, Chromium, slapd or strace) must
    not skip: .ci/run installs those peers, so a skip there means the install step broke and
    the interop coverage silently vanished."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    events = item.stash.get(EVENT_LOG, None)
    if report.failed and events is not None and events.exists():
        report.sections.append((f"relay event log ({report.when})", events.read_text("utf-8")))
    if report.skipped and os.environ.get("CI") and item.get_closest_marker("peer"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, where its peer must be installed: {reason}"
