"""``connectwiz relay --check``: everything a start would need, checked without listening.

Run by hand after editing the configuration, or as the unit's ``ExecStartPre`` so a bad
bundle, a certificate that does not load or a spool others can read stops the service
with one line in the journal instead of a half-started relay. Nothing is created: a
missing spool or secure key only has to be creatable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from connectwiz.bundle import Bundle
from connectwiz.bundle.paths import resolve_bundle_path
from connectwiz.errors import UserError
from connectwiz.probe.options import options_from, parse_host_port
from connectwiz.relay.held import default_key_path, load_secure_key
from connectwiz.relay.receipt import server_context
from connectwiz.relay.spool import default_spool

CAP_NET_BIND_SERVICE = 10
_SOON = dt.timedelta(days=14)


class Report:
    def __init__(self, out: Callable[[str], None] = print) -> None:
        self.out = out
        self.failures = 0

    def ok(self, what: str, text: str) -> None:
        self.out(f"ok    {what}: {text}")

    def warn(self, what: str, text: str) -> None:
        self.out(f"warn  {what}: {text}")

    def fail(self, what: str, text: str) -> None:
        self.failures += 1
        self.out(f"FAIL  {what}: {text}")


def _can_bind_low_ports() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_BIND_SERVICE & 1)
    except OSError:
        pass
    return False


def _writable_dir(path: Path) -> Path | None:
    """The nearest existing folder of ``path`` if it lets us create what is missing."""
    for parent in (path, *path.parents):
        if parent.exists():
            return parent if os.access(parent, os.W_OK | os.X_OK) else None
    return None


def check_certificate(report: Report, cert: Path, key: Path, hostname: str) -> None:
    try:
        server_context(str(cert), str(key))
        first = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ssl.SSLError, ValueError) as exc:
        report.fail("tls", f"{cert} / {key}: {exc}")
        return
    left = first.not_valid_after_utc - dt.datetime.now(dt.UTC)
    try:
        names = first.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    text = f"{cert} for {', '.join(names) or 'no DNS names'}, {left.days} days left"
    if left.total_seconds() <= 0:
        report.fail("tls", f"{cert} expired on {first.not_valid_after_utc:%Y-%m-%d}")
    elif left < _SOON:
        report.warn("tls", f"{text}: renew it soon")
    elif names and hostname.lower() not in (n.lower() for n in names):
        report.warn("tls", f"{text}; the relay's name {hostname} is not among them")
    else:
        report.ok("tls", text)
    if key.stat().st_mode & 0o077:
        report.fail("tls", f"{key}: others can read the private key; chmod 600 it")


def check_spool(report: Report, spool: Path) -> None:
    if not spool.exists():
        base = _writable_dir(spool)
        if base is None:
            report.fail("spool", f"{spool} does not exist and cannot be created here")
        else:
            report.ok("spool", f"{spool} will be created (0700) on first start")
        return
    st = spool.stat()
    if not spool.is_dir():
        report.fail("spool", f"{spool} is not a folder")
        return
    if st.st_uid != os.geteuid():
        report.fail("spool", f"{spool} belongs to uid {st.st_uid}, not to this user "
                             f"({os.geteuid()}): run as the relay's user")
    elif st.st_mode & 0o077:
        report.fail("spool", f"{spool} is mode {st.st_mode & 0o777:o}: mail is readable by "
                             "others; chmod 700 it")
    unwritable = [p for p in (spool, *(c for c in spool.iterdir() if c.is_dir()))
                  if not os.access(p, os.W_OK | os.X_OK)]
    if unwritable:
        report.fail("spool", f"cannot write to {', '.join(map(str, unwritable))}")
    if report.failures:
        return
    state = "ready"
    lock = spool / "lock"
    if lock.exists():
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            state = "in use by a running relay"
        finally:
            os.close(fd)
    report.ok("spool", f"{spool} ({state})")


def check_secure_key(report: Report, path: Path) -> None:
    if not path.exists():
        if _writable_dir(path.parent) is None:
            report.fail("secure key", f"{path} does not exist and cannot be created")
        else:
            report.ok("secure key", f"{path} will be created (0600) when first needed")
        return
    try:
        load_secure_key(path)
    except UserError as exc:
        report.fail("secure key", str(exc))
        return
    report.ok("secure key", f"{path} (0600)")


def run_check(args: argparse.Namespace, settings_from: Callable[..., object],
              out: Callable[[str], None] = print) -> int:
    """Every check, one line each; 0 when none failed, 1 otherwise."""
    report = Report(out)
    config = getattr(args, "config_file", None)
    report.ok("config", config or "no service.toml beside the bundle: command-line options "
                                   "and defaults only")
    bundle_path = resolve_bundle_path(args.bundle)
    try:
        model = Bundle.load(bundle_path).model
        report.ok("bundle", f"{bundle_path}: {len(model.delivery_policies)} delivery and "
                            f"{len(model.receipt_policies)} receipt policies, "
                            f"{len(model.inbound_routes)} inbound routes")
    except UserError as exc:
        report.fail("bundle", str(exc))
    try:
        options = options_from(nameserver=args.nameserver, smtp_port=args.smtp_port,
                               ca_file=args.ca_file, timeout=args.timeout,
                               concurrency=args.concurrency)
        # The secure key is checked below without being created.
        settings = settings_from(argparse.Namespace(**{**vars(args), "secure_key": None}),
                                 options)
        report.ok("options", "limits, retries and network options are valid")
    except UserError as exc:
        report.fail("options", str(exc))
        settings = None
    hostname = getattr(settings, "hostname", None) or args.hostname or "localhost"
    try:
        listen = args.listen if not args.listen.endswith(":0") else args.listen[:-2] + ":2525"
        host, port = parse_host_port(listen, 2525)
        if args.listen.endswith(":0"):
            report.ok("listen", f"{args.listen[:-2]}, any free port")
        elif port < 1024 and not _can_bind_low_ports():
            report.fail("listen", f"{host}:{port} needs root or CAP_NET_BIND_SERVICE "
                                  "(the systemd unit grants it)")
        else:
            report.ok("listen", f"{host}:{port}")
    except UserError as exc:
        report.fail("listen", str(exc))
    if args.metrics:
        try:
            parse_host_port(args.metrics, 9100)
            report.ok("metrics", f"http://{args.metrics}/metrics")
        except UserError as exc:
            report.fail("metrics", str(exc))
    spool = Path(args.spool).expanduser() if args.spool else default_spool()
    if (args.tls_cert is None) != (args.tls_key is None):
        report.fail("tls", "--tls-cert and --tls-key go together")
    elif args.tls_cert:
        check_certificate(report, Path(args.tls_cert), Path(args.tls_key), hostname)
    elif (spool / "tls" / "relay-cert.pem").is_file():
        check_certificate(report, spool / "tls" / "relay-cert.pem",
                          spool / "tls" / "relay-key.pem", hostname)
    else:
        report.warn("tls", "no --tls-cert: a self-signed certificate is made on first start")
    check_spool(report, spool)
    check_secure_key(report, Path(args.secure_key) if args.secure_key else default_key_path())
    out(f"{report.failures} problem(s) found" if report.failures else
        "configuration is ready: start the relay")
    return 1 if report.failures else 0
