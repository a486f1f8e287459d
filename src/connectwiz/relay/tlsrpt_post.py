"""POSTing a TLS report to an ``https:`` rua (RFC 8460 §3), guarded against SSRF.

The URI comes from a partner's DNS, so it is untrusted input that makes the relay open a
connection: a report URI naming (or resolving to) loopback, a private network, link-local,
multicast, unspecified or another special-purpose address would let any domain we mail aim
the relay at services on its own host or network. So:

- every address the name resolves to is judged, and only the address judged is connected to
  (no second lookup between check and connect, so DNS rebinding cannot slip in), and the
  peer address of the open connection is judged again;
- only publicly routable addresses are used, plus the networks the admin allows
  (``--tlsrpt-allow-networks``: a lab on loopback, a report collector on the LAN);
- no redirect is followed (a 3xx is a failure), only the status line is read, with a bound
  on its length, and the whole exchange has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from urllib.parse import urlsplit

from connectwiz.errors import UserError
from connectwiz.probe.dns import DnsError, make_resolver, resolve_addresses
from connectwiz.probe.mtasts import https_context
from connectwiz.probe.options import NetworkOptions

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

STATUS_LINE_LIMIT = 4096  # bytes of the answer read: the status line is all we need


def parse_networks(text: str) -> tuple[Network, ...]:
    """``--tlsrpt-allow-networks``: comma-separated CIDRs (``127.0.0.0/8,::1``)."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise UserError(f"--tlsrpt-allow-networks: {part!r} is not a network "
                            "(e.g. 127.0.0.0/8 or fd00::/8)") from None
    return tuple(networks)


def _kind(address: Address) -> str:
    """What makes ``address`` special ('' for a publicly routable one)."""
    for kind, special in (("unspecified", address.is_unspecified),
                          ("loopback", address.is_loopback),
                          ("link-local", address.is_link_local),
                          ("multicast", address.is_multicast),
                          ("private", address.is_private)):
        if special:
            return kind
    return "" if address.is_global else "special-purpose"


def refusal(address: str, allowed: tuple[Network, ...]) -> str:
    """Why a report must not be posted to ``address``, e.g. "127.0.0.1 (loopback)"; ''
    when it may."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    if any(ip in net for net in allowed):
        return ""
    kind = _kind(ip)
    return f"{address} ({kind})" if kind else ""


async def post_report(uri: str, data: bytes, options: NetworkOptions,
                      allowed: tuple[Network, ...] = ()) -> None:
    """POST the gzipped report over verified HTTPS; raises OSError with the reason.
    Without a port in the URI, ``options.https_port`` (443 unless a lab moved it)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "https":
        raise OSError(f"{uri}: only https: report URIs are posted to")
    host = parts.hostname or ""
    if not host:
        raise OSError(f"{uri}: no host name")
    try:
        port = parts.port or options.https_port
    except ValueError:  # a port that is not a number, or out of range
        raise OSError(f"{uri}: not a usable port") from None
    async with asyncio.timeout(options.timeout):
        try:
            addresses: tuple[str, ...] = (str(ipaddress.ip_address(host)),)
        except ValueError:
            try:
                addresses = await resolve_addresses(host, options, make_resolver(options))
            except DnsError as exc:
                raise OSError(exc.reason) from None
        if not addresses:
            raise OSError(f"{host} has no address")
        judged = {a: refusal(a, allowed) for a in addresses}
        refused = [why for why in judged.values() if why]
        usable = [a for a, why in judged.items() if not why]
        if not usable:
            raise OSError(f"refused: {host} resolves to {', '.join(refused)}, not a public "
                          "address (--tlsrpt-allow-networks allows a network)")
        ctx = await asyncio.to_thread(https_context, options.ca_file)
        reader, writer = await _connect(usable, port, ctx, host)
        try:
            peer = writer.get_extra_info("peername")[0]
            if why := refusal(peer, allowed):  # the address actually connected to
                raise OSError(f"refused: connected to {why}, not a public address")
            target = f"{parts.path or '/'}{'?' + parts.query if parts.query else ''}"
            head = (f"POST {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: connectwiz\r\n"
                    f"Content-Type: application/tlsrpt+gzip\r\nContent-Length: {len(data)}\r\n"
                    "Connection: close\r\n\r\n")
            writer.write(head.encode("ascii") + data)
            await writer.drain()
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                raise OSError(f"{uri} answered with an over-long status line") from None
            except asyncio.IncompleteReadError as exc:
                line = exc.partial
            status = line.decode("latin-1").split()
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    if len(status) < 2 or not status[1].startswith("2"):
        answer = " ".join(status[1:]) or "nothing"
        if status[1:2] and status[1].startswith("3"):
            answer += " (redirects are not followed)"
        raise OSError(f"{uri} answered {answer}")


async def _connect(addresses: list[str], port: int, ctx: ssl.SSLContext, host: str
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The first of ``addresses`` that takes the connection (each one already judged)."""
    error: OSError | None = None
    for address in addresses:
        try:
            return await asyncio.open_connection(address, port, ssl=ctx, server_hostname=host,
                                                 limit=STATUS_LINE_LIMIT)
        except OSError as exc:
            error = exc
    assert error is not None
    raise error
