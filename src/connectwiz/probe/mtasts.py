"""MTA-STS (RFC 8461): the ``_mta-sts`` TXT record, the HTTPS policy, and MX pattern matching.

The policy is fetched from ``https://mta-sts.<domain>/.well-known/mta-sts.txt``: the host name is
resolved through the configured name server (never the system resolver when ``--nameserver``
is given) and the connection goes to that address on ``NetworkOptions.https_port`` (443 unless
changed, so a lab can serve policies on an unprivileged port). The certificate must verify
against the system store plus ``--ca-file``; redirects, non-200 answers, another media type
than ``text/plain`` and bodies over 64 KiB are refused (RFC 8461 §3.3). The whole fetch is
bounded by ``--timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver

from connectwiz.probe.dns import DnsError, resolve_addresses
from connectwiz.probe.options import NetworkOptions
from connectwiz.probe.tls import client_context

MAX_POLICY_BYTES = 64 * 1024
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 §3.2: one year
POLICY_PATH = "/.well-known/mta-sts.txt"
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_MODES = ("enforce", "testing", "none")


class PolicyError(Exception):
    """The record or the policy cannot be used; the message says why, for the admin."""


class FetchError(PolicyError):
    """The policy could not be fetched (RFC 8460 result type sts-policy-fetch-error)."""


class WebPkiError(FetchError):
    """The policy host's certificate was not verified (sts-webpki-invalid)."""


@dataclass(frozen=True, slots=True)
class StsPolicy:
    mode: str
    max_age: int
    mx: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MxMatch:
    host: str
    pattern: str | None  # the first pattern that covers the host; None: no pattern does

    @property
    def matches(self) -> bool:
        return self.pattern is not None


@dataclass(frozen=True, slots=True)
class MtaStsResult:
    """What a domain publishes for MTA-STS, and how its MX hosts fare against it."""

    published: bool  # a v=STSv1 TXT record exists (even a malformed one)
    record: str | None = None
    id: str | None = None
    policy_url: str | None = None
    policy: StsPolicy | None = None
    error: str | None = None  # why the record or policy is unusable
    mx: tuple[MxMatch, ...] = field(default_factory=tuple)
    # Hosts that fail the policy in enforce mode: not matching a pattern, or not strict TLS.
    failing: tuple[str, ...] = field(default_factory=tuple)
    # The RFC 8460 result type of ``error`` when a record was published: a sender reports
    # its sessions to the domain with it (sts-policy-fetch-error, -invalid, sts-webpki-invalid).
    failure: str = ""

    @property
    def mode(self) -> str | None:
        return self.policy.mode if self.policy else None

    @property
    def all_mx_match(self) -> bool | None:
        return all(m.matches for m in self.mx) if self.policy and self.mx else None

    @property
    def enforce_failing(self) -> bool:
        return self.mode == "enforce" and bool(self.failing)

    @property
    def warning(self) -> str | None:
        if not self.enforce_failing:
            return None
        return ("MTA-STS policy is enforce but MX fails strict checks: "
                + "; ".join(self.failing) + " (senders that honour MTA-STS will not deliver)")

    def to_json(self) -> dict[str, Any]:
        policy = self.policy
        return {
            "published": self.published,
            "record": self.record,
            "id": self.id,
            "policy_url": self.policy_url,
            "mode": policy.mode if policy else None,
            "max_age": policy.max_age if policy else None,
            "mx_patterns": list(policy.mx) if policy else [],
            "mx": [{"host": m.host, "matches": m.matches, "pattern": m.pattern} for m in self.mx],
            "all_mx_match": self.all_mx_match,
            "error": self.error,
            "enforce_failing": self.enforce_failing,
            "warning": self.warning,
        }


