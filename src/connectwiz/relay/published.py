"""What partners publish, honoured on delivery: MTA-STS (RFC 8461) and DANE (RFC 7672).

Only destinations whose bundle definition is Opportunistic TLS (the default) are changed: a
bundle Enforced TLS or No TLS policy decides by itself (docs/relay.md, "Published policies").
For each MX host of such a destination, in this order:

- DANE, when ``--dnssec-resolver`` names a validating resolver and the TLSA records at
  ``_25._tcp.<mx>`` came back with its AD bit: usable records (DANE-TA, DANE-EE) make TLS
  mandatory and the presented chain must match one of them (Postfix's ``dane`` level); only
  unusable records make TLS mandatory without authentication; TLSA counts only after a
  validated MX lookup (RFC 7672 §2.2.1); a failed MX or TLSA lookup there defers the host.
  Without the option, or without the AD bit, DANE is ignored, as Postfix's ``may``.
  A domain without MX records is its own (implicit) MX: its TLSA records count when its
  address records are validated, looked for first at the CNAME-expanded name (RFC 7672
  §2.2.2).
- MTA-STS: the policy is fetched and cached for its ``max_age``; in ``enforce`` mode only hosts
  matching an ``mx`` pattern are tried, under Enforced TLS Strict (verified chain and name);
  in ``testing`` mode delivery stays opportunistic and the failure is recorded on the attempt.

The cache refreshes a policy in the background once it is ``refresh_after`` seconds old and
keeps the last good one until it expires when a refresh fails (RFC 8461 §5.1). It is kept in
the spool (``mta-sts-cache.json``) so a restart does not open a downgrade window.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.resolver
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from connectwiz.atomic import write_atomic
from connectwiz.policy.model import DeliveryDefinition, DeliveryOption, EncryptionMode
from connectwiz.probe.certs import certificate_names, match_hostname
from connectwiz.probe.dane import (
    DaneHost,
    association_data,
    dnssec_resolver,
    lookup_tlsa,
    match_chain,
)
from connectwiz.probe.dns import DnsError, make_resolver, resolve_mx
from connectwiz.probe.mtasts import StsPolicy, lookup_mta_sts, mx_pattern_matches
from connectwiz.probe.options import NetworkOptions

log = logging.getLogger(__name__)

REFRESH_AFTER = 3600.0  # seconds before a cached policy is checked again, in the background
ABSENT_TTL = 300.0  # how long "this domain publishes no usable policy" is believed
CACHE_FILE = "mta-sts-cache.json"

STS, TLSA, NO_POLICY = "sts", "tlsa", "no-policy-found"  # RFC 8460 policy-type values


@dataclass(frozen=True, slots=True)
class CachedPolicy:
    policy: StsPolicy
    id: str
    fetched: float  # when this policy was fetched (epoch seconds): max_age counts from here
    checked: float  # when the publication was last looked at, successfully or not

    @property
    def expires(self) -> float:
        return self.fetched + self.policy.max_age

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.policy.mode, "max_age": self.policy.max_age,
                "mx": list(self.policy.mx), "id": self.id, "fetched": self.fetched}


class StsCache:
    """MTA-STS policies by domain; ``policy()`` answers from the cache whenever it can."""

    def __init__(self, options: NetworkOptions, *, refresh_after: float = REFRESH_AFTER,
                 clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.refresh_after = refresh_after
        self.clock = clock
        self.path: Path | None = None
        # The relay's operational log (event name, fields); None: Python logging only.
        self.events: Callable[..., None] | None = None
        self._entries: dict[str, CachedPolicy] = {}
        # domain -> (until, why, RFC 8460 result type when a publication could not be used)
        self._absent: dict[str, tuple[float, str, str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._resolver: dns.asyncresolver.Resolver | None = None

    def load(self, path: Path) -> None:
        """Keep the cache in ``path``; read what an earlier run left there."""
        self.path = path
        try:
            data = json.loads(path.read_text("utf-8"))
            for domain, e in data.items():
                self._entries[domain] = CachedPolicy(
                    StsPolicy(str(e["mode"]), int(e["max_age"]), tuple(e["mx"])),
                    str(e["id"]), float(e["fetched"]), float(e["fetched"]))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # A damaged cache only costs fresh fetches: say so and start empty.
            log.warning("MTA-STS cache %s unreadable (%s); starting empty", path, exc)

    def cached(self, domain: str) -> CachedPolicy | None:
        """The unexpired policy held for ``domain``, without any network access."""
        entry = self._entries.get(domain)
        return entry if entry and self.clock() < entry.expires else None

    def problem(self, domain: str) -> str:
        """Why the last look at ``domain`` found no usable policy ('' when none was found)."""
        return self._absent.get(domain, (0.0, "", ""))[1]

    def failure(self, domain: str) -> str:
        """The RFC 8460 result type of a publication of ``domain`` that could not be used
        (sts-policy-fetch-error, sts-policy-invalid, sts-webpki-invalid); '' otherwise."""
        return self._absent.get(domain, (0.0, "", ""))[2]

    async def policy(self, domain: str) -> CachedPolicy | None:
        """The policy in force for ``domain``: cached, or fetched now when none is."""
        entry = self.cached(domain)
        if entry is not None:
            if self.clock() - entry.checked >= self.refresh_after:
                self._refresh_later(domain)
            return entry
        until = self._absent.get(domain, (0.0, "", ""))[0]
        if self.clock() < until:
            return None
        return await self.refresh(domain)

    async def refresh(self, domain: str) -> CachedPolicy | None:
        """Look at the publication again; a failure keeps the last good unexpired policy."""
        lock = self._locks.setdefault(domain, asyncio.Lock())
        async with lock:
            if self._resolver is None:
                self._resolver = await asyncio.to_thread(make_resolver, self.options)
            result = await lookup_mta_sts(domain, self.options, self._resolver)
            now = self.clock()
            old = self.cached(domain)
            if result.policy is not None and result.id is not None:
                new = CachedPolicy(result.policy, result.id, now, now)
                self._entries[domain] = new
                self._absent.pop(domain, None)
                await self._save()
                return new
            if old is not None:  # RFC 8461 §5.1: keep using it until it expires
                self._entries[domain] = CachedPolicy(old.policy, old.id, old.fetched, now)
                why = result.error or "no MTA-STS record"
                if self.events is not None:
                    self.events("mta-sts-refresh-failed", domain=domain, reason=why,
                                kept=old.policy.mode, expires_in_s=int(old.expires - now))
                else:
                    log.warning("MTA-STS refresh for %s failed (%s); keeping the cached %s "
                                "policy", domain, why, old.policy.mode)
                self._absent[domain] = (0.0, why, "")  # the cached policy still applies
                return old
            self._absent[domain] = (now + ABSENT_TTL, result.error or "", result.failure)
            return None

    def _refresh_later(self, domain: str) -> None:
        if any(t.get_name() == domain for t in self._tasks):
            return
        task = asyncio.create_task(self._background(domain), name=domain)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _background(self, domain: str) -> None:
        try:
            await self.refresh(domain)
        except Exception:  # a background refresh must never take the relay down
            log.exception("MTA-STS refresh for %s", domain)

    async def wait_refreshed(self) -> None:
        """Wait for the background refreshes under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _save(self) -> None:
        if self.path is None:
            return
        data = json.dumps({d: e.to_json() for d, e in self._entries.items()}, indent=1)
        try:
            await asyncio.to_thread(write_atomic, self.path, data.encode())
        except OSError as exc:
            log.warning("MTA-STS cache %s not written: %s", self.path, exc)


