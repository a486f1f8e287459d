"""TLS-RPT (RFC 8460) on the sending side: count each delivery session's TLS result per
policy domain and UTC day, and once a day send each domain that publishes a ``rua`` its
aggregate report.

- Counting: ``TlsRptRecorder.count`` is handed every delivery attempt (from the spool thread
  that records it). A session is an attempt that reached the server's greeting under a
  definition that uses TLS; connection failures are not TLS sessions, and the plaintext
  retry after a failed opportunistic handshake is the same session as the failure.
- Storage: ``<spool>/tlsrpt/YYYY-MM-DD.json`` per day, replaced atomically every few
  seconds while counts change and at stop (a crash loses at most those seconds of counts);
  with ``--workers N`` every relay process counts its own sessions, worker ``i > 0`` in
  ``YYYY-MM-DD.w<i>.json``, and ``TlsRptStore.counts`` adds the parts up, so a report
  covers every worker; ``sent-YYYY-MM-DD.json`` records which report went where.
- Sending: once a UTC day is over (checked every few seconds), its reports go to every
  ``rua`` of the domain's ``_smtp._tls`` record: ``mailto:`` as a multipart/report message
  queued in this relay (null sender, as a DSN: a failed report never bounces), ``https:`` as
  a POST of the gzipped JSON (relay.tlsrpt_post, which refuses private addresses). A URI
  that failed is tried again hourly, for up to three days; one that took a report is
  recorded at once and never sent it again, also after a restart.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from connectwiz.atomic import write_atomic
from connectwiz.errors import UserError
from connectwiz.probe.dns import make_resolver
from connectwiz.probe.options import NetworkOptions
from connectwiz.probe.tlsrpt import lookup_tls_rpt
from connectwiz.relay.msglog import MessageLog
from connectwiz.relay.queuefile import QueueEntry, Recipient
from connectwiz.relay.spool import Spool, new_message_id
from connectwiz.relay.tlsrpt_post import Network, post_report

FLUSH_SECONDS = 5.0  # counts are written, and the day's end looked for, this often
RETRY_SECONDS = 3600.0  # a report URI that failed is tried again this often
RETRY_DAYS = 3  # a report not delivered to a URI after this many days is given up

Enqueue = Callable[[str, list[str], bytes, str], Awaitable[None]]  # from, rcpts, data, note


def result_type(att: dict[str, Any]) -> str | None:
    """The RFC 8460 §4.3 result type of one attempt record ("success" when TLS was
    negotiated and nothing about it was refused), or None when it was no TLS session."""
    if att.get("option") == "none":
        return None
    if att.get("policy_failure"):
        # Delivery under a published MTA-STS or DANE policy names the RFC result type
        # itself (sts-policy-fetch-error, tlsa-invalid, ...; sts16a's Attempt field).
        return str(att["policy_failure"])
    error = att.get("error") or ""
    if error.startswith("connection to") or not att.get("reply"):
        return None  # never reached the greeting: a network failure, not a TLS one
    if "certificate is not accepted" in error:
        detail = error.partition("not accepted:")[2]
        first = detail.split(";")[0]
        if "expired" in first or "not valid before" in first:
            return "certificate-expired"
        if "name mismatch" in first:
            return "certificate-host-mismatch"
        if "self-signed" in first or "unknown CA" in first or "not trusted" in first:
            return "certificate-not-trusted"
        return "validation-failure"
    if "STARTTLS" in error and ("not offer" in error or "refused" in error):
        return "starttls-not-supported"
    if "handshake failed" in error:
        return "validation-failure"
    if att.get("tls_version"):
        return "success"
    if att.get("option") == "opportunistic":
        return "starttls-not-supported"  # reached the server, which offered no STARTTLS
    return None


def _sending_ip(receiving_ip: str) -> str:
    """The local address the kernel routes to ``receiving_ip`` from (a UDP connect sends
    nothing)."""
    family = socket.AF_INET6 if ":" in receiving_ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((receiving_ip, 9))
            return str(s.getsockname()[0])
    except OSError:
        return "0.0.0.0" if family == socket.AF_INET else "::"


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


class TlsRptStore:
    """The per-day count files and sent records in ``<spool>/tlsrpt/``."""

    def __init__(self, spool_root: Path) -> None:
        self.dir = Path(spool_root) / "tlsrpt"

    def counts(self, day: str) -> dict[str, Any]:
        """The day's counts of every relay worker, added up."""
        parts = [_load(self.dir / name) for name in self._parts(day)]
        return merge_counts([p for p in parts if p])

    def part(self, day: str, worker: int = 0) -> dict[str, Any]:
        """One worker's own counts of the day (what it adds to after a restart)."""
        return _load(self.dir / part_name(day, worker))

    def sent(self, day: str) -> dict[str, Any]:
        return _load(self.dir / f"sent-{day}.json")

    def days(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted({p.name[:10] for p in self.dir.glob("????-??-??*.json")})

    def _parts(self, day: str) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.glob(f"{day}*.json"))

    def write(self, name: str, data: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / name, json.dumps(data, indent=1, sort_keys=True).encode())