def parse_record(texts: list[str]) -> tuple[str, str]:
    """(record, id) from the TXT strings at ``_mta-sts``: exactly one must start with v=STSv1."""
    records = [t for t in texts if t.startswith("v=STSv1")]
    if not records:
        raise PolicyError("no v=STSv1 record")
    if len(records) > 1:
        raise PolicyError(f"{len(records)} v=STSv1 records; exactly one is allowed")
    fields = tag_fields(records[0])
    if fields.get("v") != "STSv1":
        raise PolicyError(f"record does not start with v=STSv1: {records[0]!r}")
    sts_id = fields.get("id")
    if sts_id is None:
        raise PolicyError("record has no id")
    if not _ID.match(sts_id):
        raise PolicyError(f"record id {sts_id!r} is not 1 to 32 letters or digits")
    return records[0], sts_id


def parse_policy(text: str) -> StsPolicy:
    """The policy file's fields (RFC 8461 §3.2); unknown keys are ignored as the RFC asks."""
    values: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"policy line without 'key: value': {line[:60]!r}")
        values.setdefault(key.strip(), []).append(value.strip())
    if values.get("version") != ["STSv1"]:
        raise PolicyError("policy has no 'version: STSv1'")
    modes = values.get("mode", [])
    if len(modes) != 1 or modes[0] not in _MODES:
        raise PolicyError(f"policy mode must be one of {', '.join(_MODES)}; found {modes}")
    ages = values.get("max_age", [])
    if len(ages) != 1 or not ages[0].isdigit() or int(ages[0]) > MAX_AGE_LIMIT:
        raise PolicyError(f"policy max_age must be 0 to {MAX_AGE_LIMIT} seconds; found {ages}")
    mx = tuple(p.lower().rstrip(".") for p in values.get("mx", []))
    if not mx and modes[0] != "none":
        raise PolicyError(f"policy mode {modes[0]} needs at least one mx pattern")
    return StsPolicy(modes[0], int(ages[0]), mx)