@dataclass(frozen=True, slots=True)
class Published:
    """What a partner's publication asks of one MX host, and how the attempt must check it."""

    policy_type: str  # sts | tlsa | no-policy-found (RFC 8460)
    policy_domain: str
    decided_by: str  # bundle | mta-sts | dane: which one chose the TLS requirement
    sts_mode: str = ""  # enforce | testing when an MTA-STS policy applies
    tlsa: DaneHost | None = None  # DANE with usable records: the chain must match one
    refuse: str = ""  # the host must not be tried: why
    failure_type: str = ""  # RFC 8460 result type of ``refuse`` or ``noted``
    noted: str = ""  # MTA-STS testing: a failure to record; the host is tried anyway
    # The applied policy as TLS-RPT reports it (RFC 8460 §4.4): the MTA-STS policy's lines
    # and its mx patterns, or the TLSA records in presentation form.
    policy_string: tuple[str, ...] = ()
    mx_host: tuple[str, ...] = ()

    def check_chain(self, host: str, chain: tuple[bytes, ...]) -> str:
        """'' when the DER chain (leaf first) satisfies the TLSA records, else why not."""
        if self.tlsa is None:
            return ""
        judged = match_chain(self.tlsa, chain)
        if any(r.matches and r.usage == 3 for r in judged.records):
            return ""  # DANE-EE: the key is the identity; names do not matter (§3.1.1)
        anchors = [r for r in judged.records if r.matches and r.usage == 2]
        if not anchors:
            return f"no TLSA record at {self.tlsa.name} matches the certificate"
        certs = [x509.load_der_x509_certificate(der) for der in chain]
        if not any(_issued_up_to(certs, depth) for depth in range(1, len(certs))
                   if any(association_data(chain[depth], r.selector, r.matching_type) == r.data
                          for r in anchors)):
            return f"the certificate does not chain to the trust anchor at {self.tlsa.name}"
        names = certificate_names(certs[0])
        # DANE-TA: the leaf must name the MX, or the name its TLSA was found at after CNAME
        # expansion (§3.2.2).
        wanted = dict.fromkeys((host, self.tlsa.host))
        if any(match_hostname(names, name) for name in wanted):
            return ""
        return f"certificate names {', '.join(names) or 'nothing'}, not {' or '.join(wanted)}"


