"""`connectwiz validate`: check that partner domains and inbound routes support TLS."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TextIO

from connectwiz.errors import UserError
from connectwiz.policy.addresses import InvalidAddress, normalize_address
from connectwiz.policy.domains import display_domain
from connectwiz.policy.model import SslMode
from connectwiz.probe.batch import validate_targets
from connectwiz.probe.options import NetworkOptions, options_from, parse_host_port
from connectwiz.probe.published import publication_lines
from connectwiz.probe.results import HostResult, Status, Target, TargetResult
from connectwiz.probe.sslmode import LevelResult, negotiate_at

LABELS = {
    Status.STRICT: ("✔", "Supports TLS — Strict"),
    Status.RELAXED: ("✔", "Supports TLS — Relaxed"),
    Status.UNSUPPORTED: ("✖", "TLS Not Supported"),
    Status.ERROR: ("!", "Error"),
}
_ASCII_MARKS = {"✔": "+", "✖": "x", "!": "!"}


def run(args: argparse.Namespace) -> int:
    options = options_from(
        nameserver=args.nameserver, smtp_port=args.smtp_port, ca_file=args.ca_file,
        timeout=args.timeout, greeting_timeout=args.greeting_timeout,
        concurrency=args.concurrency, https_port=args.https_port,
    )
    targets = [Target.route(*parse_host_port(r, options.smtp_port)) for r in args.route]
    targets += [Target.domain(d) for d in args.targets]
    if not targets:
        raise UserError("nothing to validate: give a DOMAIN or --route HOST[:PORT]")
    email = None
    if args.email is not None:
        try:
            email = normalize_address(args.email, fold_local=False)
        except InvalidAddress as exc:
            raise UserError(f"--email {args.email!r}: {exc.reason}") from None
    progress = _Progress(len(targets), sys.stderr) if sys.stderr.isatty() else None
    results = asyncio.run(
        validate_targets(targets, options, email=email, progress=progress)
    )
    if progress is not None:
        progress.clear()
    mode = SslMode(args.ssl_mode) if args.ssl_mode else None
    levels = asyncio.run(_at_level(mode, results, options)) if mode else [[] for _ in results]
    if args.json:
        out = [r.to_json() for r in results]
        if mode is not None:
            for item, found in zip(out, levels, strict=True):
                item["ssl_mode"] = {"level": str(mode), "ok": _level_ok(found),
                                    "hosts": [x.to_json() for x in found]}
        json.dump(out, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        for result, found in zip(results, levels, strict=True):
            _print_result(result, args.verbose, sys.stdout)
            if mode is not None:
                _print_level(mode, found, sys.stdout)
    ok = all(r.supports_tls for r in results) and (mode is None
                                                    or all(_level_ok(x) for x in levels))
    return 0 if ok else 1


async def _at_level(mode: SslMode, results: list[TargetResult], options: NetworkOptions
                    ) -> list[list[LevelResult]]:
    """Each target's hosts that offered STARTTLS, tried again at ``mode``."""
    slots = asyncio.Semaphore(max(1, options.concurrency))

    async def one(host: HostResult) -> LevelResult:
        assert host.address is not None
        async with slots:
            return await negotiate_at(mode, host.host, host.address, host.port,
                                      options.timeout, options.greeting_timeout)

    return [list(await asyncio.gather(*(one(h) for h in r.hosts
                                        if h.starttls and h.address)))
            for r in results]


def _level_ok(found: list[LevelResult]) -> bool:
    """As delivery: mail goes when one host negotiates at the level."""
    return any(x.ok for x in found)


def _print_level(mode: SslMode, found: list[LevelResult], out: TextIO) -> None:
    if not found:
        _write(out, f"    ✖ SSL Mode {mode}: no host offers STARTTLS")
    for x in found:
        mark = "✔" if x.ok else "✖"
        what = f"negotiates {x.tls_version} {x.cipher}" if x.ok else x.reason
        _write(out, f"    {mark} SSL Mode {mode}: {x.host} [{x.address}]:{x.port} {what}")


class _Progress:
    """One self-overwriting status line on stderr (a terminal only)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.done, self.stream = total, 0, stream

    def __call__(self, result: TargetResult) -> None:
        self.done += 1
        line = f"validated {self.done}/{self.total}: {result.target} {result.status}"
        self.stream.write("\r\033[K" + line[:120])
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r\033[K")
        self.stream.flush()


def _print_result(result: TargetResult, verbose: bool, out: TextIO) -> None:
    mark, label = LABELS[result.status]
    name = result.target
    if result.kind == "domain" and display_domain(name) != name:
        name = f"{name} ({display_domain(name)})"
    _write(out, f"{mark} {name}: {label} — {result.reason}")
    if result.mta_sts is not None and result.mta_sts.warning:  # loud: shown even without -v
        _write(out, f"    ! WARNING: {result.mta_sts.warning}")
    for warning in result.warnings:  # weaker hosts, another certificate without SNI
        _write(out, f"    ! {warning}")
    if verbose:
        for host in result.hosts:
            for line in _host_lines(host):
                _write(out, "    " + line)
        for line in publication_lines(result):
            _write(out, "    " + line)


def _host_lines(host: HostResult) -> list[str]:
    where = f"[{host.address}]" if host.address and ":" in host.address else host.address
    pref = f" (preference {host.preference})" if host.preference is not None else ""
    lines = [f"{host.host} {where or '-'}:{host.port}{pref}: {host.status} — {host.reason}"]
    tls = f"{host.tls_version} {host.cipher}" if host.tls_version else "no TLS session"
    lines.append(f"  STARTTLS {'offered' if host.starttls else 'not offered'}; {tls}; "
                 f"{host.elapsed_ms} ms")
    cert = host.certificate
    if cert is not None:
        key = f"{cert.key_type} {cert.key_size} bits" if cert.key_size else cert.key_type
        lines += [
            f"  subject:   {cert.subject}",
            f"  issuer:    {cert.issuer}" + (" (self-signed)" if cert.self_signed else ""),
            f"  names:     {', '.join(cert.names) or '(none)'}",
            f"  valid:     {cert.not_before:%Y-%m-%d %H:%M} to {cert.not_after:%Y-%m-%d %H:%M} UTC",
            f"  key:       {key}; signature {cert.signature_algorithm}",
            f"  checks:    trusted={_yn(cert.trusted)} name={_yn(cert.hostname_match)} "
            f"dates={_yn(not cert.expired and not cert.not_yet_valid)}",
        ]
        lines += [f"  refused:   {why}" for why in cert.rejections]
    if host.rcpt is not None:
        code = host.rcpt.code or "-"  # 0: nothing was sent (see the message)
        lines.append(f"  RCPT TO:   {code} {host.rcpt.message}")
    return lines


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def _write(out: TextIO, line: str) -> None:
    encoding = getattr(out, "encoding", None) or "utf-8"
    try:
        line.encode(encoding)
    except UnicodeEncodeError:  # e.g. LANG=C piping: keep the output readable
        for fancy, plain in _ASCII_MARKS.items():
            line = line.replace(fancy, plain)
        line = line.replace("—", "-").encode(encoding, "replace").decode(encoding)
    out.write(line + "\n")