def mx_pattern_matches(pattern: str, host: str) -> bool:
    """Anchored match: the exact name, or ``*.`` standing for exactly one left-most label."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        first, sep, rest = host.partition(".")
        return bool(first) and bool(sep) and rest == pattern[2:]
    return pattern == host


def match_hosts(policy: StsPolicy, hosts: list[str]) -> tuple[MxMatch, ...]:
    return tuple(
        MxMatch(h, next((p for p in policy.mx if mx_pattern_matches(p, h)), None)) for h in hosts
    )


def assess(result: MtaStsResult, hosts: list[tuple[str, bool]]) -> MtaStsResult:
    """Match the MX hosts (name, passed strict checks) against the policy of ``result``."""
    if result.policy is None:
        return result
    matches = match_hosts(result.policy, [name for name, _ in hosts])
    failing = [f"{m.host} matches no mx pattern" for m in matches if not m.matches]
    failing += [f"{name} is not strict TLS" for name, strict in hosts if not strict]
    return MtaStsResult(result.published, result.record, result.id, result.policy_url,
                        result.policy, result.error, matches, tuple(failing), result.failure)


async def lookup_mta_sts(
    domain: str, options: NetworkOptions, resolver: dns.asyncresolver.Resolver
) -> MtaStsResult:
    """The record and the policy of ``domain``; failures are reported, never raised."""
    try:
        texts = await txt_records(f"_mta-sts.{domain}", resolver)
    except DnsError as exc:
        return MtaStsResult(False, error=exc.reason)
    if not any(t.startswith("v=STSv1") for t in texts):
        return MtaStsResult(False)
    try:
        record, sts_id = parse_record(texts)
    except PolicyError as exc:
        return MtaStsResult(True, record=next(t for t in texts if t.startswith("v=STSv1")),
                            error=str(exc), failure="sts-policy-invalid")
    url = f"https://mta-sts.{domain}{POLICY_PATH}"
    try:
        policy = parse_policy(await fetch_policy(domain, options, resolver))
    except PolicyError as exc:
        failure = ("sts-webpki-invalid" if isinstance(exc, WebPkiError) else
                   "sts-policy-fetch-error" if isinstance(exc, FetchError) else
                   "sts-policy-invalid")
        return MtaStsResult(True, record, sts_id, url, error=str(exc), failure=failure)
    return MtaStsResult(True, record, sts_id, url, policy)


async def txt_records(name: str, resolver: dns.asyncresolver.Resolver) -> list[str]:
    """TXT strings of ``name`` (each record's strings joined); empty when there are none."""
    try:
        answer = await resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.Timeout:
        raise DnsError(f"DNS lookup of TXT for {name} timed out") from None
    except dns.exception.DNSException as exc:
        raise DnsError(f"DNS lookup of TXT for {name} failed: {exc}") from None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


async def fetch_policy(
    domain: str, options: NetworkOptions, resolver: dns.asyncresolver.Resolver
) -> str:
    """GET the policy over verified HTTPS; raises PolicyError saying what went wrong
    (FetchError when the policy was not had, WebPkiError for an unverified host)."""
    host = f"mta-sts.{domain}"
    try:
        async with asyncio.timeout(options.timeout):
            try:
                addresses = await resolve_addresses(host, options, resolver)
            except DnsError as exc:
                raise FetchError(f"policy host: {exc.reason}") from None
            if not addresses:
                raise FetchError(f"policy host {host} has no address")
            return await _get(host, addresses[0], options)
    except TimeoutError:
        raise FetchError(f"policy fetch from {host} timed out after {options.timeout:g} s") \
            from None


async def _get(host: str, address: str, options: NetworkOptions) -> str:
    ctx = https_context(options.ca_file)
    try:
        reader, writer = await asyncio.open_connection(
            address, options.https_port, ssl=ctx, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        raise WebPkiError(f"certificate of {host} not verified: {exc.verify_message}") from None
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise FetchError(f"HTTPS to {host} ({address}:{options.https_port}) failed: "
                          f"{reason}") from None
    try:
        writer.write(f"GET {POLICY_PATH} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: connectwiz\r\n"
                     "Accept: text/plain\r\nConnection: close\r\n\r\n".encode("ascii"))
        await writer.drain()
        status, headers = await _read_head(reader)
        if 300 <= status < 400:
            raise FetchError(f"policy answer is a redirect ({status}); redirects are not "
                              "followed (RFC 8461 §3.3)")
        if status != 200:
            raise FetchError(f"policy answer is HTTP {status}, not 200")
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "text/plain":
            raise PolicyError(f"policy media type is {media or 'missing'}, not text/plain")
        body = await _read_body(reader, headers)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        raise FetchError(f"policy fetch from {host} failed: {exc or type(exc).__name__}") \
            from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("policy is not UTF-8 text") from None


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = (await reader.readline()).decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise FetchError(f"not an HTTP answer: {status_line.strip()[:60]!r}")
    headers: dict[str, str] = {}
    size = len(status_line)
    while True:
        line = (await reader.readline()).decode("latin-1")
        size += len(line)
        if size > MAX_POLICY_BYTES:
            raise FetchError("HTTP headers larger than 64 KiB")
        if line in ("\r\n", "\n", ""):
            return int(parts[1]), headers
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    too_big = PolicyError(f"policy larger than {MAX_POLICY_BYTES // 1024} KiB")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                return body
            if len(body) + size > MAX_POLICY_BYTES:
                raise too_big
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_POLICY_BYTES:
            raise too_big
        return await reader.readexactly(length)
    body = await reader.read(MAX_POLICY_BYTES + 1)
    while len(body) <= MAX_POLICY_BYTES:
        more = await reader.read(MAX_POLICY_BYTES + 1 - len(body))
        if not more:
            return body
        body += more
    raise too_big


@functools.lru_cache(maxsize=4)
def https_context(ca_file: Path | None) -> ssl.SSLContext:
    """The verifying context of policy fetches; loading the CA files takes ~0.1 s, so a batch
    builds it in a thread before the first fetch (``batch._loaded_trust_store``)."""
    return client_context(verify=True, ca_file=ca_file)


def tag_fields(record: str) -> dict[str, str]:
    """``key=value`` pairs of a ``;``-separated TXT record (MTA-STS, TLS-RPT); first one wins."""
    out: dict[str, str] = {}
    for part in record.split(";"):
        key, eq, value = part.strip().partition("=")
        if eq:
            out.setdefault(key.strip(), value.strip())
    return out
