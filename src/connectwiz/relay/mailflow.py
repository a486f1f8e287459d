"""Mail flow per partner domain, from the message log (``<spool>/log/*.jsonl``): recipients
delivered, deferred and bounced in the last 24 hours and 7 days, the last TLS failure, and
the messages waiting in the deferred queue. The wizard's Mail flow step shows it.

A recipient counts once per window for each fate it had there (a message deferred five
times counts once as deferred). Reading is incremental: a ``FlowScanner`` keeps what it
learned from each file with the file's size and modification time, and a second scan reads
only files that changed; files not touched for 7 days are skipped on their time alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from connectwiz.errors import UserError
from connectwiz.relay.tlsrpt import result_type

DAY, WEEK = timedelta(days=1), timedelta(days=7)
FATES = ("delivered", "deferred", "bounced")
_FATE_OF = {"delivered": "delivered", "deferred": "deferred", "bounced": "bounced",
            "expired": "bounced"}


class Deferred(NamedTuple):
    """A message waiting for another attempt at one domain."""

    id: str
    mail_from: str
    recipients: tuple[str, ...]
    received_at: str
    attempts: int
    reason: str


@dataclass(slots=True)
class DomainFlow:
    domain: str
    day: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FATES, 0))
    week: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FATES, 0))
    last_failure: str = ""  # "<RFC 8460 result type>: <what happened>"
    last_failure_at: str = ""
    deferred: list[Deferred] = field(default_factory=list)


class _FileFacts(NamedTuple):
    """What one log file contributes: (domain, fate, at) per recipient and fate, the last
    TLS failure per domain, and the deferred entries if the message is deferred now.
    Tuples of strings only: the garbage collector stops tracking them, so 100,000 files
    of facts do not make its full collections (which hold up the wizard) long."""

    fates: tuple[tuple[str, str, str], ...]
    failures: tuple[tuple[str, str, str], ...]  # domain, at, text
    deferred: tuple[tuple[str, Deferred], ...]


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _iso(when: datetime) -> str:
    """The message log's timestamp format: ISO strings in it compare as times do."""
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _facts(msg_id: str, text: str) -> _FileFacts:
    latest: dict[tuple[str, str], str] = {}  # (recipient, fate) -> last time
    failures: dict[str, tuple[str, str]] = {}
    pending: dict[str, str] = {}  # recipient -> last deferral reason, until another fate
    received: dict[str, Any] = {}
    attempts = 0
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a torn last line after a crash
        kind, at = event.get("event"), event.get("at", "")
        if kind == "received":
            received = event
        elif kind == "attempt":
            attempts += 1
            why = result_type(event)
            if why not in (None, "success"):
                domain = event.get("policy_domain") or _domain(
                    (event.get("recipients") or [""])[0])
                # A published policy not met on a delivered attempt (MTA-STS testing, a policy
                # that could not be fetched) says why in policy_detail, not in error.
                detail = event.get("error") or event.get("policy_detail") or event.get("reply")
                failures[domain] = (at, f"{why}: {detail}")
        elif kind in _FATE_OF:
            fate = _FATE_OF[kind]
            for rcpt in event.get("recipients", []):
                latest[(rcpt, fate)] = at
                if fate == "deferred":
                    pending[rcpt] = event.get("reason", "")
                else:
                    pending.pop(rcpt, None)
        elif kind in ("held", "deleted"):
            for rcpt in event.get("recipients", []):
                pending.pop(rcpt, None)
    by_domain: dict[str, list[str]] = {}
    for rcpt in pending:
        by_domain.setdefault(_domain(rcpt), []).append(rcpt)
    deferred = tuple(
        (domain, Deferred(msg_id, received.get("mail_from") or "", tuple(rcpts),
                          received.get("at", ""), attempts, pending[rcpts[-1]]))
        for domain, rcpts in by_domain.items())
    return _FileFacts(tuple((_domain(r), fate, at) for (r, fate), at in latest.items()),
                      tuple((d, at, text) for d, (at, text) in failures.items()), deferred)


class FlowScanner:
    """Reads a spool's message log into per-domain mail flow; keep one and call ``scan``
    again to refresh (only changed files are read again). Blocking: run it in a worker."""

    def __init__(self, spool_root: Path) -> None:
        self.log_dir = Path(spool_root) / "log"
        self._cache: dict[str, tuple[int, int, _FileFacts]] = {}

    def scan(self, now: datetime,
             progress: Callable[[int, int], None] | None = None) -> dict[str, DomainFlow]:
        if not self.log_dir.is_dir():
            raise UserError(f"{self.log_dir.parent}: not a relay spool (no log/ directory)")
        week_ago = (now - WEEK).timestamp()
        # Names, not DirEntry objects: 100,000 objects the garbage collector tracks would
        # make its full collections, which hold up the wizard's event loop, long.
        names = [n for n in os.listdir(self.log_dir) if n.endswith(".jsonl")]
        cache: dict[str, tuple[int, int, _FileFacts]] = {}
        for n, name in enumerate(names):
            if progress is not None and n % 2000 == 0:
                progress(n, len(names))
            path = os.path.join(self.log_dir, name)
            try:
                st = os.stat(path)
                if st.st_mtime < week_ago:
                    continue  # nothing in it is from the last 7 days
                known = self._cache.get(name)
                if known is not None and known[:2] == (st.st_mtime_ns, st.st_size):
                    cache[name] = known
                    continue
                with open(path, encoding="utf-8", errors="replace") as fh:
                    facts = _facts(name[:-6], fh.read())
            except OSError:
                continue  # removed while we read: it is no longer part of the log
            cache[name] = (st.st_mtime_ns, st.st_size, facts)
        self._cache = cache
        return _aggregate((f for _, _, f in cache.values()), now)


def _aggregate(all_facts: Any, now: datetime) -> dict[str, DomainFlow]:
    day_ago, week_ago = _iso(now - DAY), _iso(now - WEEK)
    flows: dict[str, DomainFlow] = {}

    def flow(domain: str) -> DomainFlow:
        found = flows.get(domain)
        if found is None:
            found = flows[domain] = DomainFlow(domain)
        return found

    for facts in all_facts:
        for domain, fate, at in facts.fates:
            if at >= week_ago:
                f = flow(domain)
                f.week[fate] += 1
                if at >= day_ago:
                    f.day[fate] += 1
        for domain, at, text in facts.failures:
            if at < week_ago:
                continue
            f = flow(domain)
            if at > f.last_failure_at:
                f.last_failure, f.last_failure_at = text, at
        for domain, item in facts.deferred:
            flow(domain).deferred.append(item)
    for f in flows.values():
        f.deferred.sort(key=lambda d: d.received_at)
    return flows
