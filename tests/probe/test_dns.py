"""MX resolution against a real DNS server on loopback (the lab's), over UDP and TCP."""

from __future__ import annotations

import dns.name
import pytest

from connectwiz.lab.dns import DNSServer, Zone
from connectwiz.probe.dns import DnsError, MxHost, resolve_addresses, resolve_mx
from connectwiz.probe.options import NetworkOptions

pytestmark = pytest.mark.network


def _zones() -> list[Zone]:
    z = Zone(origin=dns.name.from_text("example."))
    # Preferences deliberately out of order.
    z.add("multi.example.", "MX", "30 mx3.multi.example.")
    z.add("multi.example.", "MX", "10 mx1.multi.example.")
    z.add("multi.example.", "MX", "20 mx2.multi.example.")
    for i in (1, 2, 3):
        z.add(f"mx{i}.multi.example.", "A", f"127.0.0.{i}")
    z.add("mx2.multi.example.", "AAAA", "::1")
    z.add("null.example.", "MX", "0 .")
    z.add("implicit.example.", "A", "127.0.0.9")
    z.add("implicit.example.", "AAAA", "::1")
    z.add("nothing.example.", "TXT", '"no mail here"')
    z.add("alias.example.", "MX", "10 mail.alias.example.")
    z.add("mail.alias.example.", "CNAME", "real.other.test.")  # CNAME into another zone
    z.add("noaddr.example.", "MX", "10 ghost.noaddr.example.")
    z.add_servfail("broken.example.")
    z.add_silent("silent.example.")
    for i in range(20):  # enough records that the UDP answer is truncated
        z.add("big.example.", "MX", f"{i} mx{i:02d}-padding-padding-padding-padding.big.example.")
    other = Zone(origin=dns.name.from_text("other.test."))
    other.add("real.other.test.", "A", "127.0.0.77")
    return [z, other]


@pytest.fixture
async def server():
    srv = DNSServer(_zones())
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
def options(server) -> NetworkOptions:
    return NetworkOptions(nameserver=server.address, timeout=1.0)


async def test_mx_sorted_by_preference_with_ipv4_and_ipv6(options):
    hosts = await resolve_mx("multi.example", options)
    assert [h.preference for h in hosts] == [10, 20, 30]
    assert [h.name for h in hosts] == ["mx1.multi.example", "mx2.multi.example",
                                       "mx3.multi.example"]
    assert hosts[1].addresses == ("127.0.0.2", "::1")  # IPv4 first, then IPv6


async def test_null_mx_means_no_mail(options):
    with pytest.raises(DnsError, match="accepts no mail"):
        await resolve_mx("null.example", options)


async def test_no_mx_but_address_is_its_own_host(options):
    assert await resolve_mx("implicit.example", options) == [
        MxHost("implicit.example", 0, ("127.0.0.9", "::1"))]


async def test_no_mx_and_no_address(options):
    with pytest.raises(DnsError, match="no MX record and no address"):
        await resolve_mx("nothing.example", options)


async def test_mx_target_cname_is_followed_across_zones(options):
    hosts = await resolve_mx("alias.example", options)
    assert hosts == [MxHost("mail.alias.example", 10, ("127.0.0.77",))]


async def test_mx_host_without_address_is_kept_with_no_addresses(options):
    assert await resolve_mx("noaddr.example", options) == [
        MxHost("ghost.noaddr.example", 10, ())]


@pytest.mark.parametrize(
    ("domain", "reason"),
    [
        ("missing.example", "does not exist (NXDOMAIN)"),
        ("broken.example", "SERVFAIL"),
        ("silent.example", "timed out after 1 s"),
    ],
)
async def test_dns_failures_have_their_own_reason(options, domain, reason):
    with pytest.raises(DnsError) as info:
        await resolve_mx(domain, options)
    assert reason in info.value.reason


async def test_truncated_udp_answer_is_retried_over_tcp(options, server):
    hosts = await resolve_mx("big.example", options)
    assert len(hosts) == 20 and [h.preference for h in hosts] == list(range(20))
    asked = [(t, n) for t, n, rdtype in server.queries if rdtype == "MX"]
    assert ("udp", "big.example.") in asked and ("tcp", "big.example.") in asked


async def test_resolve_addresses_of_unknown_name_is_empty(options):
    assert await resolve_addresses("nope.example", options) == ()
