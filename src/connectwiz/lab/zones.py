"""What the lab serves: domains, their mail hosts, each host's SMTP profile, and the verdict
a correct validator must reach for each domain (so tests and the demo can be table-driven).

Every host gets its own loopback address (127.0.0.10 upward); ``refused`` hosts get an
address where nothing listens. Benchmark domains (``bench.example``) live at 127.1.x.y, one
address and one server each, so a prober that groups by server cannot cheat.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.name
import idna

from connectwiz.lab.dns import Zone
from connectwiz.lab.https import Page

STRICT, RELAXED, UNSUPPORTED, ERROR = "strict", "relaxed", "unsupported", "error"
REFUSED_PROFILE = "refused"  # a host whose address has nothing listening
BENCH_SUFFIX = "bench.example"


@dataclass(frozen=True, slots=True)
class LabHost:
    name: str  # A-label, no trailing dot
    address: str
    profile: str  # a key of connectwiz.lab.smtp.PROFILES, or "refused"
    preference: int | None = None  # MX preference; None for an implicit MX or a route


@dataclass(frozen=True, slots=True)
class LabDomain:
    name: str  # A-label, no trailing dot: what validate reports as "target"
    expected: str  # strict | relaxed | unsupported | error
    reason: str  # a keyword naming what the domain demonstrates
    description: str
    hosts: tuple[LabHost, ...] = ()  # the hosts a validator should try, best preference first

    @property
    def display(self) -> str:
        """The name as a person reads it (U-label for IDNs)."""
        return idna.decode(self.name) if "xn--" in self.name else self.name


def _addr(n: int) -> str:
    return f"127.0.0.{n}"


def _mx(domain: str, n: int, profile: str) -> tuple[LabHost, ...]:
    return (LabHost(f"mx.{domain}", _addr(n), profile, 10),)


# Host names that are CNAMEs (alias -> target): the target holds the address, the server's
# certificate names both.
CNAME_ALIAS, CNAME_TARGET = "mail.cname-mx.example", "mx.cname-target.example"
DANE_ALIAS_TARGET = "mail.dane-alias-target.example"
CNAMES = {CNAME_ALIAS: CNAME_TARGET, "dane-alias.example": DANE_ALIAS_TARGET}

BIG_LABEL_PAD = "a-long-label-so-the-mx-answer-outgrows-a-udp-packet"
BIG_MX_COUNT = 18  # 18 x ~77 bytes > 1232: truncated over UDP even with EDNS

_BIG_HOSTS = tuple(
    LabHost(f"mx{i:02d}-{BIG_LABEL_PAD}.big.example", _addr(29), "trusted", 10)
    for i in range(1, BIG_MX_COUNT + 1)
)

DOMAINS: tuple[LabDomain, ...] = (
    LabDomain("trusted.example", STRICT, "ok",
              "lab-CA certificate matching the MX name, TLS 1.2+; publishes MTA-STS enforce, "
              "TLS-RPT and a matching TLSA 3 1 1",
              _mx("trusted.example", 10, "trusted")),
    LabDomain("selfsigned.example", RELAXED, "self_signed",
              "TLS works but the certificate is self-signed",
              _mx("selfsigned.example", 11, "selfsigned")),
    LabDomain("expired.example", RELAXED, "expired",
              "certificate from the lab CA whose validity ended 30 days ago",
              _mx("expired.example", 12, "expired")),
    LabDomain("wrongname.example", RELAXED, "hostname_mismatch",
              "lab-CA certificate issued to another name",
              _mx("wrongname.example", 13, "wrongname")),
    LabDomain("nostarttls.example", UNSUPPORTED, "no_starttls",
              "the server does not offer STARTTLS",
              _mx("nostarttls.example", 14, "nostarttls")),
    LabDomain("tls10.example", UNSUPPORTED, "tls_version",
              "STARTTLS offered but only TLS 1.0 can be negotiated",
              _mx("tls10.example", 15, "tls10")),
    LabDomain("starttls454.example", UNSUPPORTED, "starttls_454",
              "STARTTLS advertised, the command answers 454 (TLS not available)",
              _mx("starttls454.example", 16, "starttls454")),
    LabDomain("greeting421.example", ERROR, "greeting_421",
              "the server greets with 421 (service not available) and hangs up",
              _mx("greeting421.example", 17, "greeting421")),
    LabDomain("slow.example", STRICT, "slow_greeting",
              "a trusted server that waits before its greeting (Lab greeting_delay)",
              _mx("slow.example", 18, "slow")),
    LabDomain("tarpit.example", ERROR, "timeout",
              "accepts the connection and never sends a greeting",
              _mx("tarpit.example", 19, "tarpit")),
    LabDomain("refused.example", ERROR, "refused",
              "the MX address has nothing listening: connection refused",
              _mx("refused.example", 20, REFUSED_PROFILE)),
    LabDomain("rejectrcpt.example", STRICT, "rcpt_rejected",
              "trusted TLS; RCPT TO is answered 550 5.1.1 (shows with --email)",
              _mx("rejectrcpt.example", 21, "rejectrcpt")),
    LabDomain("multiline.example", STRICT, "multiline_greeting",
              "trusted TLS behind a multi-line 220- greeting",
              _mx("multiline.example", 22, "multiline")),
    LabDomain("noemx.example", STRICT, "implicit_mx",
              "no MX record, an A record: the domain itself is the mail host",
              (LabHost("noemx.example", _addr(23), "trusted"),)),
    LabDomain("mixed.example", STRICT, "mixed",
              "three MX: trusted (10), self-signed (20), no STARTTLS (30): Enforced Strict "
              "delivers through mx1; mx2 and mx3 are warnings",
              (LabHost("mx1.mixed.example", _addr(24), "trusted", 10),
               LabHost("mx2.mixed.example", _addr(25), "selfsigned", 20),
               LabHost("mx3.mixed.example", _addr(26), "nostarttls", 30))),
    LabDomain("cname-mx.example", STRICT, "cname",
              "the MX target is a CNAME to mx.cname-target.example (certificate has both)",
              (LabHost("mail.cname-mx.example", _addr(27), "trusted", 10),)),
    LabDomain("xn--bcher-kva.example", STRICT, "idn",
              "internationalised name bücher.example (A-label xn--bcher-kva.example)",
              _mx("xn--bcher-kva.example", 28, "trusted")),
    LabDomain("big.example", STRICT, "tcp_fallback",
              f"{BIG_MX_COUNT} MX records: the UDP answer is truncated, resolvers retry over TCP",
              _BIG_HOSTS),
    LabDomain("sts-testing.example", STRICT, "mta_sts_testing",
              "MTA-STS in testing mode (mx: *.sts-testing.example); TLS-RPT with two addresses",
              _mx("sts-testing.example", 33, "trusted")),
    LabDomain("sts-mismatch.example", STRICT, "mta_sts_mx_mismatch",
              "MTA-STS enforce whose mx patterns do not cover the MX: flagged",
              _mx("sts-mismatch.example", 34, "trusted")),
    LabDomain("sts-relaxed.example", RELAXED, "mta_sts_enforce_relaxed",
              "MTA-STS enforce, but the MX certificate is self-signed: flagged",
              _mx("sts-relaxed.example", 35, "selfsigned")),
    LabDomain("dane-ok.example", STRICT, "dane_match",
              "TLSA 3 1 1 matching the MX's own key, DNSSEC-authenticated (AD)",
              _mx("dane-ok.example", 36, "ownkey")),
    LabDomain("dane-bad.example", STRICT, "dane_mismatch",
              "TLSA 3 1 1 naming another key than the MX presents, DNSSEC-authenticated",
              _mx("dane-bad.example", 37, "ownkey")),
    LabDomain("dane-nomx.example", STRICT, "dane_implicit_mx",
              "no MX record: the domain is its own MX; its A record and TLSA 3 1 1 at "
              "_25._tcp.dane-nomx.example (matching its own key) DNSSEC-authenticated",
              (LabHost("dane-nomx.example", _addr(41), "ownkey"),)),
    LabDomain("dane-nomx-bad.example", STRICT, "dane_implicit_mx_mismatch",
              "no MX record; authenticated TLSA 3 1 1 at _25._tcp.dane-nomx-bad.example "
              "naming another key than the host presents",
              (LabHost("dane-nomx-bad.example", _addr(42), "ownkey"),)),
    LabDomain("dane-alias.example", STRICT, "dane_implicit_mx_cname",
              f"no MX record; the domain is a CNAME to {DANE_ALIAS_TARGET}, whose "
              "authenticated TLSA matches (none at the alias itself)",
              (LabHost("dane-alias.example", _addr(43), "ownkey"),)),
    LabDomain("nullmx.example", ERROR, "null_mx",
              "null MX (0 .): the domain accepts no mail (RFC 7505)"),
    LabDomain("noaddress.example", ERROR, "no_address",
              "the MX host has no A or AAAA record"),
    LabDomain("nxdomain.example", ERROR, "nxdomain", "the domain does not exist"),
    LabDomain("servfail.example", ERROR, "servfail", "the name server answers SERVFAIL"),
    LabDomain("dnstimeout.example", ERROR, "dns_timeout",
              "the name server never answers queries for this name"),
)

# --- The differential corpus (tests/differential, docs/validate.md "Engines compared") ----
# Server shapes on which validate, the relay, posttls-finger and Postfix must agree. They live
# on 127.0.3.x, apart from the demo's domains above. ``expected`` is what the relay enforces
# (OpenSSL's judgement: Python's ssl and Postfix use the same library).


def _corpus_addr(n: int) -> str:
    return f"127.0.3.{n}"


def _corpus_mx(domain: str, n: int, profile: str) -> tuple[LabHost, ...]:
    return (LabHost(f"mx.{domain}", _corpus_addr(n), profile, 10),)


HOSTED_MX = "mx.hoster.example"  # serves hosted.example; its certificate names only itself
TEN_MX_WORKING = 3  # tenmx.example: the third of ten MX hosts is the only one listening

CORPUS: tuple[LabDomain, ...] = (
    LabDomain("sancritical.example", STRICT, "san_critical",
              "lab-CA certificate whose subjectAltName is marked critical (subject not empty; "
              "RFC 5280 says SHOULD NOT, OpenSSL accepts it)",
              _corpus_mx("sancritical.example", 10, "sancritical")),
    LabDomain("wildcard.example", STRICT, "wildcard",
              "certificate for *.wildcard.example only",
              _corpus_mx("wildcard.example", 11, "wildcard")),
    LabDomain("cnonly.example", STRICT, "cn_only",
              "certificate without subjectAltName: the MX name is only the subject CN",
              _corpus_mx("cnonly.example", 12, "cnonly")),
    LabDomain("nointermediate.example", RELAXED, "missing_intermediate",
              "leaf signed by the lab intermediate CA, which the server does not send",
              _corpus_mx("nointermediate.example", 13, "nointermediate")),
    LabDomain("intermediate.example", STRICT, "intermediate_sent",
              "leaf signed by the lab intermediate CA, sent after the leaf",
              _corpus_mx("intermediate.example", 14, "intermediate")),
    LabDomain("notyetvalid.example", RELAXED, "not_yet_valid",
              "lab-CA certificate valid from 30 days from now",
              _corpus_mx("notyetvalid.example", 15, "notyetvalid")),
    LabDomain("sha1.example", RELAXED, "sha1_leaf",
              "lab-CA certificate signed with SHA-1 (too weak for OpenSSL's default level)",
              _corpus_mx("sha1.example", 16, "sha1")),
    LabDomain("clientauth.example", RELAXED, "eku_client_auth",
              "lab-CA certificate whose extended key usage is clientAuth only",
              _corpus_mx("clientauth.example", 17, "clientauth")),
    LabDomain("rsa1024.example", RELAXED, "rsa_1024",
              "lab-CA certificate with a 1024-bit RSA key (too small for OpenSSL's default "
              "level)",
              _corpus_mx("rsa1024.example", 18, "rsa1024")),
    LabDomain("sni.example", STRICT, "sni_dependent",
              "the right certificate only when SNI names the MX; without SNI one for another "
              "name",
              _corpus_mx("sni.example", 19, "sni")),
    LabDomain("inject.example", STRICT, "starttls_injection",
              "trusted TLS, but the 220 to STARTTLS carries fake plaintext replies in the "
              "same packet (must be discarded)",
              _corpus_mx("inject.example", 20, "starttls_inject")),
    LabDomain("hosted.example", STRICT, "hosted_mx",
              f"MX {HOSTED_MX}, outside the domain; the certificate names only {HOSTED_MX}",
              (LabHost(HOSTED_MX, _corpus_addr(21), "trusted", 10),)),
    LabDomain("tenmx.example", STRICT, "ten_mx_one_working",
              f"ten MX hosts; only number {TEN_MX_WORKING} (preference "
              f"{TEN_MX_WORKING * 10}) listens, trusted",
              tuple(LabHost(f"mx{i:02d}.tenmx.example", _corpus_addr(30 + i),
                            "trusted" if i == TEN_MX_WORKING else REFUSED_PROFILE, i * 10)
                    for i in range(1, 11))),
)

# An inbound route given as an IP address, whose certificate names that address (IP SAN).
CORPUS_ROUTES: tuple[LabDomain, ...] = (
    LabDomain(_corpus_addr(22), STRICT, "ip_san",
              "route by IP address; the certificate has the address as an IP subjectAltName",
              (LabHost(_corpus_addr(22), _corpus_addr(22), "ipsan"),)),
)
# --- end of the differential corpus ------------------------------------------------------

# Opt-in (Lab(ipv6=True)): not every host has a usable ::1.
V6_DOMAIN = LabDomain("v6.example", STRICT, "ipv6",
                      "the MX host has only an AAAA record (::1), trusted TLS",
                      (LabHost("mx.v6.example", "::1", "trusted", 10),))

# Internal servers, validated as inbound routes (host[:port], no MX lookup).
ROUTES: tuple[LabDomain, ...] = (
    LabDomain("mail.corp.example", STRICT, "ok", "internal server with a lab-CA certificate",
              (LabHost("mail.corp.example", _addr(30), "trusted"),)),
    LabDomain("legacy.corp.example", RELAXED, "self_signed",
              "internal server with a self-signed certificate",
              (LabHost("legacy.corp.example", _addr(31), "selfsigned"),)),
    LabDomain("old.corp.example", UNSUPPORTED, "no_starttls",
              "internal server without STARTTLS",
              (LabHost("old.corp.example", _addr(32), "nostarttls"),)),
)

# MTA-STS: every mta-sts.<domain> host is served by one HTTPS server on this address.
STS_ADDRESS = _addr(40)
STS_ID = "20261101T000000"


def _policy(mode: str, *mx: str) -> Page:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), "max_age: 86400"]
    return Page(("\r\n".join(lines) + "\r\n").encode())


MTA_STS_PAGES: dict[str, Page] = {
    "trusted.example": _policy("enforce", "mx.trusted.example"),
    "sts-testing.example": _policy("testing", "*.sts-testing.example"),
    # *.mismatch.example covers one label before mismatch.example, not mx.sts-mismatch.example
    "sts-mismatch.example": _policy("enforce", "mx.other.example", "*.mismatch.example"),
    "sts-relaxed.example": _policy("enforce", "mx.sts-relaxed.example"),
    # Testing mode over a failing MX (STS_TESTING_FAILING): delivered anyway, the failure noted.
    "sts-testing-bad.example": _policy("testing", "mx.selfsigned.example"),
    # Broken publications (not lab domains with mail hosts): what a fetch must refuse.
    "sts-redirect.example": Page(b"", 301, headers=(
        ("Location", "https://mta-sts.trusted.example/.well-known/mta-sts.txt"),)),
    "sts-html.example": Page(b"<html>version: STSv1</html>", content_type="text/html"),
    "sts-big.example": Page(b"version: STSv1\r\nmode: testing\r\nmx: a.example\r\n"
                            + b"x: y\r\n" * 14_000),
    "sts-404.example": Page(b"gone", 404),
}
STS_TWO_RECORDS = "sts-double.example"  # two v=STSv1 TXT records: the record is unusable
# Its MX is selfsigned.example's (a self-signed certificate): what enforce would refuse.
STS_TESTING_FAILING = "sts-testing-bad.example"

# TLS-RPT https: endpoints, served by the MTA-STS policy server (lab/https.py keeps the POSTs).
TLS_RPT_HOSTS = ("reports.sts-testing.example",)

TLS_RPT_RECORDS = {
    "trusted.example": "v=TLSRPTv1; rua=mailto:tls-reports@trusted.example",
    "sts-testing.example": "v=TLSRPTv1; rua=mailto:tlsrpt@sts-testing.example,"
                           "https://reports.sts-testing.example/tlsrpt",
}


def bench_domains(count: int) -> tuple[LabDomain, ...]:
    """``count`` strict domains with slow-greeting servers, one address each (127.1.x.y)."""
    if not 0 <= count <= 250 * 256:
        raise ValueError(f"extra_slow_domains={count}: expected 0 to {250 * 256}")
    return tuple(
        LabDomain(f"d{i:04d}.{BENCH_SUFFIX}", STRICT, "slow_greeting",
                  "benchmark domain: trusted server with a delayed greeting",
                  (LabHost(f"mx-d{i:04d}.{BENCH_SUFFIX}",
                           f"127.1.{i // 250}.{i % 250 + 1}", "slow", 10),))
        for i in range(count)
    )


def build_zone(domains: tuple[LabDomain, ...], routes: tuple[LabDomain, ...]) -> Zone:
    """The ``example.`` zone: MX and A records for every lab domain and route host."""
    zone = Zone(origin=dns.name.from_text("example."))
    for d in domains:
        if d.reason == "implicit_mx":
            pass  # the host below is the domain itself: its A record is added with the hosts
        elif d.reason == "null_mx":
            zone.add(f"{d.name}.", "MX", "0 .")
        elif d.reason == "no_address":
            zone.add(f"{d.name}.", "MX", f"10 mx.{d.name}.")
        elif d.reason == "servfail":
            zone.add_servfail(f"{d.name}.")
        elif d.reason == "dns_timeout":
            zone.add_silent(f"{d.name}.")
        for h in d.hosts:
            if h.preference is not None:
                zone.add(f"{d.name}.", "MX", f"{h.preference} {h.name}.")
            if h.name in CNAMES:
                zone.add(f"{h.name}.", "CNAME", f"{CNAMES[h.name]}.")
                zone.add(f"{CNAMES[h.name]}.", "A", h.address)
            else:
                zone.add(f"{h.name}.", "AAAA" if ":" in h.address else "A", h.address)
    for r in routes:
        for h in r.hosts:
            if h.name != h.address:  # a route named by its IP address needs no record
                zone.add(f"{h.name}.", "A", h.address)
    zone.add("corp.example.", "MX", "10 mail.corp.example.")
    zone.add("trusted.example.", "TXT", '"v=spf1 -all"')
    for name in MTA_STS_PAGES:
        zone.add(f"_mta-sts.{name}.", "TXT", f'"v=STSv1; id={STS_ID}"')
        zone.add(f"mta-sts.{name}.", "A", STS_ADDRESS)
    zone.add(f"{STS_TESTING_FAILING}.", "MX", "10 mx.selfsigned.example.")
    zone.add(f"_mta-sts.{STS_TWO_RECORDS}.", "TXT", '"v=STSv1; id=one"')
    zone.add(f"_mta-sts.{STS_TWO_RECORDS}.", "TXT", '"v=STSv1; id=two"')
    for host in TLS_RPT_HOSTS:
        zone.add(f"{host}.", "A", STS_ADDRESS)
    for name, record in TLS_RPT_RECORDS.items():
        zone.add(f"_smtp._tls.{name}.", "TXT", f'"{record}"')
    return zone
