"""An authoritative-only DNS server for the lab: in-memory zones over UDP and TCP on loopback.

It never recurses or forwards: names outside its zones get REFUSED, names inside that do
not exist get NXDOMAIN (with the zone's SOA in the authority section), existing names
without the asked type get NODATA (NOERROR, empty answer, SOA). Names can be marked to
answer SERVFAIL or to never answer at all. UDP answers larger than the client's limit
(512 bytes, or its EDNS size capped at 1232) come back with TC set so resolvers retry
over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

UDP_PAYLOAD_CAP = 1232  # the DNS flag day 2020 size: bigger UDP answers fragment badly
_MAX_CNAME_CHAIN = 8


@dataclass
class Zone:
    """One zone: an origin, its SOA, and records kept as text (``{name: {type: [rdata]}}``)."""

    origin: dns.name.Name
    ttl: int = 60
    records: dict[dns.name.Name, dict[dns.rdatatype.RdataType, list[str]]] = field(
        default_factory=dict)
    servfail: set[dns.name.Name] = field(default_factory=set)
    silent: set[dns.name.Name] = field(default_factory=set)
    # Names whose answers carry the AD bit when the query asks for DNSSEC (DO or AD): the lab
    # server plays the part of a validating resolver for them.
    authenticated: set[dns.name.Name] = field(default_factory=set)
    _existing: set[dns.name.Name] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        o = self.origin.to_text()
        self.add(o, "SOA", f"ns.{o} hostmaster.{o} 1 3600 600 86400 {self.ttl}")
        self.add(o, "NS", f"ns.{o}")

    def _name(self, name: str) -> dns.name.Name:
        n = dns.name.from_text(name, origin=None if name.endswith(".") else dns.name.root)
        if not n.is_subdomain(self.origin):
            raise ValueError(f"{name} is not inside zone {self.origin}")
        return n

    def add(self, name: str, rdtype: str, value: str) -> None:
        """Add one record, e.g. ``add("example.", "MX", "10 mx.example.")`` (names are absolute)."""
        n = self._name(name)
        self.records.setdefault(n, {}).setdefault(dns.rdatatype.from_text(rdtype), []).append(
            value)
        # Every ancestor up to the origin exists too (an empty non-terminal answers NODATA).
        while n != self.origin and n not in self._existing:
            self._existing.add(n)
            n = n.parent()
        self._existing.add(self.origin)

    def add_servfail(self, name: str) -> None:
        self.servfail.add(self._name(name))

    def add_authenticated(self, name: str) -> None:
        self.authenticated.add(self._name(name))

    def add_silent(self, name: str) -> None:
        """Queries for this name (and below it) are read and never answered."""
        self.silent.add(self._name(name))

    def rrset(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.rrset.RRset | None:
        texts = self.records.get(name, {}).get(rdtype)
        if not texts:
            return None
        return dns.rrset.from_text_list(name, self.ttl, dns.rdataclass.IN, rdtype, texts)

    def soa(self) -> dns.rrset.RRset:
        soa = self.rrset(self.origin, dns.rdatatype.SOA)
        assert soa is not None  # added in __post_init__
        return soa

    def exists(self, name: dns.name.Name) -> bool:
        return name in self._existing


class DNSServer:
    """Serves ``zones`` on ``host`` over UDP and TCP on one port (0 picks a free one)."""

    def __init__(self, zones: list[Zone], host: str = "127.0.0.1", port: int = 0) -> None:
        self.zones = zones
        self.host = host
        self.port = port
        # (transport, name, type) of recent queries, for tests; bounded for long-running labs
        self.queries: deque[tuple[str, str, str]] = deque(maxlen=10_000)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._held: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(20):  # an ephemeral UDP port may be taken for TCP: pick again
            udp, _proto = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self), local_addr=(self.host, self.port))
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError:
                udp.close()
                if self.port:
                    raise
                continue
            self._udp, self.port = udp, port
            return
        raise OSError(f"no port free for both UDP and TCP on {self.host}")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for w in list(self._held):
                w.close()
            await self._tcp.wait_closed()

    def _zone_for(self, name: dns.name.Name) -> Zone | None:
        best = None
        for z in self.zones:
            if name.is_subdomain(z.origin) and (best is None or z.origin.is_subdomain(best.origin)):
                best = z
        return best

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The reply to one query, or None to stay silent (garbage, or a 'silent' name)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _formerr(wire)
        if query.flags & dns.flags.QR:
            return None
        response = dns.message.make_response(query)
        response.flags &= ~dns.flags.RA  # authoritative only, never recursive
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY
                               else dns.rcode.FORMERR)
            return response.to_wire()
        q = query.question[0]
        self.queries.append((transport, q.name.to_text(), dns.rdatatype.to_text(q.rdtype)))
        zone = self._zone_for(q.name)
        if zone is None or q.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response.to_wire()
        if any(q.name.is_subdomain(n) for n in zone.silent):
            return None
        if any(q.name.is_subdomain(n) for n in zone.servfail):
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        response.flags |= dns.flags.AA
        self._resolve(zone, q.name, q.rdtype, response)
        wants_dnssec = query.flags & dns.flags.AD or query.ednsflags & dns.flags.DO
        if wants_dnssec and q.name in zone.authenticated and response.answer:
            response.flags |= dns.flags.AD
        limit = 65535
        if transport == "udp":
            limit = min(max(query.payload, 512), UDP_PAYLOAD_CAP) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)

    def _resolve(self, zone: Zone, name: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                 response: dns.message.Message) -> None:
        for _ in range(_MAX_CNAME_CHAIN):
            rrset = zone.rrset(name, rdtype)
            if rrset is not None:
                response.answer.append(rrset)
                return
            cname = zone.rrset(name, dns.rdatatype.CNAME)
            if cname is None or rdtype == dns.rdatatype.ANY:
                break
            response.answer.append(cname)
            name = cname[0].target
            if not name.is_subdomain(zone.origin):
                return  # out of zone: the resolver follows it itself
        if not zone.exists(name):
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(zone.soa())

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._held.add(writer)
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.answer(await reader.readexactly(length), "tcp")
                if reply is None:
                    await reader.read()  # silent: hold the connection until the client gives up
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._held.discard(writer)
            writer.close()


def _formerr(wire: bytes) -> bytes | None:
    if len(wire) < 12:
        return None
    flags = dns.flags.QR | int(dns.rcode.FORMERR)
    return wire[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's UDP transport does not subclass asyncio.DatagramTransport (3.11): cast.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.answer(data, "udp")
        if reply is not None and self.transport is not None:
            with contextlib.suppress(OSError):
                self.transport.sendto(reply, addr)
