"""Counters that must survive a portal restart, kept in the held message's record.json.

They change through ``HeldStore.update`` (the record's flock, then an atomic rewrite), so two
requests, or the portal and the relay, never lose each other's change. Per recipient slot:

- ``wrong_codes``: wrong codes entered over the link's lifetime. Every ``attempts`` of them
  burn a code; ``lock_after`` burnt codes lock the link (``locked_at``) until an admin runs
  ``connectwiz secure unlock`` or ``extend`` (``relay.held.unlock_recipients``);
- ``code_wait_until``: after a burnt code, no new code before then (backing off: the wait
  doubles with every burnt code);
- ``replies``: when this recipient's replies were sent (ISO times), for the hourly limit;
- ``signed_out_at``: sessions issued before it are no longer valid (sign-out is server-side).

And for the whole record: ``replies_sent``, the lifetime count of replies from the portal.
All functions are pure over the record and a clock value, so they test without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any


@dataclass(frozen=True, slots=True)
class Limits:
    attempts: int = 3  # wrong tries per code (CodeBook.max_attempts)
    lock_after: int = 3  # burnt codes before the link locks: 9 guesses in its lifetime
    backoff: float = 300.0  # seconds before a new code after the first burnt one; doubles
    replies_per_hour: int = 5  # per recipient and message
    replies_per_message: int = 20  # all recipients of one message, over its lifetime


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _at(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def slot(record: dict[str, Any], address: str) -> dict[str, Any]:
    return next(r for r in record["recipients"] if r["address"] == address)


def locked(record: dict[str, Any], address: str) -> bool:
    return bool(slot(record, address).get("locked_at"))


def code_wait(record: dict[str, Any], address: str, now: datetime) -> float:
    """Seconds before this recipient may have a new code (0: now)."""
    until = _at(slot(record, address).get("code_wait_until"))
    return max(0.0, (until - now).total_seconds()) if until else 0.0


def count_wrong(record: dict[str, Any], address: str, now: datetime, limits: Limits) -> None:
    """One more wrong code: burn, back off and lock as the counters say."""
    r = slot(record, address)
    r["wrong_codes"] = wrong = int(r.get("wrong_codes", 0)) + 1
    if wrong % limits.attempts:
        return
    burnt = wrong // limits.attempts
    if burnt >= limits.lock_after:
        r["locked_at"] = r.get("locked_at") or _iso(now)
    else:
        r["code_wait_until"] = _iso(now + timedelta(seconds=limits.backoff * 2 ** (burnt - 1)))


def reply_wait(record: dict[str, Any], address: str, now: datetime, limits: Limits
               ) -> float | None:
    """None when this recipient may reply now; else the seconds to wait (``inf``: never
    again, the message's lifetime limit is reached)."""
    if int(record.get("replies_sent", 0)) >= limits.replies_per_message:
        return float("inf")
    hour_ago = now - timedelta(hours=1)
    recent = sorted(t for t in (_at(x) for x in slot(record, address).get("replies", []))
                    if t and t > hour_ago)
    if len(recent) < limits.replies_per_hour:
        return None
    return (recent[0] + timedelta(hours=1) - now).total_seconds()


def count_reply(record: dict[str, Any], address: str, now: datetime) -> None:
    """Reserve one reply (before it is submitted, so parallel requests cannot all pass)."""
    r = slot(record, address)
    hour_ago = now - timedelta(hours=1)
    r["replies"] = [x for x in r.get("replies", []) if (_at(x) or now) > hour_ago]
    r["replies"].append(_iso(now))
    record["replies_sent"] = int(record.get("replies_sent", 0)) + 1


def uncount_reply(record: dict[str, Any], address: str) -> None:
    """Give back a reservation when the relay did not take the reply."""
    r = slot(record, address)
    if r.get("replies"):
        r["replies"].pop()
    record["replies_sent"] = max(0, int(record.get("replies_sent", 0)) - 1)