def part_name(day: str, worker: int) -> str:
    return f"{day}.json" if worker == 0 else f"{day}.w{worker}.json"


def merge_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' counts of one day as one: sessions added up per policy domain,
    policy type and failure (the same result, sending and receiving host and IP)."""
    if len(parts) <= 1:
        return parts[0] if parts else {}
    merged: dict[str, Any] = {"day": parts[0]["day"], "submitter": parts[0]["submitter"],
                              "domains": {}}
    for part in parts:
        for domain, policies in part.get("domains", {}).items():
            into = merged["domains"].setdefault(domain, {})
            for policy_type, entry in policies.items():
                total = into.setdefault(policy_type, {"success": 0, "failures": {}})
                # The applied policy (policy-string, mx-host) is the same in every part:
                # the key names it.
                total.update({k: v for k, v in entry.items()
                              if k not in ("success", "failures")})
                total["success"] += entry["success"]
                for key, failure in entry["failures"].items():
                    if key in total["failures"]:
                        total["failures"][key]["failed-session-count"] += \
                            failure["failed-session-count"]
                    else:
                        total["failures"][key] = dict(failure)
    return merged


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable TLS-RPT file: {exc}") from None
    return data if isinstance(data, dict) else {}


class TlsRptRecorder:
    """Daily counts per policy domain, in memory and flushed to the store."""

    def __init__(self, store: TlsRptStore, submitter: str, worker: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.submitter, self.worker = store, submitter, worker
        self.clock = clock
        self._lock = threading.Lock()  # counted from spool threads, flushed from another
        self._days: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._ips: dict[str, str] = {}

    def count(self, attempts: Iterable[Any], now: float | None = None) -> None:
        day = day_of(now if now is not None else self.clock())
        previous: Any = None
        with self._lock:
            for att in attempts:
                if previous is not None and previous.retry_plain \
                        and previous.address == att.address:
                    previous = att
                    continue  # the plaintext retry of a failed opportunistic handshake
                previous = att
                record = att.as_record()
                kind = result_type(record)
                if kind is None:
                    continue
                self._add(day, record, kind, att.policy_string, att.mx_host)

    def _add(self, day: str, record: dict[str, Any], kind: str,
             policy_string: tuple[str, ...] = (), mx_host: tuple[str, ...] = ()) -> None:
        counts = self._days.get(day)
        if counts is None:
            try:
                counts = self.store.part(day, self.worker)
            except UserError:
                counts = {}  # a damaged count file must never hold up delivery: start over
            counts = self._days[day] = counts or {
                "day": day, "submitter": self.submitter, "domains": {}}
        # One entry per policy applied: a domain whose policy changes within the day (or
        # whose MX hosts have TLSA records of their own) gets one "policies" item for each
        # in its report (RFC 8460 §4.4). The key is the type, and a digest of the policy.
        policies = counts["domains"].setdefault(record["policy_domain"], {})
        key = record.get("policy_type") or "no-policy-found"
        if policy_string:
            digest = hashlib.sha256("\n".join((*policy_string, *mx_host)).encode())
            key += f" {digest.hexdigest()[:12]}"
        entry = policies.setdefault(key, {"success": 0, "failures": {}})
        if policy_string:
            entry["policy-string"] = list(policy_string)
        if mx_host:
            entry["mx-host"] = list(mx_host)
        if kind == "success":
            entry["success"] += 1
        else:
            ip = record["address"]
            sender = self._ips.get(ip) or self._ips.setdefault(ip, _sending_ip(ip))
            key = "|".join((kind, sender, record["host"], ip))
            failure = entry["failures"].setdefault(key, {
                "result-type": kind, "sending-mta-ip": sender,
                "receiving-mx-hostname": record["host"], "receiving-ip": ip,
                "failed-session-count": 0,
                "failure-reason-code": (record.get("error") or record.get("policy_detail")
                                        or "")[:200]})
            failure["failed-session-count"] += 1
        self._dirty.add(day)

    def flush(self) -> None:
        """Write the days whose counts changed (blocking: call from a worker thread)."""
        with self._lock:
            dirty = {d: json.loads(json.dumps(self._days[d])) for d in self._dirty}
            self._dirty.clear()
            for day in list(self._days):
                if day not in dirty and day < day_of(self.clock()):
                    del self._days[day]  # finished and written: nothing more to count
        for day, counts in dirty.items():
            self.store.write(part_name(day, self.worker), counts)


# -- the report --------------------------------------------------------------------------------


def build_report(counts: dict[str, Any], domain: str) -> dict[str, Any]:
    """The RFC 8460 §4.4 JSON report of one domain for one day of counts."""
    day, submitter = counts["day"], counts["submitter"]
    policies = []
    for key, entry in sorted(counts["domains"][domain].items()):
        failures = [_failure(f) for f in sorted(
            entry["failures"].values(),
            key=lambda f: (f["result-type"], f["receiving-mx-hostname"], f["receiving-ip"]))]
        applied: dict[str, Any] = {"policy-type": key.split()[0]}
        if entry.get("policy-string"):
            applied["policy-string"] = entry["policy-string"]
        applied["policy-domain"] = domain
        if entry.get("mx-host"):
            applied["mx-host"] = entry["mx-host"]
        policy: dict[str, Any] = {
            "policy": applied,
            "summary": {"total-successful-session-count": entry["success"],
                        "total-failure-session-count":
                            sum(f["failed-session-count"] for f in failures)},
        }
        if failures:
            policy["failure-details"] = failures
        policies.append(policy)
    return {
        "organization-name": submitter,
        "date-range": {"start-datetime": f"{day}T00:00:00Z",
                       "end-datetime": f"{day}T23:59:59Z"},
        "contact-info": f"postmaster@{submitter}",
        # One report per day, domain and submitter: the id says which, so a report printed
        # by ``connectwiz tlsrpt`` is the one that was sent.
        "report-id": f"{day}T00:00:00Z_{domain}@{submitter}",
        "policies": policies,
    }


def _failure(counted: dict[str, Any]) -> dict[str, Any]:
    """One failure-details item: the error text is a ``failure-reason-code`` (§4.4;
    ``additional-information`` is for a URI, and count files written by earlier versions
    kept the text under that name), empty fields left out."""
    out = {k: v for k, v in counted.items() if v != "" and k != "additional-information"}
    if reason := counted.get("failure-reason-code") or counted.get("additional-information"):
        out["failure-reason-code"] = reason
    return out


def report_filename(report: dict[str, Any], domain: str) -> str:
    """RFC 8460 §5.1: submitter!policy-domain!begin!end.json.gz (epoch seconds)."""
    submitter = report["organization-name"]
    start = datetime.fromisoformat(report["date-range"]["start-datetime"].replace("Z", "+00:00"))
    begin = int(start.timestamp())
    return f"{submitter}!{domain}!{begin}!{begin + 86399}.json.gz"


def report_gzip(report: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(report, indent=1).encode(), mtime=0)


def report_email(report: dict[str, Any], domain: str, to: list[str]) -> bytes:
    """RFC 8460 §5.3: multipart/report; report-type="tlsrpt" with a text part and the
    gzipped JSON as application/tlsrpt+gzip."""
    submitter = report["organization-name"]
    msg = EmailMessage()
    msg["From"] = f"TLS reports <postmaster@{submitter}>"
    msg["To"] = ", ".join(to)
    msg["Subject"] = (f"Report Domain: {domain} Submitter: {submitter} "
                      f"Report-ID: <{report['report-id']}>")
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=submitter)
    msg["TLS-Report-Domain"] = domain
    msg["TLS-Report-Submitter"] = submitter
    success = sum(p["summary"]["total-successful-session-count"] for p in report["policies"])
    failed = sum(p["summary"]["total-failure-session-count"] for p in report["policies"])
    msg.set_content(
        f"SMTP TLS report for {domain}, {report['date-range']['start-datetime'][:10]} (UTC):\n"
        f"{success} successful and {failed} failed TLS sessions from {submitter}.\n"
        "The attached file is the report in the format of RFC 8460.\n")
    msg.add_attachment(report_gzip(report), maintype="application", subtype="tlsrpt+gzip",
                       filename=report_filename(report, domain))
    msg.replace_header("Content-Type", "multipart/report")
    msg.set_param("report-type", "tlsrpt")
    return msg.as_bytes().replace(b"\n", b"\r\n")


class TlsRptSender:
    """Sends finished days' reports; ``send_due`` is safe to call at any time.

    ``clock`` (epoch seconds) says which UTC day it is; ``tick`` is how often ``run`` flushes
    counts and looks for a finished day; ``allowed`` are the networks an https: rua may
    resolve to although they are private (``--tlsrpt-allow-networks``)."""

    def __init__(self, store: TlsRptStore, options: NetworkOptions, enqueue: Enqueue,
                 log: Callable[..., None], *, allowed: tuple[Network, ...] = (),
                 clock: Callable[[], float] = time.time, tick: float = FLUSH_SECONDS) -> None:
        self.store, self.options = store, options
        self.enqueue, self.log = enqueue, log
        self.allowed, self.clock, self.tick = allowed, clock, tick
        self.passes = 0  # completed sending passes (tests wait on it)

    async def send_due(self, today: date | None = None) -> None:
        """Send what is owed for every day before ``today`` (UTC) within the retry window."""
        today = today or date.fromisoformat(day_of(self.clock()))
        oldest = (today - timedelta(days=RETRY_DAYS)).isoformat()
        days = await asyncio.to_thread(self.store.days)
        for day in days:
            if oldest <= day < today.isoformat():
                await self.send_day(day)

    async def send_day(self, day: str) -> None:
        counts = await asyncio.to_thread(self.store.counts, day)
        sent = await asyncio.to_thread(self.store.sent, day)
        resolver = make_resolver(self.options)
        for domain in sorted(counts.get("domains", {})):
            done = sent.setdefault(domain, {})
            if done and all(v.get("ok") for v in done.values()):
                continue
            rpt = await lookup_tls_rpt(domain, resolver)
            if not rpt.rua or rpt.error:
                continue  # publishes no (usable) reporting address: nothing to send
            report = build_report(counts, domain)
            for uri in rpt.rua:
                if done.get(uri, {}).get("ok"):
                    continue
                result = await self._send(uri, report, domain)
                done[uri] = {"ok": result is None, "at": _now(), "error": result or ""}
                # Recorded before the next URI: a report that went is never sent again,
                # whatever stops the relay next.
                await asyncio.to_thread(self.store.write, f"sent-{day}.json", sent)
                self.log("tlsrpt-sent" if result is None else "tlsrpt-failed", domain=domain,
                         day=day, rua=uri, reason=result)

    async def _send(self, uri: str, report: dict[str, Any], domain: str) -> str | None:
        """None when the report went (or is queued); else why not."""
        if uri.lower().startswith("mailto:"):
            # rua=mailto:a@b!10m: the size limit suffix is not part of the address
            address = unquote(uri[7:].split("?")[0]).split("!")[0]
            data = report_email(report, domain, [address])
            try:
                await self.enqueue("", [address], data,
                                   f"TLS report for {domain} ({report['report-id']})")
            except OSError as exc:
                return f"could not queue the report: {exc}"
            return None
        try:
            await post_report(uri, report_gzip(report), self.options, self.allowed)
        except (OSError, TimeoutError) as exc:
            return str(exc) or "timed out"
        return None

    async def run(self, recorder: TlsRptRecorder) -> None:
        """The relay's background task: flush counts every ``tick``; send reports as soon
        as a day is over (at start too, for days that ended while the relay was down), and
        hourly after that while a URI is still owed one."""
        sent_on, next_send = "", 0.0
        while True:
            await asyncio.to_thread(recorder.flush)
            today = day_of(self.clock())
            if today != sent_on or time.monotonic() >= next_send:
                sent_on, next_send = today, time.monotonic() + RETRY_SECONDS
                try:
                    await self.send_due()
                except (OSError, UserError) as exc:
                    self.log("tlsrpt-failed", reason=str(exc))
                self.passes += 1
            await asyncio.sleep(self.tick)


def queue_local(spool: Spool, msglog: MessageLog, mail_from: str, rcpts: list[str],
                data: bytes, note: str) -> str:
    """Queue a message this relay writes itself (blocking); returns its id."""
    entry = QueueEntry(id=new_message_id(), mail_from=mail_from,
                       recipients=[Recipient(r) for r in rcpts], received_at=time.time())
    spool.accept(entry, data)
    msglog.append(entry.id, "received", client_ip="local", helo=None, mail_from=mail_from,
                  recipients=rcpts, tls_version=None, tls_cipher=None, size=len(data),
                  result="accepted", receipt_option=None, policy=note)
    return entry.id


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