def _issued_up_to(certs: list[x509.Certificate], depth: int) -> bool:
    """Each certificate below ``depth`` is signed by the next one: the chain reaches it."""
    for child, parent in itertools.pairwise(certs[:depth + 1]):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            return False
    return True


def sts_strings(policy: StsPolicy) -> tuple[str, ...]:
    """The policy's lines, as RFC 8460 §4.4 ``policy-string`` carries an MTA-STS policy."""
    return ("version: STSv1", f"mode: {policy.mode}", *(f"mx: {m}" for m in policy.mx),
            f"max_age: {policy.max_age}")


def tlsa_strings(host: DaneHost) -> tuple[str, ...]:
    """The TLSA records in presentation form (RFC 6698 §2.2), for ``policy-string``."""
    return tuple(f"{r.usage} {r.selector} {r.matching_type} {r.data.hex().upper()}"
                 for r in host.records)


def dane_definition(host: DaneHost) -> DeliveryDefinition:
    """Postfix's ``dane``: TLS 1.2 is mandatory; the TLSA match replaces the PKIX checks."""
    return DeliveryDefinition(f"DANE (TLSA at {host.name})", DeliveryOption.ENFORCED,
                              EncryptionMode.RELAXED, "1.2")


def sts_definition(domain: str) -> DeliveryDefinition:
    return DeliveryDefinition(f"MTA-STS enforce ({domain})", DeliveryOption.ENFORCED,
                              EncryptionMode.STRICT, "1.2")


