"""Run every engine over the corpus once, all at the same time; collect one outcome each.

- ``validate``: one ``connectwiz validate --json`` over every case (its own process).
- ``relay strict`` / ``relay relaxed``: two real relays on loopback, each with a bundle model
  that puts every corpus domain (and the IP route) under Enforced TLS Strict or Relaxed; one
  message per case to each, outcome read from the relay's message log.
- ``posttls-finger``: one run per host, ``[address]:port`` plus the MX name as the match
  argument, ``-l secure`` (chain + that name, what the relay checks), SNI = the MX name; a
  domain takes the outcome of its first host that accepts a connection (unreachable hosts are
  skipped, as every MTA does); no reachable host is "no TLS" too.
- ``Postfix strict`` / ``Postfix relaxed``: two private Postfix instances with the tables
  exported from those same two models, doing real MX lookups against the lab; one message per
  case to each, outcome read from the Postfix log.

Each outcome comes with a ``detail`` line (reason, error, log line) for the failure message.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import re
import secrets
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

from connectwiz.bundle.postfix import export_postfix
from connectwiz.lab import LabHandle
from connectwiz.lab.zones import REFUSED_PROFILE
from connectwiz.policy.model import (
    Applies,
    DeliveryDefinition,
    DeliveryOption,
    DeliveryPolicy,
    EncryptionMode,
    InboundRoute,
    Organisation,
    PolicyModel,
    Scope,
)
from connectwiz.probe.options import NetworkOptions
from connectwiz.relay.events import EventLog
from connectwiz.relay.msglog import read_record
from connectwiz.relay.server import Relay
from connectwiz.relay.settings import RelaySettings
from tests.interop.postfix import PostfixInstance, lab_resolver, running

from .cases import DEFERRED, DELIVERED, NO_TLS, NOT_VERIFIED, VERIFIED, Case

POSTTLS_FINGER = shutil.which("posttls-finger") or (
    "/usr/sbin/posttls-finger" if Path("/usr/sbin/posttls-finger").exists() else None)
INTERNAL = "corp.example"  # the route case is delivered as mail to this internal domain
WAIT = 60.0  # seconds for any one outcome; a loaded machine is slow, a hang is a failure
# One attempt per message: a deferral is final within the test (no retry for a minute).
SETTINGS = RelaySettings(hostname="relay.corp.example", backoff_min=60, backoff_max=120,
                         delivery_workers=50, shutdown_grace=2, idle_timeout=10)
MODES = {"strict": EncryptionMode.STRICT, "relaxed": EncryptionMode.RELAXED}


@dataclass(repr=False)  # pytest would print every outcome with every failing case
class Outcomes:
    """case name -> engine -> outcome, and the evidence behind each."""

    seen: dict[str, dict[str, str]] = field(default_factory=dict)
    detail: dict[str, dict[str, str]] = field(default_factory=dict)
    said: dict[str, str] = field(default_factory=dict)  # validate's reason and warnings

    def put(self, case: str, engine: str, outcome: str, detail: str) -> None:
        self.seen.setdefault(case, {})[engine] = outcome
        self.detail.setdefault(case, {})[engine] = detail


def model(cases: tuple[Case, ...], mode: str, smtp_port: int) -> PolicyModel:
    """Every domain case under Enforced TLS (strict or relaxed, TLS 1.2+); the route case is
    the internal domain's inbound route, validated at that mode."""
    definition = DeliveryDefinition(f"Enforced TLS - {mode}", DeliveryOption.ENFORCED,
                                    MODES[mode], "1.2")
    domains = tuple(c.name for c in cases if not c.route)
    routes = tuple(InboundRoute(c.name, smtp_port, MODES[mode]) for c in cases if c.route)
    return PolicyModel(
        organisation=Organisation(internal_domains=(INTERNAL,),
                                  authorized_outbound=(ipaddress.ip_network("127.0.0.0/8"),)),
        inbound_routes=routes,
        delivery_definitions=(definition,),
        delivery_policies=(DeliveryPolicy(f"{mode} to the corpus", definition.name,
                                          to=Scope(Applies.DOMAIN, domains)),),
    )


def rcpt(case: Case, tag: str) -> str:
    return f"rcpt-{tag}@{INTERNAL if case.route else case.name}"


