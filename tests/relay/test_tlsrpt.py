"""TLS-RPT (RFC 8460) end to end: the relay counts each session's TLS result per policy
domain and day (kept across restarts), sends the aggregate report to the domain's https: and
mailto: ``rua`` (the mail through itself), and ``connectwiz tlsrpt`` prints what was sent."""

from __future__ import annotations

import asyncio
import email
import gzip
import ipaddress
import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email import policy as email_policy

import jsonschema
import pytest

from connectwiz.cli import main as cli_main
from connectwiz.lab.https import Page
from connectwiz.relay.tlsrpt import TlsRptStore, build_report

from .conftest import FAST, OPPORTUNISTIC, STRICT, body, make_model, send, token, wait_lab
from .tlsrpt_schema import TLSRPT_SCHEMA

pytestmark = pytest.mark.network

VALIDATOR = jsonschema.Draft202012Validator(
    TLSRPT_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
ONE_TRY = replace(FAST, backoff_min=3600, backoff_max=3600)  # a deferral is not retried
# The lab's https: report endpoint is on loopback, which the relay refuses unless allowed.
LAB_REPORTS = replace(ONE_TRY, tlsrpt_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),))
STS_TESTING_POLICY = ["version: STSv1", "mode: testing", "mx: *.sts-testing.example",
                      "max_age: 86400"]


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


async def _counts(r) -> dict:
    await asyncio.to_thread(r.relay.tlsrpt.flush)
    return await asyncio.to_thread(TlsRptStore(r.spool).counts, _today())


def _types(counts: dict, domain: str) -> set[str]:
    """Result types of the domain's sessions, under the one policy type they were counted
    for (``sts`` where the domain publishes MTA-STS, as trusted.example does)."""
    [entry] = counts["domains"][domain].values()
    return ({f["result-type"] for f in entry["failures"].values()}
            | ({"success"} if entry["success"] else set()))


