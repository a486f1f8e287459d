"""Validate many targets at once: bounded concurrency, one probe per shared server, in order."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

from connectwiz.probe.certs import TrustStore, trust_store
from connectwiz.probe.dane import DaneHost, DaneResult, dnssec_resolver, lookup_tlsa, match_chain
from connectwiz.probe.dns import DnsError, MxHost, make_resolver, resolve_addresses, resolve_mx
from connectwiz.probe.host import ProbeSettings, probe_host
from connectwiz.probe.mtasts import MtaStsResult, assess, https_context, lookup_mta_sts
from connectwiz.probe.options import NetworkOptions
from connectwiz.probe.results import HostResult, Status, Target, TargetResult, summarise
from connectwiz.probe.tlsrpt import lookup_tls_rpt

_HostKey = tuple[str, tuple[str, ...], int, str | None]  # name, addresses, port, RCPT address
_T = TypeVar("_T")


async def validate_targets(
    targets: Sequence[Target],
    options: NetworkOptions,
    *,
    email: str | Mapping[Target, str] | None = None,
    progress: Callable[[TargetResult], None] | None = None,
) -> list[TargetResult]:
    """Validate every target; results in the order of ``targets``.

    ``email`` is the address checked with RCPT TO: one for every target, or a mapping giving
    each target its own (a target absent from the mapping gets no RCPT check).

    At most ``options.concurrency`` DNS lookups and probes run at once. A server named by several
    targets (a shared MX) is probed once. ``progress`` is called as each target completes.
    Cancelling the caller cancels every probe and closes every connection.
    """
    with_domains = any(t.kind == "domain" for t in targets)
    trust = await asyncio.to_thread(_loaded_trust_store, options, with_domains)
    batch = _Batch(options, ProbeSettings(options.timeout, trust, options.greeting_timeout))

    def email_of(target: Target) -> str | None:
        return email.get(target) if isinstance(email, Mapping) else email

    async def one(target: Target) -> TargetResult:
        result = await batch.validate(target, email_of(target))
        if progress is not None:
            progress(result)
        return result

    tasks = [asyncio.ensure_future(one(t)) for t in targets]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        await batch.cancel_rest(tasks)


class _Batch:
    def __init__(self, options: NetworkOptions, settings: ProbeSettings) -> None:
        self.options = options
        self.settings = settings
        self.resolver = make_resolver(options)
        self.slots = asyncio.Semaphore(max(1, options.concurrency))
        self.probes: dict[_HostKey, asyncio.Task[HostResult]] = {}
        self.dnssec = dnssec_resolver(options)
        self.tlsa: dict[str, asyncio.Task[DaneHost]] = {}

    async def validate(self, target: Target, email: str | None) -> TargetResult:
        started = time.monotonic()
        label = target.label(self.options.smtp_port)
        try:
            async with self.slots:
                mx = await self._hosts_of(target)
        except DnsError as exc:
            return TargetResult(label, target.kind, Status.ERROR, exc.reason, _ms(started))
        port = target.port or self.options.smtp_port
        probes = asyncio.gather(*(self._probe(m, port, target.kind, email) for m in mx))
        if target.kind != "domain":
            hosts = await probes
            status, reason, warnings = summarise(list(hosts))
            return TargetResult(label, target.kind, status, reason, _ms(started), tuple(hosts),
                                warnings)
        # What the domain publishes is looked up while its hosts are probed.
        hosts, sts, rpt, tlsa = await asyncio.gather(
            probes,
            self._slotted(lookup_mta_sts(target.name, self.options, self.resolver)),
            self._slotted(lookup_tls_rpt(target.name, self.resolver)),
            asyncio.gather(*(self._tlsa(m.name) for m in mx)),
        )
        status, reason, warnings = summarise(list(hosts))
        sts, dane = _combine(hosts, sts, tlsa)
        return TargetResult(label, target.kind, status, reason, _ms(started), tuple(hosts),
                            warnings, mta_sts=sts, tls_rpt=rpt, dane=dane)

    async def _slotted(self, work: Awaitable[_T]) -> _T:
        async with self.slots:
            return await work

    async def _tlsa(self, host: str) -> DaneHost:
        task = self.tlsa.get(host)
        if task is None:
            task = self.tlsa[host] = asyncio.ensure_future(
                self._slotted(lookup_tlsa(host, self.dnssec)))
        return await asyncio.shield(task)

    async def _hosts_of(self, target: Target) -> list[MxHost]:
        if target.kind == "domain":
            return await resolve_mx(target.name, self.options, self.resolver)
        if _is_ip(target.name):
            return [MxHost(target.name, 0, (target.name,))]
        addresses = await resolve_addresses(target.name, self.options, self.resolver)
        if not addresses:
            raise DnsError(f"no address found for {target.name}")
        return [MxHost(target.name, 0, addresses)]

    async def _probe(self, mx: MxHost, port: int, kind: str, email: str | None) -> HostResult:
        # A shared server is probed once per address checked: the RCPT reply differs.
        key = (mx.name, mx.addresses, port, email)
        task = self.probes.get(key)
        if task is None:
            task = self.probes[key] = asyncio.ensure_future(self._probe_now(mx, port, email))
        # Shielded: another target may share this server; cancel_rest() ends it if need be.
        result = await asyncio.shield(task)
        preference = mx.preference if kind == "domain" else None
        return result if result.preference == preference else replace(result, preference=preference)

    async def _probe_now(self, mx: MxHost, port: int, email: str | None) -> HostResult:
        settings = replace(self.settings, email=email)
        async with self.slots:
            return await probe_host(mx.name, mx.addresses, port, None, settings,
                                    mx.lookup_error)

    async def cancel_rest(self, tasks: list[asyncio.Future[TargetResult]]) -> None:
        pending = [t for t in (*tasks, *self.probes.values(), *self.tlsa.values())
                   if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _combine(
    hosts: list[HostResult], sts: MtaStsResult, tlsa: list[DaneHost]
) -> tuple[MtaStsResult, DaneResult]:
    """MX hosts against the MTA-STS policy; TLSA records against the chains the hosts sent."""
    sts = assess(sts, [(h.host, h.status == Status.STRICT) for h in hosts])
    dane = DaneResult(tuple(match_chain(t, h.chain) for t, h in zip(tlsa, hosts, strict=True)))
    return sts, dane


def _loaded_trust_store(options: NetworkOptions, with_domains: bool) -> TrustStore:
    """Read and index the CA files now (in a thread), not in the event loop on first use;
    for domains also the MTA-STS fetch's verifying context, which reads them again."""
    trust = trust_store(options.ca_file)
    _ = trust.store
    if with_domains:
        https_context(options.ca_file)
    return trust


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
