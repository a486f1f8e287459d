"""The whole lab: CA + DNS + SMTP servers, as an async context manager or in a thread.

    async with Lab(smtp_port=0) as lab:           # in an event loop
        ...lab.nameserver, lab.smtp_port, lab.ca_file, lab.domains...

    handle = run_in_thread(smtp_port=0)           # for sync code, pytest, the TUI
    ...
    handle.stop()
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connectwiz.lab.ca import LabCA, LeafShape, spki_sha256
from connectwiz.lab.dns import DNSServer, Zone
from connectwiz.lab.https import PolicyServer
from connectwiz.lab.smtp import (
    PROFILES,
    LabMessage,
    LabSession,
    Recorder,
    SMTPServer,
    server_context,
)
from connectwiz.lab.zones import (
    BENCH_SUFFIX,
    CNAMES,
    CORPUS,
    CORPUS_ROUTES,
    DANE_ALIAS_TARGET,
    DOMAINS,
    MTA_STS_PAGES,
    REFUSED_PROFILE,
    ROUTES,
    STS_ADDRESS,
    TLS_RPT_HOSTS,
    V6_DOMAIN,
    LabDomain,
    LabHost,
    bench_domains,
    build_zone,
)

WRONG_NAME = "not-this-host.example"  # what the "wrongname" profile's certificate names
_ALL_ROUTES = ROUTES + CORPUS_ROUTES

# The differential corpus's certificate shapes (SmtpProfile.cert -> how the leaf departs from
# a well-formed one); wildcard, notyetvalid, rsa1024, ipsan and sni are built in _issue_for.
CORPUS_CERTS: dict[str, LeafShape] = {
    "sancritical": LeafShape(san_critical=True),
    "cnonly": LeafShape(cn_only=True),
    "nointermediate": LeafShape(intermediate="missing"),
    "intermediate": LeafShape(intermediate="sent"),
    "sha1": LeafShape(sha1=True),
    "clientauth": LeafShape(client_auth_only=True),
}
_SINK_FIRST = 100  # sinks added at run time get 127.0.0.100 upward


class Lab:
    """CA, DNS server on 127.0.0.1 and one SMTP server per lab host, all on loopback.

    ``smtp_port``: the one port every lab SMTP server listens on (each on its own 127.0.0.x);
    0 picks a free one. ``greeting_delay``: seconds the slow servers wait before greeting.
    ``extra_slow_domains``: that many extra strict domains (``dNNNN.bench.example``), each
    with its own slow server on its own address, for concurrency benchmarks.
    ``ipv6``: also serve ``v6.example``, whose MX has only an AAAA record (::1).
    ``https_port``: where the MTA-STS policy server listens (on 127.0.0.40); 0 picks a free one.
    """

    def __init__(self, smtp_port: int = 0, *, dns_port: int = 0, https_port: int = 0,
                 directory: Path | str | None = None, greeting_delay: float = 1.5,
                 extra_slow_domains: int = 0, ipv6: bool = False) -> None:
        self._requested_port = smtp_port
        self._dns_port = dns_port
        self._own_dir = directory is None
        self.directory = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="cwlab-"))
        self.greeting_delay = greeting_delay
        self.recorder = Recorder()
        self.ca = LabCA(self.directory / "ca")
        self.ca_file: Path = self.ca.ca_file
        all_domains = (DOMAINS + CORPUS + ((V6_DOMAIN,) if ipv6 else ())
                       + bench_domains(extra_slow_domains))
        self.domains: dict[str, LabDomain] = {d.name: d for d in all_domains}
        self.expected_routes: dict[str, LabDomain] = {r.name: r for r in ROUTES}  # the demo's
        self.zone: Zone = build_zone(all_domains, _ALL_ROUTES)
        self.dns = DNSServer([self.zone], port=dns_port)
        self.smtp_port = smtp_port
        self.servers: dict[str, SMTPServer] = {}  # by address
        self._hosts: dict[str, LabHost] = {}
        self._sinks = 0
        self._extra_dns: list[DNSServer] = []
        self._extra_https: list[PolicyServer] = []
        self._build_servers(all_domains)
        sts_cert, sts_key = self.ca.issue([f"mta-sts.{d}" for d in MTA_STS_PAGES]
                                          + list(TLS_RPT_HOSTS))
        self.policy_server = PolicyServer(STS_ADDRESS, https_port,
                                          server_context(sts_cert, sts_key),
                                          {f"mta-sts.{d}": p for d, p in MTA_STS_PAGES.items()},
                                          frozenset(TLS_RPT_HOSTS))

    # -- public view -----------------------------------------------------------------------

    @property
    def nameserver(self) -> tuple[str, int]:
        return self.dns.address

    @property
    def https_port(self) -> int:
        """The port of the MTA-STS policy server (validate's --https-port)."""
        return self.policy_server.port

    @property
    def routes(self) -> list[tuple[str, int]]:
        """Sample inbound routes (internal servers): trusted, self-signed, no STARTTLS."""
        return [(r.name, self.smtp_port) for r in ROUTES]

    @property
    def sessions(self) -> list[LabSession]:
        return self.recorder.sessions

    @property
    def messages(self) -> list[LabMessage]:
        return self.recorder.messages

    def info(self) -> dict[str, Any]:
        host, port = self.nameserver
        return {
            "nameserver": f"{host}:{port}",
            "smtp_port": self.smtp_port,
            "https_port": self.https_port,
            "ca_file": str(self.ca_file),
            "domains": {d.name: d.expected for d in self.domains.values()
                        if not d.name.endswith(BENCH_SUFFIX)},
            "routes": [f"{h}:{p}" for h, p in self.routes],
        }

    def address_of(self, host: str) -> str:
        """The loopback address a lab host name resolves to."""
        return self._hosts[host.lower().rstrip(".")].address

    def sessions_to(self, host: str) -> list[LabSession]:
        """Sessions the server behind ``host`` has seen so far."""
        address = self.address_of(host)
        return [s for s in list(self.sessions) if s.address[0] == address]

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Lab:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.dns.start()
        try:
            await self._start_smtp()
            await self.policy_server.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers.values()),
                             self.policy_server.stop(), *(p.stop() for p in self._extra_https),
                             return_exceptions=True)
        for extra in self._extra_dns:
            await extra.stop()
        await self.dns.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    async def add_nameserver(self, host: str, port: int) -> None:
        """Serve the lab zone on ``host:port`` too: a peer that resolves only through
        /etc/resolv.conf (Postfix, posttls-finger) needs a name server on port 53."""
        server = DNSServer([self.zone], host=host, port=port)
        await server.start()
        self._extra_dns.append(server)

    async def add_policy_server(self, host: str, port: int) -> None:
        """Serve the MTA-STS policies on ``host:port`` too: a peer that fetches them only
        from port 443 (postfix-mta-sts-resolver) needs them there."""
        main = self.policy_server
        server = PolicyServer(host, port, main.context, main.pages, main.report_hosts)
        await server.start()
        self._extra_https.append(server)

    async def add_sink(self, names: list[str], profile: str = "trusted") -> tuple[str, int]:
        """A new server with ``profile`` (default: trusted, accepts everything) for ``names``.

        The names get A records in the lab DNS and go into the certificate. Returns the
        server's (address, port); the port is the lab's ``smtp_port``.
        """
        self._sinks += 1
        address = f"127.0.0.{_SINK_FIRST + self._sinks}"
        hosts = [LabHost(n.lower().rstrip("."), address, profile) for n in names]
        server = self._server_for(hosts)
        await server.start()
        for h in hosts:
            self._hosts[h.name] = h
            self.zone.add(f"{h.name}.", "A", address)
        return address, server.port

    # -- internals ------------------------------------------------------------------------

    def _build_servers(self, domains: tuple[LabDomain, ...]) -> None:
        by_address: dict[str, list[LabHost]] = {}
        for h in (h for d in (*domains, *_ALL_ROUTES) for h in d.hosts):
            self._hosts[h.name] = h
            if h.profile != REFUSED_PROFILE:
                by_address.setdefault(h.address, []).append(h)
        bench = [hs for hs in by_address.values() if hs[0].name.endswith(BENCH_SUFFIX)]
        bench_ctx = None
        if bench:  # one wildcard certificate serves every benchmark host
            cert, key = self.ca.issue([f"*.{BENCH_SUFFIX}"])
            bench_ctx = server_context(cert, key)
        for hosts in by_address.values():
            ctx = bench_ctx if hosts[0].name.endswith(BENCH_SUFFIX) else None
            self._server_for(hosts, ctx)
        self._add_tlsa()
        self._add_implicit_tlsa()

    def _add_tlsa(self) -> None:
        """TLSA 3 1 1 records, answered with AD (and the domains' MX and the MX hosts'
        addresses too): trusted and dane-ok match, dane-bad does not."""
        shared = self.servers[self.address_of("mx.trusted.example")].cert_path
        own = self.servers[self.address_of("mx.dane-ok.example")].cert_path
        assert shared is not None and own is not None
        # dane-bad's MX presents the "own" key; its record pins the key every other host shares.
        for host, cert in (("mx.trusted.example", shared), ("mx.dane-ok.example", own),
                           ("mx.dane-bad.example", shared)):
            self.zone.add(f"_25._tcp.{host}.", "TLSA", f"3 1 1 {spki_sha256(cert)}")
            self.zone.add_authenticated(f"_25._tcp.{host}.")
            # The MX RRset is "signed" too: RFC 7672 DANE starts from a validated MX lookup.
            self.zone.add_authenticated(f"{host.removeprefix('mx.')}.")
            # And the MX host's address: Postfix looks TLSA up only for a validated one.
            self.zone.add_authenticated(f"{host}.")

    def _add_implicit_tlsa(self) -> None:
        """The DANE domains without MX (implicit MX), whose address records are answered with
        AD (RFC 7672 §2.2.2 starts from them): dane-nomx matches, dane-nomx-bad does not,
        dane-alias matches at its CNAME target only."""
        shared = self.servers[self.address_of("mx.trusted.example")].cert_path
        own = self.servers[self.address_of("mx.dane-ok.example")].cert_path
        assert shared is not None and own is not None
        for domain, tlsa_at, cert in (("dane-nomx.example", "dane-nomx.example", own),
                                      ("dane-nomx-bad.example", "dane-nomx-bad.example", shared),
                                      ("dane-alias.example", DANE_ALIAS_TARGET, own)):
            self.zone.add(f"_25._tcp.{tlsa_at}.", "TLSA", f"3 1 1 {spki_sha256(cert)}")
            self.zone.add_authenticated(f"_25._tcp.{tlsa_at}.")
            self.zone.add_authenticated(f"{domain}.")

    def _server_for(self, hosts: list[LabHost],
                    ctx: ssl.SSLContext | None = None) -> SMTPServer:
        profile = PROFILES[hosts[0].profile]
        names = [h.name for h in hosts]
        names += [CNAMES[n] for n in names if n in CNAMES]
        cert_path = None
        if ctx is None:
            cert_path, key = self._issue_for(profile.cert, names, hosts[0].address)
            ctx = server_context(cert_path, key, tls10_only=profile.tls10_only,
                                 legacy_crypto=profile.legacy_crypto,
                                 tls12_ciphers=profile.tls12_ciphers)
            if profile.cert == "sni":
                # The lab-CA certificate only for a client that names the host; anyone else
                # (no SNI, another name) gets one for another name.
                ctx = _by_sni(ctx, names, server_context(*self.ca.issue([WRONG_NAME])))
        server = SMTPServer(profile, names[0], hosts[0].address, self.smtp_port, ctx,
                            self.recorder, self.greeting_delay, cert_path)
        self.servers[hosts[0].address] = server
        return server

    def _issue_for(self, kind: str, names: list[str], address: str) -> tuple[Path, Path]:
        """The certificate (and key) a server whose profile says ``cert=kind`` presents."""
        now = dt.datetime.now(dt.UTC)
        if kind == "selfsigned":
            return self.ca.self_signed(names)
        if kind == "expired":
            return self.ca.issue(names, not_before=now - dt.timedelta(days=400),
                                 not_after=now - dt.timedelta(days=30))
        if kind == "wrongname":
            return self.ca.issue([WRONG_NAME])
        if kind == "ownkey":
            return self.ca.issue(names, key_label="dane")
        if kind == "wildcard":
            return self.ca.issue(["*." + n.split(".", 1)[1] for n in names])
        if kind == "notyetvalid":
            return self.ca.issue(names, not_before=now + dt.timedelta(days=30),
                                 not_after=now + dt.timedelta(days=400))
        if kind in ("rsa", "rsa1024"):  # rsa: RSA key exchange needs an RSA key
            return self.ca.issue(names, key_type=kind)
        if kind == "ipsan":
            return self.ca.issue([], shape=LeafShape(ips=(address,)))
        return self.ca.issue(names, shape=CORPUS_CERTS.get(kind, LeafShape()))

    async def _start_smtp(self) -> None:
        servers = list(self.servers.values())
        for _attempt in range(20):
            port = self._requested_port
            started: list[SMTPServer] = []
            try:
                for s in servers:
                    s.port = port
                    port = await s.start()
                    started.append(s)
            except OSError as exc:
                await asyncio.gather(*(s.stop() for s in started))
                # An ephemeral port free on the first address may be taken on another: retry.
                if self._requested_port or exc.errno != errno.EADDRINUSE:
                    raise
                continue
            self.smtp_port = port
            return
        raise OSError(errno.EADDRINUSE, "no SMTP port free on every lab address")


