"""Where mail for a domain goes: MX lookup (RFC 5321 §5.1, RFC 7505), dnspython's async resolver.

dnspython queries over UDP and retries over TCP by itself when a reply is truncated.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from connectwiz.errors import UserError
from connectwiz.probe.options import NetworkOptions

_MAX_CNAME_HOPS = 8


@dataclass(frozen=True, slots=True)
class MxHost:
    name: str  # lower case, no trailing dot
    preference: int  # 0 for the implicit MX of a domain without MX records
    addresses: tuple[str, ...]  # IPv4 first, then IPv6; empty when the name has none
    # Why ``addresses`` is empty when the lookup failed (SERVFAIL, timeout): this host is
    # skipped, as the relay skips it, while the domain's other hosts are still tried.
    lookup_error: str | None = None


class DnsError(Exception):
    """A lookup failed in a way that leaves no host to try; ``reason`` is for the admin."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def make_resolver(options: NetworkOptions) -> dns.asyncresolver.Resolver:
    """The system resolver, or only ``options.nameserver`` when one is given."""
    if options.nameserver is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            raise UserError("no system DNS resolver configured; use --nameserver") from None
    else:
        host, port = options.nameserver
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)]
    resolver.timeout = options.timeout
    resolver.lifetime = options.timeout
    return resolver


async def resolve_mx(
    domain: str,
    options: NetworkOptions,
    resolver: dns.asyncresolver.Resolver | None = None,
) -> list[MxHost]:
    """The mail hosts of ``domain``, most preferred first; raises DnsError when there are none."""
    resolver = resolver or make_resolver(options)
    try:
        answer = await resolver.resolve(domain, "MX")
        records = sorted(answer, key=lambda r: (r.preference, r.exchange.to_text()))
    except dns.resolver.NoAnswer:
        records = []
    except dns.exception.DNSException as exc:
        raise DnsError(_describe(exc, domain, "MX", options)) from None
    if any(r.exchange == dns.name.root for r in records):
        raise DnsError("domain accepts no mail (null MX, RFC 7505)")
    if not records:  # RFC 5321 §5.1: the domain itself is the implicit MX
        addresses = await resolve_addresses(domain, options, resolver)
        if not addresses:
            raise DnsError("no MX record and no address for the domain")
        return [MxHost(domain, 0, addresses)]
    names = [(r.exchange.to_text(omit_final_dot=True).lower(), r.preference) for r in records]
    found = await asyncio.gather(*(_mx_addresses(n, options, resolver) for n, _ in names))
    return [MxHost(n, pref, addrs, error)
            for (n, pref), (addrs, error) in zip(names, found, strict=True)]


async def _mx_addresses(
    name: str, options: NetworkOptions, resolver: dns.asyncresolver.Resolver
) -> tuple[tuple[str, ...], str | None]:
    """The addresses of one MX host, or none and why the lookup failed.

    An MX naming an IP address has none: RFC 5321 §5.1 requires a host name there, and
    MTAs (the relay too) do not look the digits up as a name.
    """
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return (), None
    try:
        return await resolve_addresses(name, options, resolver), None
    except DnsError as exc:
        return (), exc.reason


async def resolve_addresses(
    name: str,
    options: NetworkOptions,
    resolver: dns.asyncresolver.Resolver | None = None,
) -> tuple[str, ...]:
    """A then AAAA addresses of ``name``, following CNAMEs; empty when it has none.

    Raises DnsError for failures other than "no such name / no such record" (SERVFAIL, timeout).
    """
    resolver = resolver or make_resolver(options)
    v4, v6 = await asyncio.gather(
        _addresses(resolver, name, "A", options), _addresses(resolver, name, "AAAA", options)
    )
    return tuple(v4 + v6)


async def _addresses(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: str, options: NetworkOptions
) -> list[str]:
    qname = name
    for _ in range(_MAX_CNAME_HOPS):
        try:
            # No answer is common (a host without IPv6) and comes from the cache for every
            # delivery: taken as a value, not an exception, which costs far more.
            answer = await resolver.resolve(qname, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException as exc:
            raise DnsError(_describe(exc, name, rdtype, options)) from None
        if answer.rrset is not None:
            return [r.address for r in answer]
        # A server that is not recursive may answer with the CNAME alone: chase it ourselves.
        if not answer.response.answer:
            return []
        target = answer.response.resolve_chaining().canonical_name
        if target == dns.name.from_text(qname):
            return []
        qname = target.to_text()
    raise DnsError(f"CNAME chain for {name} is longer than {_MAX_CNAME_HOPS}")


def _describe(exc: dns.exception.DNSException, name: str, rdtype: str, opts: NetworkOptions) -> str:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "domain does not exist (NXDOMAIN)"
    if isinstance(exc, dns.exception.Timeout):
        return f"DNS lookup of {rdtype} for {name} timed out after {opts.timeout:g} s"
    if isinstance(exc, dns.resolver.NoNameservers):
        # Each error is (server, tcp, port, exception or rcode text, response).
        rcodes = {err[3] for err in exc.kwargs.get("errors", []) if isinstance(err[3], str)}
        shown = "/".join(sorted(rcodes)) or "no usable answer"
        return f"DNS server failure ({shown}) looking up {rdtype} for {name}"
    return f"DNS lookup of {rdtype} for {name} failed: {exc}"
