"""The lab name server over real UDP and TCP on loopback, queried with dnspython."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from connectwiz.lab.dns import DNSServer
from connectwiz.lab.zones import BIG_MX_COUNT, CORPUS, DOMAINS, ROUTES, build_zone

pytestmark = pytest.mark.network


@pytest.fixture
async def server() -> AsyncIterator[DNSServer]:
    s = DNSServer([build_zone(DOMAINS, ROUTES)])
    await s.start()
    yield s
    await s.stop()


def _resolver(server: DNSServer) -> dns.asyncresolver.Resolver:
    r = dns.asyncresolver.Resolver(configure=False)
    r.nameservers = [server.host]
    r.port = server.port
    r.lifetime = 2.0
    return r


async def _raw(server: DNSServer, name: str, rdtype: str, *, tcp: bool = False,
               payload: int | None = None) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=0 if payload else None,
                               payload=payload or 1232)
    if tcp:
        return await dns.asyncquery.tcp(q, server.host, port=server.port, timeout=2)
    return await dns.asyncquery.udp(q, server.host, port=server.port, timeout=2)


async def test_a_record_over_udp_and_tcp(server: DNSServer) -> None:
    r = _resolver(server)
    udp = await r.resolve("mx.trusted.example", "A")
    tcp = await r.resolve("mx.trusted.example", "A", tcp=True)
    assert [a.address for a in udp] == [a.address for a in tcp] == ["127.0.0.10"]
    assert ("udp", "mx.trusted.example.", "A") in server.queries
    assert ("tcp", "mx.trusted.example.", "A") in server.queries


async def test_answers_are_authoritative_and_not_recursive(server: DNSServer) -> None:
    reply = await _raw(server, "trusted.example", "MX")
    assert reply.flags & dns.flags.AA
    assert not reply.flags & dns.flags.RA


async def test_large_answer_is_truncated_over_udp_and_resolver_retries_over_tcp(
        server: DNSServer) -> None:
    for payload in (None, 1232, 4096):
        udp = await _raw(server, "big.example", "MX", payload=payload)
        assert udp.flags & dns.flags.TC, payload
        assert not udp.answer
    answer = await _resolver(server).resolve("big.example", "MX")
    assert len(answer) == BIG_MX_COUNT
    seen = [t for t, name, rdtype in server.queries if name == "big.example." and rdtype == "MX"]
    assert "udp" in seen and "tcp" in seen


async def test_nxdomain_has_soa_in_authority(server: DNSServer) -> None:
    reply = await _raw(server, "nxdomain.example", "MX")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.authority[0].rdtype == dns.rdatatype.SOA
    with pytest.raises(dns.resolver.NXDOMAIN):
        await _resolver(server).resolve("nxdomain.example", "MX")


@pytest.mark.parametrize(("name", "rdtype"), [
    ("mx.trusted.example", "AAAA"),      # the name has an A record only
    ("noemx.example", "MX"),             # an A record, no MX
    ("cname-target.example", "A"),       # an empty non-terminal (only a name below it exists)
])
async def test_nodata_is_noerror_with_empty_answer_and_soa(
        server: DNSServer, name: str, rdtype: str) -> None:
    reply = await _raw(server, name, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    assert not reply.answer
    assert reply.authority[0].rdtype == dns.rdatatype.SOA
    with pytest.raises(dns.resolver.NoAnswer):
        await _resolver(server).resolve(name, rdtype)


async def test_null_mx(server: DNSServer) -> None:
    answer = await _resolver(server).resolve("nullmx.example", "MX")
    assert [(mx.preference, mx.exchange.to_text()) for mx in answer] == [(0, ".")]


async def test_mx_target_that_is_a_cname_is_followed(server: DNSServer) -> None:
    r = _resolver(server)
    mx = await r.resolve("cname-mx.example", "MX")
    assert mx[0].exchange.to_text() == "mail.cname-mx.example."
    a = await r.resolve("mail.cname-mx.example", "A")
    assert a.canonical_name.to_text() == "mx.cname-target.example."
    assert [x.address for x in a] == ["127.0.0.27"]
    reply = await _raw(server, "mail.cname-mx.example", "A")
    assert [rr.rdtype for rr in reply.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]


async def test_idn_domain_is_served_under_its_a_label(server: DNSServer) -> None:
    answer = await _resolver(server).resolve("xn--bcher-kva.example", "MX")
    assert answer[0].exchange.to_text() == "mx.xn--bcher-kva.example."


async def test_servfail_name(server: DNSServer) -> None:
    reply = await _raw(server, "servfail.example", "MX")
    assert reply.rcode() == dns.rcode.SERVFAIL


@pytest.mark.parametrize("tcp", [False, True])
async def test_silent_name_never_answers(server: DNSServer, tcp: bool) -> None:
    with pytest.raises(dns.exception.Timeout):
        q = dns.message.make_query("dnstimeout.example", "MX")
        if tcp:
            await dns.asyncquery.tcp(q, server.host, port=server.port, timeout=0.3)
        else:
            await dns.asyncquery.udp(q, server.host, port=server.port, timeout=0.3)


async def test_names_outside_the_zone_are_refused_not_forwarded(server: DNSServer) -> None:
    for tcp in (False, True):
        reply = await _raw(server, "www.example.com", "A", tcp=tcp)
        assert reply.rcode() == dns.rcode.REFUSED
        assert not reply.answer


async def test_garbage_is_survived(server: DNSServer) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=server.address)
    transport.sendto(b"\x12\x34garbage that is not dns")
    transport.close()
    reply = await _raw(server, "trusted.example", "MX")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer


def test_every_lab_host_resolves_in_the_zone() -> None:
    zone = build_zone(DOMAINS + CORPUS, ROUTES)
    for d in (*DOMAINS, *CORPUS, *ROUTES):
        for h in d.hosts:
            name = dns.name.from_text(h.name)
            assert zone.exists(name), h.name