def ipv6_loopback_available() -> bool:
    """Whether ::1 can be bound here (IPv6 may be disabled in containers)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class LabHandle:
    """A lab running in its own thread and event loop; the attributes mirror :class:`Lab`."""

    def __init__(self, lab: Lab, loop: asyncio.AbstractEventLoop, thread: threading.Thread,
                 stop_event: asyncio.Event) -> None:
        self.lab = lab
        self._loop, self._thread, self._stop_event = loop, thread, stop_event
        self.nameserver = lab.nameserver
        self.smtp_port = lab.smtp_port
        self.https_port = lab.https_port
        self.ca_file = lab.ca_file
        self.ca = lab.ca
        self.domains = lab.domains
        self.expected_routes = lab.expected_routes
        self.routes = lab.routes
        self.sessions = lab.sessions  # the live lists: read them, do not modify them
        self.messages = lab.messages
        self.report_posts = lab.policy_server.posts  # TLS-RPT https: reports received

    def info(self) -> dict[str, Any]:
        return self.lab.info()

    def address_of(self, host: str) -> str:
        return self.lab.address_of(host)

    def sessions_to(self, host: str) -> list[LabSession]:
        return self.lab.sessions_to(host)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate()`` is true (checked whenever a session changes)."""
        return self.lab.recorder.wait_for(predicate, timeout)

    def add_nameserver(self, host: str, port: int) -> None:
        asyncio.run_coroutine_threadsafe(
            self.lab.add_nameserver(host, port), self._loop).result(timeout=30)

    def add_policy_server(self, host: str, port: int) -> None:
        asyncio.run_coroutine_threadsafe(
            self.lab.add_policy_server(host, port), self._loop).result(timeout=30)

    def add_sink(self, names: list[str], profile: str = "trusted") -> tuple[str, int]:
        return asyncio.run_coroutine_threadsafe(
            self.lab.add_sink(names, profile), self._loop).result(timeout=30)

    def add_record(self, name: str, rdtype: str, value: str) -> None:
        """Publish one more DNS record (absolute name), e.g. a test domain's TLS-RPT TXT."""
        self._loop.call_soon_threadsafe(self.lab.zone.add, name, rdtype, value)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join()

    def __enter__(self) -> LabHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_in_thread(**kw: Any) -> LabHandle:
    """Start ``Lab(**kw)`` in a daemon thread with its own loop; returns once it serves."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        try:
            lab = Lab(**kw)
            await lab.start()
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            return
        box["lab"], box["loop"], box["stop"] = lab, asyncio.get_running_loop(), stop
        ready.set()
        try:
            await stop.wait()
        finally:
            await lab.stop()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="connectwiz-lab",
                              daemon=True)
    thread.start()
    ready.wait()
    if "error" in box:
        thread.join()
        raise box["error"]
    return LabHandle(box["lab"], box["loop"], thread, box["stop"])


def _by_sni(named: ssl.SSLContext, names: list[str],
            default: ssl.SSLContext) -> ssl.SSLContext:
    """``default`` for clients without SNI (or another name), ``named`` for one of ``names``."""

    def pick(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name is not None and server_name.lower() in names:
            sslobj.context = named

    default.sni_callback = pick
    return default
