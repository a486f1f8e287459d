"""Network options shared by validate, the wizard and the relay (DESIGN.md, "Network options")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectwiz.errors import UserError


@dataclass(frozen=True, slots=True)
class NetworkOptions:
    nameserver: tuple[str, int] | None = None  # None: the system resolver
    smtp_port: int = 25
    ca_file: Path | None = None
    timeout: float = 10.0  # per step: connect, each reply, the handshake
    # The greeting alone: postscreen and tarpits greet after 10-30 s on purpose.
    greeting_timeout: float = 30.0
    concurrency: int = 50
    https_port: int = 443  # where MTA-STS policies are fetched (mta-sts.<domain>)
    # The relay's DANE: a validating resolver whose AD bit is trusted; None: no DANE.
    dnssec_resolver: tuple[str, int] | None = None


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT`` to (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UserError(f"bad address {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a bare IPv6 address or a plain host name
        host, port_text = text, ""
    if not host:
        raise UserError(f"bad address {text!r}: no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"bad port in {text!r}: expected a number from 1 to 65535")
    return host, int(port_text)


def options_from(
    nameserver: str | None = None,
    smtp_port: int | None = None,
    ca_file: str | None = None,
    timeout: float | None = None,
    concurrency: int | None = None,
    https_port: int | None = None,
    greeting_timeout: float | None = None,
    dnssec_resolver: str | None = None,
) -> NetworkOptions:
    """Build options from explicit values, falling back to CONNECTWIZ_* variables, then defaults."""
    env = os.environ
    nameserver = nameserver or env.get("CONNECTWIZ_NAMESERVER") or None
    dnssec_resolver = dnssec_resolver or env.get("CONNECTWIZ_DNSSEC_RESOLVER") or None
    ca_text = ca_file or env.get("CONNECTWIZ_CA_FILE") or None
    ca_path = Path(ca_text) if ca_text else None
    if ca_path is not None and not ca_path.is_file():
        raise UserError(f"--ca-file {ca_path}: no such file")
    result = NetworkOptions(
        nameserver=parse_host_port(nameserver, 53) if nameserver else None,
        smtp_port=smtp_port if smtp_port is not None else _env_num("SMTP_PORT", int, 25),
        ca_file=ca_path,
        timeout=timeout if timeout is not None else _env_num("TIMEOUT", float, 10.0),
        greeting_timeout=(greeting_timeout if greeting_timeout is not None
                          else _env_num("GREETING_TIMEOUT", float, 30.0)),
        concurrency=concurrency if concurrency is not None else _env_num("CONCURRENCY", int, 50),
        https_port=https_port if https_port is not None else _env_num("HTTPS_PORT", int, 443),
        dnssec_resolver=parse_host_port(dnssec_resolver, 53) if dnssec_resolver else None,
    )
    if not 0 < result.smtp_port < 65536:
        raise UserError(f"--smtp-port {result.smtp_port}: expected 1 to 65535")
    if not 0 < result.https_port < 65536:
        raise UserError(f"--https-port {result.https_port}: expected 1 to 65535")
    if result.timeout <= 0 or result.concurrency <= 0 or result.greeting_timeout <= 0:
        raise UserError("--timeout, --greeting-timeout and --concurrency must be positive")
    return result


def _env_num(name: str, kind: type[int] | type[float], default: float) -> Any:
    raw = os.environ.get(f"CONNECTWIZ_{name}")
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise UserError(f"CONNECTWIZ_{name}={raw!r} is not a number") from None
    if value <= 0:
        raise UserError(f"CONNECTWIZ_{name} must be positive")
    return value
