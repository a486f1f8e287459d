"""The Lab as a whole: async use, benchmark domains, thread runner, the domain table."""

from __future__ import annotations

import asyncio
import socket
import ssl

import dns.asyncresolver
import dns.resolver
import pytest

from connectwiz.lab import (
    CORPUS,
    CORPUS_ROUTES,
    DOMAINS,
    ROUTES,
    Lab,
    LabHandle,
    ipv6_loopback_available,
    run_in_thread,
)
from connectwiz.policy.domains import normalize_domain

pytestmark = pytest.mark.network


def test_domain_table_is_consistent() -> None:
    everything = (*DOMAINS, *CORPUS, *ROUTES, *CORPUS_ROUTES)
    names = [d.name for d in everything]
    assert len(names) == len(set(names))
    for d in everything:
        assert d.expected in ("strict", "relaxed", "unsupported", "error"), d
        if d not in CORPUS_ROUTES:  # those are IP addresses
            assert normalize_domain(d.name) == d.name  # what validate reports as "target"
        assert d.reason and d.description
        if d.expected != "error":
            assert d.hosts, f"{d.name} needs a host to reach"
    addresses = [h.address for d in everything for h in d.hosts
                 if not h.name.endswith(".big.example")]  # big.example: many names, one server
    assert len(addresses) == len(set(addresses)), "one address per lab host"
    assert {d.display for d in DOMAINS} >= {"bücher.example"}


async def test_async_lab_with_benchmark_domains() -> None:
    async with Lab(smtp_port=0, extra_slow_domains=3, greeting_delay=0.2) as lab:
        bench = [d for d in lab.domains.values() if d.name.endswith(".bench.example")]
        assert len(bench) == 3
        addresses = {d.hosts[0].address for d in bench}
        assert len(addresses) == 3 and all(a.startswith("127.1.") for a in addresses)
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers, r.port = [lab.nameserver[0]], lab.nameserver[1]
        ctx = ssl.create_default_context(cafile=str(lab.ca_file))
        for d in bench:
            assert d.expected == "strict"
            host = (await r.resolve(d.name, "MX"))[0].exchange.to_text(omit_final_dot=True)
            address = (await r.resolve(host, "A"))[0].address
            assert address == d.hosts[0].address
            reader, writer = await asyncio.open_connection(address, lab.smtp_port)
            assert (await reader.readline()).startswith(f"220 {host} ".encode())
            writer.write(b"EHLO c.test\r\nSTARTTLS\r\n")
            while not (await reader.readline()).startswith(b"220 "):
                pass
            await writer.start_tls(ctx, server_hostname=host)  # wildcard *.bench.example
            writer.close()
        # A tarpit connection left open must not hold up stopping the lab.
        _r, tarpit = await asyncio.open_connection(lab.address_of("mx.tarpit.example"),
                                                   lab.smtp_port)
        directory = lab.directory
    assert not directory.exists()
    tarpit.close()


def test_run_in_thread_reports_start_failure() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.10", 0))
        blocker.listen()
        with pytest.raises(OSError):
            run_in_thread(smtp_port=blocker.getsockname()[1])


def test_shared_lab_fixture(lab: LabHandle) -> None:
    info = lab.info()
    assert info["nameserver"] == f"127.0.0.1:{lab.nameserver[1]}"
    assert info["smtp_port"] == lab.smtp_port > 0
    assert info["ca_file"] == str(lab.ca_file) and lab.ca_file.is_file()
    assert lab.routes == [(r.name, lab.smtp_port) for r in ROUTES]
    assert set(lab.domains) == {d.name for d in (*DOMAINS, *CORPUS)}


@pytest.mark.skipif(not ipv6_loopback_available(), reason="::1 cannot be bound on this host")
async def test_ipv6_lab_domain() -> None:
    async with Lab(smtp_port=0, ipv6=True) as lab:
        assert lab.domains["v6.example"].expected == "strict"
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers, r.port = [lab.nameserver[0]], lab.nameserver[1]
        host = (await r.resolve("v6.example", "MX"))[0].exchange.to_text(omit_final_dot=True)
        assert [a.address for a in await r.resolve(host, "AAAA")] == ["::1"]
        with pytest.raises(dns.resolver.NoAnswer):
            await r.resolve(host, "A")
        reader, writer = await asyncio.open_connection("::1", lab.smtp_port)
        assert (await reader.readline()).startswith(b"220 mx.v6.example ")
        writer.write(b"EHLO c.test\r\nSTARTTLS\r\n")
        while not (await reader.readline()).startswith(b"220 "):
            pass
        await writer.start_tls(ssl.create_default_context(cafile=str(lab.ca_file)),
                               server_hostname=host)
        writer.close()