async def _until(predicate, timeout: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_report_schema_rejects_what_rfc_8460_forbids() -> None:
    """The test schema is not vacuous: a wrong result type or a missing summary fails."""
    good = {"organization-name": "a", "contact-info": "b", "report-id": "c",
            "date-range": {"start-datetime": "2026-01-01T00:00:00Z",
                           "end-datetime": "2026-01-01T23:59:59Z"},
            "policies": [{"policy": {"policy-type": "no-policy-found",
                                     "policy-domain": "x.example"},
                          "summary": {"total-successful-session-count": 1,
                                      "total-failure-session-count": 0}}]}
    VALIDATOR.validate(good)
    bad_type = json.loads(json.dumps(good))
    bad_type["policies"][0]["failure-details"] = [{
        "result-type": "tls-broken", "sending-mta-ip": "127.0.0.1", "receiving-ip": "127.0.0.2",
        "failed-session-count": 1}]
    no_summary = json.loads(json.dumps(good))
    del no_summary["policies"][0]["summary"]
    assert not VALIDATOR.is_valid(bad_type)
    assert not VALIDATOR.is_valid(no_summary)
    # An MTA-STS policy without its lines and mx patterns is not the applied policy.
    bare_sts = json.loads(json.dumps(good))
    bare_sts["policies"][0]["policy"]["policy-type"] = "sts"
    assert not VALIDATOR.is_valid(bare_sts)
    bare_sts["policies"][0]["policy"].update({"policy-string": STS_TESTING_POLICY,
                                              "mx-host": ["*.sts-testing.example"]})
    VALIDATOR.validate(bare_sts)
    # Error text is a failure-reason-code; additional-information is a URI.
    text_as_uri = json.loads(json.dumps(bare_sts))
    text_as_uri["policies"][0]["failure-details"] = [{
        "result-type": "validation-failure", "sending-mta-ip": "127.0.0.1",
        "receiving-ip": "127.0.0.2", "failed-session-count": 1,
        "additional-information": "TLS required but the certificate is not accepted"}]
    assert not VALIDATOR.is_valid(text_as_uri)


async def test_sessions_counted_by_result_type_and_kept_across_restart(lab, relays) -> None:
    domains = {"trusted.example": STRICT, "expired.example": STRICT,
               "wrongname.example": STRICT, "selfsigned.example": STRICT,
               "nostarttls.example": STRICT, "tls10.example": OPPORTUNISTIC}
    model = make_model(lab, delivery=domains)
    r = await relays(model, ONE_TRY)
    tag = token()
    await send(r.port, f"a-{tag}@corp.example", [f"u-{tag}@{d}" for d in domains], body(tag))

    async def all_counted() -> bool:
        counts = await _counts(r)
        return set(counts.get("domains", {})) >= set(domains)

    await _until(all_counted)
    counts = await _counts(r)
    assert _types(counts, "trusted.example") == {"success"}
    assert _types(counts, "expired.example") == {"certificate-expired"}
    assert _types(counts, "wrongname.example") == {"certificate-host-mismatch"}
    assert _types(counts, "selfsigned.example") == {"certificate-not-trusted"}
    assert _types(counts, "nostarttls.example") == {"starttls-not-supported"}
    # Opportunistic to a TLS 1.0-only server: TLS was negotiated, the session succeeded.
    assert _types(counts, "tls10.example") == {"success"}
    failure = next(iter(
        counts["domains"]["expired.example"]["no-policy-found"]["failures"].values()))
    assert failure["receiving-mx-hostname"] == "mx.expired.example"
    assert failure["receiving-ip"] == lab.address_of("mx.expired.example")
    assert failure["sending-mta-ip"] == "127.0.0.1"
    # trusted.example publishes MTA-STS: its sessions are reported under that policy, the
    # domains that publish nothing under no-policy-found.
    [sts_key] = counts["domains"]["trusted.example"]
    assert sts_key.split()[0] == "sts"

    await r.relay.stop()  # counts are on disk; a new relay on the spool adds to them
    r2 = await relays(model, ONE_TRY, spool=r.spool)
    await send(r2.port, f"a-{tag}@corp.example", [f"v-{tag}@trusted.example"], body(tag + "b"))
    await r2.wait_status(await _last_id(r2, f"v-{tag}@trusted.example"), "delivered")
    counts = await _counts(r2)
    assert counts["domains"]["trusted.example"][sts_key]["success"] == 2


async def _last_id(r, rcpt: str) -> str:
    def find() -> str:
        for path in sorted((r.spool / "log").glob("*.jsonl"), key=lambda p: p.stat().st_mtime,
                           reverse=True):
            if rcpt in path.read_text():
                return path.stem
        raise AssertionError(f"no log for {rcpt}")
    return await asyncio.to_thread(find)


async def test_daily_report_posted_and_mailed_once_and_printed(lab, relays, capsys) -> None:
    tag = token()
    domain = f"rpt-{tag}.example"
    await asyncio.to_thread(lab.add_sink, [domain], "expired")
    path = f"/tlsrpt/{tag}"
    mailbox = f"reports-{tag}@trusted.example"
    lab.add_record(f"_smtp._tls.{domain}.", "TXT",
                   f'"v=TLSRPTv1; rua=https://reports.sts-testing.example{path},'
                   f'mailto:{mailbox}"')
    r = await relays(make_model(lab, delivery={domain: STRICT}), LAB_REPORTS)
    msg_id = await send(r.port, f"a-{tag}@corp.example", [f"u-{tag}@{domain}"], body(tag))
    await r.wait_status(msg_id, "deferred")

    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    await asyncio.to_thread(r.relay.tlsrpt.flush)
    await r.relay.tlsrpt_sender.send_due(tomorrow)

    posts = [p for p in list(lab.report_posts) if p.path == path]
    assert len(posts) == 1
    assert posts[0].content_type == "application/tlsrpt+gzip"
    posted = json.loads(gzip.decompress(posts[0].body))
    VALIDATOR.validate(posted)
    policy = posted["policies"][0]
    assert policy["policy"] == {"policy-type": "no-policy-found", "policy-domain": domain}
    assert policy["summary"] == {"total-successful-session-count": 0,
                                 "total-failure-session-count": 1}
    [failure] = policy["failure-details"]
    assert failure["result-type"] == "certificate-expired"
    assert failure["receiving-mx-hostname"] == domain
    assert failure["receiving-ip"] == lab.address_of(domain)
    assert failure["failure-reason-code"].startswith(
        "TLS required but the certificate is not accepted: certificate expired")
    assert posted["date-range"]["start-datetime"] == f"{_today()}T00:00:00Z"

    # mailto: the relay queued the report as a message and delivered it to the lab.
    assert await wait_lab(lab, lambda: any(mailbox in m.rcpt_tos for m in list(lab.messages)))
    mail = next(m for m in list(lab.messages) if mailbox in m.rcpt_tos)
    assert mail.mail_from == ""  # null sender: a report that fails never bounces
    parsed = email.message_from_bytes(mail.data, policy=email_policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "tlsrpt"
    assert parsed["TLS-Report-Domain"] == domain
    assert parsed["Subject"].startswith(f"Report Domain: {domain} Submitter: relay.corp.example")
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "application/tlsrpt+gzip"]
    assert parts[1].get_filename().startswith(f"relay.corp.example!{domain}!")
    assert json.loads(gzip.decompress(parts[1].get_content())) == posted

    # Once a day: a second run sends nothing again.
    await r.relay.tlsrpt_sender.send_due(tomorrow)
    assert len([p for p in list(lab.report_posts) if p.path == path]) == 1

    capsys.readouterr()
    assert cli_main(["tlsrpt", "--spool", str(r.spool), "--day", _today(),
                     "--domain", domain]) == 0
    out = capsys.readouterr().out
    header, _, rest = out.partition("\n")
    assert f"sent to https://reports.sts-testing.example{path}" in header
    assert f"sent to mailto:{mailbox}" in header
    assert json.loads(rest) == posted


def test_tlsrpt_command_bad_input_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "log").mkdir()
    assert cli_main(["tlsrpt", "--spool", str(tmp_path), "--day", "yesterday"]) == 2
    assert capsys.readouterr().err.strip() == \
        "connectwiz: --day 'yesterday': expected a date as YYYY-MM-DD"
    assert cli_main(["tlsrpt", "--spool", str(tmp_path), "--day", "2026-01-01",
                     "--domain", "x.example"]) == 2
    assert "no TLS sessions to x.example counted on 2026-01-01" in capsys.readouterr().err
    assert cli_main(["tlsrpt", "--spool", str(tmp_path / "nope")]) == 2