def message(tag: str) -> bytes:
    return f"From: alice@{INTERNAL}\r\nSubject: {tag}\r\n\r\ndifferential {tag}\r\n".encode()


# -- validate ------------------------------------------------------------------------------


def run_validate(lab: LabHandle, cases: tuple[Case, ...], out: Outcomes) -> None:
    host, port = lab.nameserver
    argv = [sys.executable, "-m", "connectwiz", "validate", "--json",
            "--nameserver", f"{host}:{port}", "--smtp-port", str(lab.smtp_port),
            "--ca-file", str(lab.ca_file), "--https-port", str(lab.https_port),
            "--timeout", "5"]
    for c in cases:
        argv += ["--route", f"{c.name}:{lab.smtp_port}"] if c.route else [c.name]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT * 2, check=False)
    try:
        results = {r["target"]: r for r in json.loads(done.stdout)}
    except json.JSONDecodeError:
        raise AssertionError(f"validate printed no JSON (exit {done.returncode}): "
                             f"{done.stderr[-2000:]}") from None
    for c in cases:
        r = results[f"{c.name}:{lab.smtp_port}" if c.route else c.name]
        hosts = "; ".join(f"{h['host']} {h['status']}: {h['reason']}" for h in r["hosts"])
        out.put(c.name, "validate", r["status"], f"{r['reason']} [hosts: {hosts}]")
        out.said[c.name] = "\n".join([r["reason"], *r.get("warnings", [])])


# -- the relay -----------------------------------------------------------------------------


async def run_relays(lab: LabHandle, cases: tuple[Case, ...], options: NetworkOptions,
                     spool_root: Path, out: Outcomes) -> None:
    relays = {}
    try:
        for mode in MODES:
            m = model(cases, mode, lab.smtp_port)
            relays[mode] = Relay(lambda m=m: m, spool_root / mode, ("127.0.0.1", 0),
                                 options=options, settings=SETTINGS,
                                 log=EventLog(json_lines=True, stream=io.StringIO()))
            await relays[mode].start()
        await asyncio.gather(*(_relay_case(lab, relays[mode], spool_root / mode, mode, c, out)
                               for mode in MODES for c in cases))
    finally:
        for r in relays.values():
            await r.stop()


async def _relay_case(lab: LabHandle, relay: Relay, spool: Path, mode: str, case: Case,
                      out: Outcomes) -> None:
    tag = secrets.token_hex(6)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.address[1], start_tls=False,
                             timeout=WAIT)
    await client.connect()
    try:
        _, reply = await client.sendmail(f"alice@{INTERNAL}", [rcpt(case, tag)], message(tag))
    finally:
        client.close()
    msg_id = reply.rsplit(" ", 1)[-1]
    deadline = time.monotonic() + WAIT
    while True:  # until the first attempt is decided (a later retry is a minute away)
        record = await asyncio.to_thread(read_record, spool, msg_id)
        if record.status not in ("queued", "") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    outcome = await asyncio.to_thread(_checked, lab, record.status, tag)
    errors = "; ".join(f"{a['host']}: {a['error'] or a['reply']}" for a in record.attempts)
    out.put(case.name, f"relay {mode}", outcome, errors or record.status)


def _checked(lab: LabHandle, status: str, tag: str) -> str:
    """The engine's word for it, checked against the lab: "delivered" only if a lab server
    really holds the message (a client fooled by injected replies says 250 for nothing),
    "deferred" only if none does (nothing went out over a channel the policy refused)."""
    outcome = {"delivered": DELIVERED, "sent": DELIVERED, "deferred": DEFERRED}.get(status,
                                                                                   status)

    def landed() -> bool:
        return any(tag.encode() in m.data for m in list(lab.messages))

    if outcome == DELIVERED and not lab.wait_for(landed, timeout=10):
        return "claimed delivered, no lab server has it"
    if outcome == DEFERRED and landed():
        return "claimed deferred, a lab server has it"
    return outcome


# -- posttls-finger ------------------------------------------------------------------------

_FINGER = re.compile(r"(Verified|Trusted|Untrusted|Anonymous) TLS connection established")


