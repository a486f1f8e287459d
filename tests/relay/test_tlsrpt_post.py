"""The SSRF guard of TLS-RPT https: posting (relay.tlsrpt_post): which addresses are refused,
and, against real HTTPS servers on loopback, that only judged addresses are connected to, no
redirect is followed, the answer read is bounded and a silent endpoint times out."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from connectwiz.errors import UserError
from connectwiz.lab.smtp import server_context
from connectwiz.relay.tlsrpt_post import parse_networks, post_report, refusal

from .conftest import token

pytestmark = pytest.mark.network

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("fd12:3456::1", "private"),  # ULA
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.251", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("100.64.0.1", "special-purpose"),  # carrier-grade NAT (RFC 6598)
    ("192.0.2.1", "private"),  # documentation: Python counts it private
])
def test_special_addresses_are_refused(address: str, kind: str) -> None:
    assert refusal(address, ()) == f"{address} ({kind})"


def test_public_and_allowed_addresses_pass() -> None:
    assert refusal("8.8.8.8", ()) == ""
    assert refusal("2001:4860:4860::8888", ()) == ""
    assert refusal("127.0.0.40", LOOPBACK) == ""
    assert refusal("10.0.0.1", LOOPBACK) == "10.0.0.1 (private)"


def test_allow_networks_option_parses_and_rejects_in_one_line() -> None:
    assert parse_networks("127.0.0.0/8, ::1,10.0.0.5/16") == (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("10.0.0.0/16"))
    with pytest.raises(UserError, match=r"^--tlsrpt-allow-networks: 'intranet' is not a "):
        parse_networks("127.0.0.0/8,intranet")


@pytest.fixture
async def https_server(lab) -> AsyncIterator[Callable[..., object]]:
    """``await https_server(name, answer, host="127.0.0.1", port=0)`` -> (port, requests
    seen): an HTTPS server with a lab-CA certificate for ``name`` that reads a request and
    writes ``answer`` (None: never answers)."""
    servers: list[asyncio.Server] = []

    async def start(name: str, answer: bytes | None, host: str = "127.0.0.1",
                    port: int = 0) -> tuple[int, list[bytes]]:
        seen: list[bytes] = []
        ctx = server_context(*await asyncio.to_thread(lab.ca.issue, [name]))

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                seen.append(await reader.readuntil(b"\r\n\r\n"))
                if answer is None:
                    await reader.read()  # silent until the client gives up
                else:
                    writer.write(answer)
                    await writer.drain()
                    await reader.read()
            writer.close()

        server = await asyncio.start_server(serve, host, port, ssl=ctx)
        servers.append(server)
        return server.sockets[0].getsockname()[1], seen

    yield start
    for server in servers:
        server.close()


def _name(lab, *addresses: str) -> str:
    name = f"post-{token()}.example"
    for address in addresses:
        lab.lab.zone.add(f"{name}.", "A", address)  # from this thread: there at once
    return name


async def test_only_an_allowed_address_of_the_name_is_connected(
        lab, lab_network_options, https_server) -> None:
    # The name's first address is refused; the post goes to the second, the allowed one.
    name = _name(lab, "127.0.0.2", "127.0.0.1")
    port, allowed_seen = await https_server(name, b"HTTP/1.1 200 OK\r\n\r\n", "127.0.0.1")
    _, refused_seen = await https_server(name, b"HTTP/1.1 200 OK\r\n\r\n", "127.0.0.2", port)
    await post_report(f"https://{name}:{port}/r", b"gz", lab_network_options,
                      (ipaddress.ip_network("127.0.0.1/32"),))
    assert len(allowed_seen) == 1 and allowed_seen[0].startswith(b"POST /r HTTP/1.1")
    assert refused_seen == []


async def test_a_loopback_only_name_is_refused_without_connecting(
        lab, lab_network_options, https_server) -> None:
    name = _name(lab, "127.0.0.1")
    port, seen = await https_server(name, b"HTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(OSError, match=rf"^refused: {name} resolves to 127.0.0.1 \(loopback\)"):
        await post_report(f"https://{name}:{port}/r", b"gz", lab_network_options)
    with pytest.raises(OSError, match=r"^refused: 127.0.0.1 resolves to 127.0.0.1 \(loopback"):
        await post_report(f"https://127.0.0.1:{port}/r", b"gz", lab_network_options)
    assert seen == []


async def test_a_redirect_is_not_followed(lab, lab_network_options, https_server) -> None:
    target = f"/tlsrpt/{token()}"
    name = _name(lab, "127.0.0.1")
    port, _ = await https_server(
        name, b"HTTP/1.1 307 Temporary Redirect\r\nLocation: https://reports.sts-testing.example"
        + target.encode() + b"\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(OSError, match=r"answered 307 Temporary Redirect \(redirects are not "):
        await post_report(f"https://{name}:{port}/r", b"gz", lab_network_options, LOOPBACK)
    assert not [p for p in list(lab.report_posts) if p.path == target]


async def test_the_answer_read_is_bounded(lab, lab_network_options, https_server) -> None:
    name = _name(lab, "127.0.0.1")
    port, _ = await https_server(name, b"HTTP/1.1 200 " + b"x" * 1_000_000)
    with pytest.raises(OSError, match="over-long status line"):
        await post_report(f"https://{name}:{port}/r", b"gz", lab_network_options, LOOPBACK)


async def test_a_silent_endpoint_times_out(lab, lab_network_options, https_server) -> None:
    name = _name(lab, "127.0.0.1")
    port, seen = await https_server(name, None)
    options = replace(lab_network_options, timeout=0.5)
    with pytest.raises(TimeoutError):
        await post_report(f"https://{name}:{port}/r", b"gz", options, LOOPBACK)
    assert len(seen) == 1  # it was reached, and did not answer


@pytest.mark.parametrize(("uri", "why"), [
    ("http://reports.example/r", "only https: report URIs"),
    ("https:///r", "no host name"),
    ("https://reports.example:99999/r", "not a usable port"),
])
async def test_unusable_uris_are_refused_in_one_line(lab_network_options, uri: str,
                                                     why: str) -> None:
    with pytest.raises(OSError, match=why):
        await post_report(uri, b"gz", lab_network_options, LOOPBACK)