def test_damaged_count_file_does_not_stop_counting(tmp_path) -> None:
    """Counting runs inside delivery bookkeeping: a damaged file is started over, not raised."""
    from connectwiz.relay.deliver import Attempt
    from connectwiz.relay.tlsrpt import TlsRptRecorder

    store = TlsRptStore(tmp_path)
    store.dir.mkdir()
    (store.dir / f"{_today()}.json").write_text("{not json")
    recorder = TlsRptRecorder(store, "relay.example")
    ok = Attempt("mx.a.example", "127.0.0.1", 25, "Opportunistic TLS", "opportunistic",
                 "relaxed", "1.2", ["x@a.example"], tls_version="TLSv1.3", reply="220 hi",
                 outcome="delivered", policy_domain="a.example")
    recorder.count([ok])
    recorder.flush()
    assert store.counts(_today())["domains"]["a.example"]["no-policy-found"]["success"] == 1


def test_policy_types_of_one_day_are_separate_policies(tmp_path) -> None:
    """When delivery applies a published policy (sts, tlsa) part of the day, the report has
    one ``policies`` item per policy applied, each with its own counts."""
    from connectwiz.relay.deliver import Attempt
    from connectwiz.relay.tlsrpt import TlsRptRecorder, build_report

    store = TlsRptStore(tmp_path)
    recorder = TlsRptRecorder(store, "relay.example")

    def attempt(policy_type: str, error: str = "", mode: str = "enforce") -> Attempt:
        att = Attempt("mx.a.example", "127.0.0.1", 25, "Enforced TLS - Strict", "enforced",
                      "strict", "1.2", ["x@a.example"], tls_version="TLSv1.3",
                      reply="220 hi", outcome="temporary" if error else "delivered",
                      error=error, policy_type=policy_type, policy_domain="a.example")
        if policy_type == "sts":
            att.policy_string = ("version: STSv1", f"mode: {mode}", "mx: mx.a.example",
                                 "max_age: 86400")
            att.mx_host = ("mx.a.example",)
        return att

    recorder.count([attempt("no-policy-found"), attempt("sts"),
                    attempt("sts", "TLS required but the certificate is not accepted: "
                                   "name mismatch: certificate is for other.example"),
                    attempt("sts", mode="testing")])  # the policy changed later that day
    recorder.flush()
    report = build_report(store.counts(_today()), "a.example")
    VALIDATOR.validate(report)
    summaries = {(p["policy"]["policy-type"], *p["policy"].get("policy-string", [""])[1:2]):
                 p["summary"] for p in report["policies"]}
    assert summaries == {
        ("no-policy-found",): {"total-successful-session-count": 1,
                               "total-failure-session-count": 0},
        ("sts", "mode: enforce"): {"total-successful-session-count": 1,
                                   "total-failure-session-count": 1},
        ("sts", "mode: testing"): {"total-successful-session-count": 1,
                                   "total-failure-session-count": 0}}


