"""``connectwiz lab``: run the local test lab until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from connectwiz.atomic import write_atomic
from connectwiz.errors import UserError
from connectwiz.lab import Lab, ipv6_loopback_available


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.smtp_port <= 65535:
        raise UserError(f"--smtp-port {args.smtp_port}: expected 0 to 65535 (0 picks a free port)")
    info_path = Path(args.write_info) if args.write_info else None
    if info_path is not None and not info_path.parent.is_dir():
        raise UserError(f"--write-info {info_path}: directory {info_path.parent} does not exist")
    return asyncio.run(_serve(args.smtp_port, info_path))


async def _serve(smtp_port: int, info_path: Path | None) -> int:
    lab = Lab(smtp_port=smtp_port, ipv6=ipv6_loopback_available())
    try:
        await lab.start()
    except OSError as exc:
        raise UserError(
            f"cannot listen on port {smtp_port} ({exc.strerror or exc}); "
            "choose another with --smtp-port, e.g. --smtp-port 2525") from None
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if info_path is not None:
            try:
                write_atomic(info_path, (json.dumps(lab.info(), indent=2) + "\n").encode())
            except OSError as exc:
                raise UserError(f"--write-info {info_path}: {exc.strerror or exc}") from None
        _print_banner(lab)
        await stop.wait()
        print("connectwiz lab: stopped", flush=True)
        return 0
    finally:
        await lab.stop()


def _print_banner(lab: Lab) -> None:
    ns, port, ca = "{}:{}".format(*lab.nameserver), lab.smtp_port, lab.ca_file
    width = max(len(d) for d in lab.domains)
    lines = [
        "connectwiz lab running; Ctrl-C to stop",
        f"  nameserver  {ns}",
        f"  smtp port   {port}  (one server per host on 127.0.0.10 and up)",
        f"  https port  {lab.https_port}  (MTA-STS policies, mta-sts.<domain> on 127.0.0.40)",
        f"  CA file     {ca}",
        "",
        "Lab domains and the verdict validate should give:",
        *(f"  {d.name:<{width}}  {d.expected:<11}  {d.reason}"
          + (f"  ({d.display})" if d.display != d.name else "")
          for d in lab.domains.values()),
        "Lab routes (internal servers): "
        + ", ".join(f"{h}:{p} {lab.expected_routes[h].expected}" for h, p in lab.routes),
        "",
        "Try:",
        f"  connectwiz validate --nameserver {ns} --smtp-port {port} "
        f"--https-port {lab.https_port} --ca-file {ca} trusted.example -v",
    ]
    print("\n".join(lines), flush=True)