class PublishedPolicies:
    """The per-host decision for MX destinations (see the module docstring)."""

    def __init__(self, options: NetworkOptions) -> None:
        self.options = options
        self.sts = StsCache(options)
        self._dnssec: dns.asyncresolver.Resolver | None = None

    async def _dnssec_resolver(self) -> dns.asyncresolver.Resolver:
        if self._dnssec is None:
            named = NetworkOptions(nameserver=self.options.dnssec_resolver,
                                   timeout=self.options.timeout)
            resolver = await asyncio.to_thread(dnssec_resolver, named)
            resolver.cache = dns.resolver.Cache()  # TLSA answers (with their AD bit) for the TTL
            self._dnssec = resolver
        return self._dnssec

    async def _dane(self, domain: str, hosts: list[str]) -> list[DaneHost | None]:
        """Per MX host: its validated TLSA records (an error when the validating resolver
        could not answer: it may be refusing a forged answer), or None: DANE does not apply.

        RFC 7672 §2.2.1: TLSA records count only when the MX RRset came back with the AD bit
        (an MX name learnt insecurely could be an attacker's); a domain without MX records is
        its own implicit MX (§2.2.2)."""
        none: list[DaneHost | None] = [None] * len(hosts)
        if self.options.dnssec_resolver is None:
            return none
        try:
            answer = await (await self._dnssec_resolver()).resolve(domain, "MX")
        except dns.resolver.NoAnswer:
            return [await self._implicit(domain)] if hosts == [domain] else none
        except dns.resolver.NXDOMAIN:
            return none
        except dns.exception.DNSException as exc:
            error = f"DNSSEC lookup of MX for {domain} failed: {exc}"
            return [DaneHost(h, f"_25._tcp.{h}", error=error) for h in hosts]
        if not answer.response.flags & dns.flags.AD:
            return none
        return list(await asyncio.gather(*(self._tlsa(h) for h in hosts)))

    async def _implicit(self, domain: str) -> DaneHost | None:
        """TLSA of a domain that is its own MX: only when its address records are validated;
        at the CNAME-expanded name first, then at the domain itself (RFC 7672 §2.2.2)."""
        resolver = await self._dnssec_resolver()
        answer = None
        for rdtype in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(domain, rdtype)
                break
            except dns.resolver.NoAnswer:
                continue
            except dns.resolver.NXDOMAIN:
                return None
            except dns.exception.DNSException as exc:
                return DaneHost(domain, f"_25._tcp.{domain}",
                                error=f"DNSSEC lookup of {rdtype} for {domain} failed: {exc}")
        if answer is None or not answer.response.flags & dns.flags.AD:
            return None  # insecure address records: no DANE
        expanded = answer.canonical_name.to_text(omit_final_dot=True).lower()
        if expanded != domain and (found := await self._tlsa(expanded)) is not None:
            return found
        return await self._tlsa(domain)

    async def _tlsa(self, host: str) -> DaneHost | None:
        """TLSA records of ``host`` validated by the named resolver; None: DANE does not apply."""
        found = await lookup_tlsa(host, await self._dnssec_resolver())
        if found.error:
            return found  # a validating resolver that fails may be hiding TLSA: defer
        return found if found.records and found.authenticated else None

    async def plan(self, domain: str, definition: DeliveryDefinition, hosts: list[str]
                   ) -> dict[str, tuple[DeliveryDefinition, Published]]:
        """For each MX host name: the definition to deliver under and what it was decided by."""
        entry = await self.sts.policy(domain)
        policy = entry.policy if entry and entry.policy.mode in ("enforce", "testing") else None
        # What TLS-RPT reports as the applied MTA-STS policy, wherever it applies.
        sts = {"policy_string": sts_strings(policy), "mx_host": policy.mx} if policy else {}
        # A publication that could not be used: no policy applies, delivery goes on as if
        # none were published, and TLS-RPT reports why (RFC 8460 §4.3.2.2).
        unusable = {} if policy or not (failure := self.sts.failure(domain)) else {
            "failure_type": failure, "noted": f"MTA-STS: {self.sts.problem(domain)}"}
        if definition.option is not DeliveryOption.OPPORTUNISTIC:
            # The bundle asked for Enforced TLS or No TLS: it decides, whatever is published.
            return {h: (definition, Published(STS if policy else NO_POLICY, domain, "bundle",
                                              **sts, **unusable)) for h in hosts}
        plan: dict[str, tuple[DeliveryDefinition, Published]] = {}
        tlsa = await self._dane(domain, hosts)
        for host, found in zip(hosts, tlsa, strict=True):
            if found is not None and found.error:
                plan[host] = (dane_definition(found), Published(
                    TLSA, domain, "dane", refuse=f"DANE: {found.error}",
                    failure_type="dnssec-invalid"))
            elif found is not None:
                plan[host] = (dane_definition(found), Published(
                    TLSA, domain, "dane", tlsa=found if found.usable else None,
                    policy_string=tlsa_strings(found)))
            elif policy is None:
                plan[host] = (definition, Published(NO_POLICY, domain, "bundle", **unusable))
            elif not any(mx_pattern_matches(p, host) for p in policy.mx):
                why = f"MTA-STS: {host} matches no mx pattern of {domain}'s policy"
                if policy.mode == "enforce":
                    plan[host] = (sts_definition(domain), Published(
                        STS, domain, "mta-sts", "enforce", refuse=why,
                        failure_type="validation-failure", **sts))
                else:
                    plan[host] = (definition, Published(
                        STS, domain, "bundle", "testing", failure_type="validation-failure",
                        noted=why, **sts))
            elif policy.mode == "enforce":
                plan[host] = (sts_definition(domain),
                              Published(STS, domain, "mta-sts", "enforce", **sts))
            else:
                plan[host] = (definition, Published(STS, domain, "bundle", "testing", **sts))
        return plan

    async def close(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.sts.close()


@dataclass(frozen=True, slots=True)
class PublishedView:
    """``explain --published``: what a recipient domain publishes and who decides its TLS."""

    domain: str
    bundle: DeliveryDefinition
    sts_mode: str | None  # the MTA-STS mode found (enforce | testing | none), None: no policy
    sts_problem: str  # why no policy could be used ('' when none is published)
    dane_checked: bool  # False: no --dnssec-resolver, DANE is not looked at
    hosts: tuple[tuple[str, DeliveryDefinition, Published], ...]
    error: str = ""  # the MX lookup failed

    @property
    def decided_by(self) -> list[str]:
        return sorted({p.decided_by for _, _, p in self.hosts}) or ["bundle"]

    def warnings(self) -> list[str]:
        option = self.bundle.option
        if self.sts_mode != "enforce":
            return []
        if option is DeliveryOption.NONE:
            return [f"{self.domain} publishes MTA-STS enforce, but the bundle's {self.bundle.name} "
                    "wins: mail goes in plaintext (Google Workspace and Exchange Online would "
                    "refuse to send it so)"]
        if option is DeliveryOption.ENFORCED and self.bundle.encryption_mode is not \
                EncryptionMode.STRICT:
            return [f"{self.domain} publishes MTA-STS enforce, but the bundle's {self.bundle.name} "
                    "wins: certificates the policy would refuse are accepted"]
        return []

    def lines(self) -> list[str]:
        sts = f"MTA-STS {self.sts_mode}" if self.sts_mode else "no MTA-STS policy"
        if self.sts_problem:
            sts += f" ({self.sts_problem})"
        dane = "DANE checked" if self.dane_checked else "DANE not checked (no --dnssec-resolver)"
        out = [f"Published by {self.domain}: {sts}; {dane}",
               f"  TLS decided by: {', '.join(self.decided_by)}"]
        if self.error:
            out.append(f"  MX lookup failed: {self.error}")
        for host, definition, published in self.hosts:
            how = published.refuse or f"{definition.name} ({published.decided_by})"
            out.append(f"    {host}: {how}")
        out += [f"  WARNING: {w}" for w in self.warnings()]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "mta_sts_mode": self.sts_mode,
                "mta_sts_problem": self.sts_problem or None, "dane_checked": self.dane_checked,
                "decided_by": self.decided_by, "error": self.error or None,
                "warnings": self.warnings(),
                "hosts": [{"host": h, "definition": d.name, "decided_by": p.decided_by,
                           "policy_type": p.policy_type, "refused": p.refuse or None}
                          for h, d, p in self.hosts]}


async def look(domain: str, bundle: DeliveryDefinition, options: NetworkOptions
               ) -> PublishedView:
    """What the relay would decide for ``domain`` now (the same ``plan`` delivery uses)."""
    policies = PublishedPolicies(options)
    try:
        hosts = [h.name for h in await resolve_mx(domain, options)]
        error = ""
    except DnsError as exc:
        hosts, error = [], exc.reason
    plan = await policies.plan(domain, bundle, hosts)
    entry = policies.sts.cached(domain)
    return PublishedView(domain, bundle, entry.policy.mode if entry else None,
                         policies.sts.problem(domain), options.dnssec_resolver is not None,
                         tuple((h, *plan[h]) for h in hosts), error)


def result_type(problems: list[str]) -> str:
    """The RFC 8460 result type closest to ``judge_chain``'s reasons."""
    text = " ".join(problems).lower()
    if "expired" in text:
        return "certificate-expired"
    if "name" in text and "match" in text:
        return "certificate-host-mismatch"
    return "certificate-not-trusted"