def test_result_type_named_by_a_published_policy_wins() -> None:
    """An attempt that delivery judged under MTA-STS or DANE carries the RFC result type;
    the error-text classification is only for the bundle's own checks."""
    from connectwiz.relay.tlsrpt import result_type

    base = {"option": "enforced", "reply": "220 hi", "tls_version": "TLSv1.3",
            "error": "DANE: no TLSA record matches the certificate"}
    assert result_type({**base, "policy_failure": "tlsa-invalid"}) == "tlsa-invalid"
    assert result_type({**base, "policy_failure": ""}) == "success"


async def test_sts_report_names_the_applied_policy_and_the_refused_mx(lab, relays) -> None:
    """RFC 8460 §4.4: the ``policy`` object carries the MTA-STS policy's lines and its mx
    patterns; a failure names the MX host and IP and the result type."""
    r = await relays(make_model(lab), ONE_TRY)  # opportunistic: the published policies decide
    tag = token()
    ids = [await send(r.port, f"a-{tag}@corp.example", [f"u-{tag}@{d}"], body(tag + d))
           for d in ("sts-testing.example", "sts-mismatch.example")]
    await r.wait_status(ids[0], "delivered")
    await r.wait_status(ids[1], "deferred")
    counts = await _counts(r)

    testing = build_report(counts, "sts-testing.example")
    VALIDATOR.validate(testing)
    [policy] = testing["policies"]
    assert policy["policy"] == {"policy-type": "sts", "policy-string": STS_TESTING_POLICY,
                                "policy-domain": "sts-testing.example",
                                "mx-host": ["*.sts-testing.example"]}
    assert policy["summary"] == {"total-successful-session-count": 1,
                                 "total-failure-session-count": 0}

    mismatch = build_report(counts, "sts-mismatch.example")
    VALIDATOR.validate(mismatch)
    [policy] = mismatch["policies"]
    assert policy["policy"]["policy-string"] == [
        "version: STSv1", "mode: enforce", "mx: mx.other.example", "mx: *.mismatch.example",
        "max_age: 86400"]
    assert policy["policy"]["mx-host"] == ["mx.other.example", "*.mismatch.example"]
    [failure] = policy["failure-details"]
    assert failure["result-type"] == "validation-failure"
    assert failure["receiving-mx-hostname"] == "mx.sts-mismatch.example"
    assert failure["receiving-ip"] == lab.address_of("mx.sts-mismatch.example")
    assert "matches no mx pattern" in failure["failure-reason-code"]