async def run_finger(lab: LabHandle, cases: tuple[Case, ...], out: Outcomes) -> None:
    assert POSTTLS_FINGER is not None
    await asyncio.gather(*(_finger_case(lab, c, out) for c in cases))


async def _finger_case(lab: LabHandle, case: Case, out: Outcomes) -> None:
    seen = []
    for h in case.lab.hosts:  # preference order; the first host that accepts a connection decides
        if h.profile == REFUSED_PROFILE:
            seen.append(f"{h.name}: refused (skipped)")
            continue
        word, line = await _finger_host(lab, h.name, h.address, route=case.route)
        if word is None and "Connection refused" in line:
            seen.append(f"{h.name}: {line}")
            continue
        outcome = {"Verified": VERIFIED, "Trusted": NOT_VERIFIED,
                   "Untrusted": NOT_VERIFIED}.get(word or "", NO_TLS)
        out.put(case.name, "posttls-finger", outcome, "; ".join([*seen, f"{h.name}: {line}"]))
        return
    out.put(case.name, "posttls-finger", NO_TLS, "; ".join(seen) + " (no host reachable)")


async def _finger_host(lab: LabHandle, name: str, address: str,
                       route: bool) -> tuple[str | None, str]:
    assert POSTTLS_FINGER is not None
    argv = [POSTTLS_FINGER, "-c", "-l", "secure", "-F", str(lab.ca_file), "-p", ">=TLSv1.2",
            "-t", "10", "-T", "10", "-L", "routine,certmatch"]
    if not route:  # SNI names a host, never an address (RFC 6066)
        argv += ["-s", name]
    argv += [f"[{address}]:{lab.smtp_port}", name]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        raw, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None, "posttls-finger timed out"
    text = raw.decode(errors="replace")
    found = _FINGER.search(text)
    if found:
        return found.group(1), found.group(0)
    last = [ln for ln in text.splitlines() if ln.strip()][-1:] or ["(no output)"]
    return None, last[0].strip()


# -- Postfix -------------------------------------------------------------------------------


@contextlib.contextmanager
def postfix_instances(lab: LabHandle,
                      cases: tuple[Case, ...]) -> Iterator[dict[str, PostfixInstance]]:
    """One private Postfix per mode, with the tables exported from that mode's model."""
    roots = [Path(tempfile.mkdtemp(prefix="connectwiz-diff-postfix-")) for _ in MODES]
    resolver = lab_resolver(lab)
    domains = [c.name for c in cases if not c.route]
    instances = {}
    for (mode, root) in zip(MODES, roots, strict=True):
        root.chmod(0o755)  # the postfix user must reach its data directory below
        exported = root / "export"
        exported.mkdir()
        export = export_postfix(model(cases, mode, lab.smtp_port))
        for name, text in export.files.items():
            (exported / name).write_text(text)
        # The internal domain goes to the route's next hop, as an admin's transport_maps would.
        routes = [c for c in cases if c.route]  # one at most: the internal domain's route
        hops = {INTERNAL: f"[{routes[0].name}]:{lab.smtp_port}"} if routes else {}
        instances[mode] = PostfixInstance(root / "pf", exported, domains, lab.smtp_port,
                                          Path(lab.ca_file), resolver, next_hops=hops)
    try:
        with contextlib.ExitStack() as stack:
            for instance in instances.values():
                stack.enter_context(running(instance))
            yield instances
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


async def run_postfix(lab: LabHandle, instances: dict[str, PostfixInstance],
                      cases: tuple[Case, ...], out: Outcomes) -> None:
    await asyncio.gather(*(asyncio.to_thread(_postfix_case, lab, instance, mode, c, out)
                           for mode, instance in instances.items() for c in cases))


def _postfix_case(lab: LabHandle, instance: PostfixInstance, mode: str, case: Case,
                  out: Outcomes) -> None:
    tag = secrets.token_hex(6)
    to = rcpt(case, tag)
    with smtplib.SMTP("127.0.0.1", instance.port, timeout=WAIT) as client:
        client.sendmail(f"alice@{INTERNAL}", [to], message(tag))
    found = instance.wait_log(rf"to=<{re.escape(to)}>.*status=(\w+) (.*)", timeout=WAIT)
    out.put(case.name, f"Postfix {mode}", _checked(lab, found.group(1), tag),
            found.group(0)[:400])