async def test_https_rua_on_loopback_is_refused_by_default(lab, relays, capsys) -> None:
    """SSRF guard: a report URI resolving to loopback gets no POST unless allowed; the
    refusal is logged and shown by ``connectwiz tlsrpt``."""
    tag = token()
    domain = f"ssrf-{tag}.example"
    await asyncio.to_thread(lab.add_sink, [domain], "trusted")
    path = f"/tlsrpt/{tag}"
    lab.add_record(f"_smtp._tls.{domain}.", "TXT",
                   f'"v=TLSRPTv1; rua=https://reports.sts-testing.example{path}"')
    r = await relays(make_model(lab), ONE_TRY)  # no tlsrpt_allow_networks
    events: list[tuple[str, dict]] = []
    r.relay.log.subscribe(lambda event, fields: events.append((event, fields)))
    msg_id = await send(r.port, f"a-{tag}@corp.example", [f"u-{tag}@{domain}"], body(tag))
    await r.wait_status(msg_id, "delivered")
    await asyncio.to_thread(r.relay.tlsrpt.flush)
    await r.relay.tlsrpt_sender.send_due(datetime.now(UTC).date() + timedelta(days=1))

    assert not [p for p in list(lab.report_posts) if p.path == path]
    [(_, failed)] = [e for e in events if e[0] == "tlsrpt-failed"]
    why = (f"refused: reports.sts-testing.example resolves to "
           f"{lab.lab.policy_server.address} (loopback), not a public address")
    assert failed["domain"] == domain and failed["reason"].startswith(why)
    capsys.readouterr()
    assert cli_main(["tlsrpt", "--spool", str(r.spool), "--day", _today(),
                     "--domain", domain]) == 0
    assert f"failed to https://reports.sts-testing.example{path} at " in capsys.readouterr().out


class _Clock:
    """The relay's clock for TLS-RPT: real time plus ``offset`` seconds (a test moves it past
    midnight UTC instead of waiting for it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_relay_sends_a_finished_days_reports_by_itself_once(lab, relays) -> None:
    """The report loop of a running relay: nothing while the day lasts; once the (UTC) day
    is over, the report goes to the https: rua and, through the relay itself, to the
    mailto: rua; later passes and a restart on the same spool send nothing again."""
    tag = token()
    domain = f"loop-{tag}.example"
    await asyncio.to_thread(lab.add_sink, [domain], "selfsigned")
    path, mailbox = f"/tlsrpt/{tag}", f"reports-{tag}@trusted.example"
    lab.add_record(f"_smtp._tls.{domain}.", "TXT",
                   f'"v=TLSRPTv1; rua=https://reports.sts-testing.example{path},'
                   f'mailto:{mailbox}"')
    clock = _Clock()
    ticking = replace(LAB_REPORTS, tlsrpt_tick=0.05)
    model = make_model(lab, delivery={domain: STRICT})
    r = await relays(model, ticking, clock=clock)
    sender = r.relay.tlsrpt_sender
    msg_id = await send(r.port, f"a-{tag}@corp.example", [f"u-{tag}@{domain}"], body(tag))
    await r.wait_status(msg_id, "deferred")

    async def counted() -> bool:
        return domain in (await asyncio.to_thread(
            TlsRptStore(r.spool).counts, _today())).get("domains", {})

    await _until(counted)  # written by the relay's own flush, every tick

    def posts() -> list:
        return [p for p in list(lab.report_posts) if p.path == path]

    def mails() -> list:
        return [m for m in list(lab.messages) if mailbox in m.rcpt_tos]

    assert sender.passes == 1 and not posts()  # the pass at start: the day is not over

    clock.offset = 86400.0  # midnight UTC has passed
    assert await wait_lab(lab, lambda: len(posts()) == 1 and len(mails()) == 1, timeout=20)
    report = json.loads(gzip.decompress(posts()[0].body))
    VALIDATOR.validate(report)
    assert report["date-range"]["start-datetime"] == f"{_today()}T00:00:00Z"
    assert report["policies"][0]["failure-details"][0]["result-type"] == \
        "certificate-not-trusted"
    mailed = email.message_from_bytes(mails()[0].data, policy=email_policy.default)
    assert mailed["TLS-Report-Domain"] == domain

    # The next day's pass still looks at this day (the retry window): it sends nothing again;
    # nor does a restarted relay's first pass, on the same spool.
    done = sender.passes

    async def next_pass() -> bool:
        return sender.passes > done

    clock.offset = 2 * 86400.0
    await _until(next_pass)
    await r.relay.stop()
    r2 = await relays(model, ticking, spool=r.spool, clock=clock)

    async def first_pass() -> bool:
        return r2.relay.tlsrpt_sender.passes >= 1

    await _until(first_pass)
    assert len(posts()) == 1
    # Queued once: one message written by the relay itself carries this domain's report.
    queued = await asyncio.to_thread(
        lambda: [p for p in (r.spool / "log").glob("*.jsonl")
                 if f"TLS report for {domain}" in p.read_text()])
    assert len(queued) == 1


@pytest.mark.parametrize(("case", "failure"), [
    ("unverified", "sts-webpki-invalid"),  # the policy host's certificate is not for it
    ("unreachable", "sts-policy-fetch-error"),  # nothing listens at the policy host
    ("invalid", "sts-policy-invalid"),  # the policy served is not a policy
])
async def test_an_unusable_mta_sts_publication_is_reported_with_its_result_type(
        lab, relays, case: str, failure: str) -> None:
    """RFC 8460 §4.3.2.2: a domain whose MTA-STS publication cannot be used gets its mail as
    if it published nothing (no policy was applied), and its report says why."""
    tag = token()
    if case == "invalid":
        domain = "sts-testing.example"
    else:
        domain = f"sts-{case}-{tag}.example"
        await asyncio.to_thread(lab.add_sink, [domain], "trusted")
        zone = lab.lab.zone  # changed from this thread at once (add_record is asynchronous)
        zone.add(f"_mta-sts.{domain}.", "TXT", '"v=STSv1; id=1"')
        policy_host = lab.lab.policy_server.address if case == "unverified" \
            else lab.address_of("mx.refused.example")
        zone.add(f"mta-sts.{domain}.", "A", policy_host)
    pages = lab.lab.policy_server.pages
    kept = pages["mta-sts.sts-testing.example"]
    if case == "invalid":
        pages["mta-sts.sts-testing.example"] = Page(b"version: STSv1\r\nmode: sometimes\r\n")
    try:
        r = await relays(make_model(lab), ONE_TRY)
        msg_id = await send(r.port, f"a-{tag}@corp.example", [f"u-{tag}@{domain}"], body(tag))
        record = await r.wait_status(msg_id, "delivered")
    finally:
        pages["mta-sts.sts-testing.example"] = kept
    [attempt] = record.attempts
    assert (attempt["policy_type"], attempt["policy_failure"]) == ("no-policy-found", failure)
    assert attempt["policy_detail"].startswith("MTA-STS: ")

    report = build_report(await _counts(r), domain)
    VALIDATOR.validate(report)
    [policy] = report["policies"]
    assert policy["policy"] == {"policy-type": "no-policy-found", "policy-domain": domain}
    [detail] = policy["failure-details"]
    assert detail["result-type"] == failure
    assert detail["failure-reason-code"] == attempt["policy_detail"]


def test_workers_counts_of_one_policy_add_up_and_keep_the_policy(tmp_path) -> None:
    """With several relay workers, each counts in its own file; the report adds them up and
    still names the applied policy (policy-string, mx-host)."""
    from connectwiz.relay.deliver import Attempt
    from connectwiz.relay.tlsrpt import TlsRptRecorder, build_report

    store = TlsRptStore(tmp_path)
    for worker in (0, 1):
        recorder = TlsRptRecorder(store, "relay.example", worker)
        att = Attempt("mx.a.example", "127.0.0.1", 25, "Opportunistic TLS", "opportunistic",
                      "relaxed", "1.2", ["x@a.example"], tls_version="TLSv1.3",
                      reply="220 hi", outcome="delivered", policy_type="sts",
                      policy_domain="a.example")
        att.policy_string, att.mx_host = tuple(STS_TESTING_POLICY), ("*.sts-testing.example",)
        recorder.count([att])
        recorder.flush()
    report = build_report(store.counts(_today()), "a.example")
    VALIDATOR.validate(report)
    [policy] = report["policies"]
    assert policy["policy"]["policy-string"] == STS_TESTING_POLICY
    assert policy["summary"]["total-successful-session-count"] == 2
