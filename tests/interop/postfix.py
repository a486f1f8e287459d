"""A private Postfix instance on loopback for interop tests.

Wiring, and why: Postfix resolves with the libc resolver (the port 53 of /etc/resolv.conf),
which is not on loopback here and must never be queried. So the instance runs in its own
mount namespace (``unshare -m``) where /etc/resolv.conf is a bind-mounted file naming a lab
name server on port 53 of a loopback address (``lab_resolver``): Postfix does real MX and
address lookups of lab names, as in production, and ``match=hostname`` sees the MX host
name. A test-only ``transport_maps`` only changes the port: ``domain smtp:domain:PORT``
(still an MX lookup), because every lab server listens on the lab's port, not 25. Postfix
keys TLS policy lookups on that next hop, ``domain:PORT``, so the test copy of the exported
``tls_policy`` has its keys rewritten the same way; the policy itself (level, ``match=``,
``protocols=``) is left exactly as exported. The exported main.cf snippet is used as is except
for two settings the test replaces (commented out, then set after it): the lab CA instead of
the system store, and the exported policy maps naming the rewritten table (any socketmap
after it, ``--mta-sts``, is kept). The private resolv.conf says ``trust-ad``, so Postfix
sees the AD bit the lab name server sets on its "validated" answers and can do DANE.

The instance has its own config, queue and data directories in a temporary folder, listens on
127.0.0.1 only, runs no daemon chrooted, and logs to a file (``maillog_file``) the test reads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from connectwiz.lab import LabHandle

POSTFIX = shutil.which("postfix") or (
    "/usr/sbin/postfix" if Path("/usr/sbin/postfix").exists() else None)
UNSHARE = shutil.which("unshare")


def peer_missing() -> str | None:
    """Why a private Postfix cannot run here, or None: Postfix, root (its master starts as
    root) and a mount namespace (for its own /etc/resolv.conf) are needed."""
    if POSTFIX is None:
        return "Postfix is not installed (apt-get install postfix; .ci/run installs it on CI)"
    if os.geteuid() != 0:
        return "starting a Postfix instance needs root"
    if UNSHARE is None or subprocess.run([UNSHARE, "-m", "true"], capture_output=True,
                                         timeout=30, check=False).returncode != 0:
        return "no mount namespace (unshare -m) for Postfix's private resolv.conf"
    return None
START_TIMEOUT = 30.0
_REPLACED = ("smtp_tls_CAfile ", "smtp_tls_policy_maps ")

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def free_port() -> int:
    """A port free on 127.0.0.1 right now (Postfix binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_resolvers: dict[int, str] = {}


def lab_resolver(lab: LabHandle) -> str:
    """A loopback address whose port 53 serves the lab zone (started once per lab)."""
    if id(lab) not in _resolvers:
        for _ in range(50):  # 127.53.x.y: away from the lab's own 127.0.x.y addresses
            host = f"127.53.{random.randrange(256)}.{random.randrange(1, 255)}"
            try:
                lab.add_nameserver(host, 53)
            except OSError as exc:  # another test run holds this one
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            _resolvers[id(lab)] = host
            break
        else:
            raise RuntimeError("no loopback address free for a lab name server on port 53")
    return _resolvers[id(lab)]


def write_resolv_conf(path: Path, resolver: str) -> Path:
    # trust-ad: glibc (2.31+) passes the name server's AD bit on only when told to trust it,
    # and Postfix's DANE (smtp_dns_support_level = dnssec) needs that bit.
    path.write_text(f"nameserver {resolver}\noptions timeout:2 attempts:2 trust-ad\n")
    return path


def in_lab_namespace(argv: list[str], resolv_conf: Path,
                     hosts: Path | None = None) -> list[str]:
    """``argv`` run in a mount namespace of its own whose /etc/resolv.conf (and /etc/hosts,
    if given) are bind-mounted files; nothing outside the namespace sees them."""
    assert UNSHARE is not None
    mounts = [(resolv_conf, "/etc/resolv.conf"), *([(hosts, "/etc/hosts")] if hosts else [])]
    script = "".join(f'mount --bind "${i}" {target} && '
                     for i, (_, target) in enumerate(mounts, 1))
    return [UNSHARE, "-m", "sh", "-c", f'{script}shift {len(mounts)} && exec "$@"', "sh",
            *(str(source) for source, _ in mounts), *argv]


class PostfixInstance:
    def __init__(self, root: Path, exported: Path, domains: Iterable[str], smtp_port: int,
                 ca_file: Path, resolver: str, *, next_hops: dict[str, str] | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        """``exported``: the folder ``connectwiz export --format postfix`` wrote;
        ``domains``: recipient domains delivered by MX lookup to the lab's ``smtp_port``;
        ``resolver``: where the lab zone is served on port 53 (``lab_resolver``);
        ``next_hops``: more transport entries, domain -> next hop as exported
        (``[host]:port`` of an inbound route); ``extra``: main.cf lines added last."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.conf = root / "conf"
        self.port = free_port()
        self.maillog = root / "maillog"
        self.resolv_conf = write_resolv_conf(root / "resolv.conf", resolver)
        tables = self.conf / "connectwiz"
        tables.mkdir(parents=True)
        for item in exported.iterdir():
            shutil.copy(item, tables / item.name)
        hops = {domain: f"{domain}:{smtp_port}" for domain in domains}
        (self.conf / "transport").write_text(
            "".join(f"{d}\tsmtp:{hop}\n" for d, hop in {**hops, **(next_hops or {})}.items()))
        (tables / "tls_policy.lab").write_text(_rekey((tables / "tls_policy").read_text(), hops))
        (self.conf / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        exported_cf = (tables / "main.cf").read_text().splitlines()
        snippet = "\n".join(f"# replaced by the test: {line}" if line.startswith(_REPLACED)
                            else line for line in exported_cf)
        # The exported maps (the bundle's table, then any socketmap) with the rekeyed copy.
        maps = next(line for line in exported_cf if line.startswith("smtp_tls_policy_maps "))
        (self.conf / "main.cf").write_text("\n".join([
            "compatibility_level = 3.6",
            f"queue_directory = {root / 'queue'}",
            f"data_directory = {root / 'data'}",
            "mail_owner = postfix",
            "myhostname = postfix.interop.test",
            "mydestination =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "alias_maps =",
            "alias_database =",
            "local_recipient_maps =",
            "biff = no",
            f"maillog_file = {self.maillog}",
            f"maillog_file_prefixes = {root}",
            f"transport_maps = texthash:{self.conf / 'transport'}",
            "smtp_connect_timeout = 5s",
            "queue_run_delay = 300s",
            "",
            "# --- exported by connectwiz ---",
            snippet,
            "# --- test wiring (see tests/interop/postfix.py) ---",
            f"smtp_tls_CAfile = {ca_file}",
            re.sub(r"/tls_policy\b", "/tls_policy.lab", maps),
            *extra,
            "",
        ]))
        root.chmod(0o755)  # the postfix user must reach its data directory
        (root / "queue").mkdir()
        (root / "data").mkdir()
        shutil.chown(root / "data", "postfix")

    def postfix(self, *args: str, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
        assert POSTFIX is not None
        return subprocess.run([POSTFIX, "-c", str(self.conf), *args], capture_output=True,
                              text=True, timeout=timeout, check=False)

    def start(self) -> None:
        # The master (and every daemon it forks) lives in a mount namespace of its own, where
        # /etc/resolv.conf names the lab; nothing outside the namespace sees the bind mount.
        assert POSTFIX is not None
        done = subprocess.run(
            in_lab_namespace([POSTFIX, "-c", str(self.conf), "start"], self.resolv_conf),
            capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"postfix start failed: {done.stderr or done.stdout}\n"
                               f"{self.log()}")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:  # master binds the listener shortly after start
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1) as s:
                if s.recv(4).startswith(b"220"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"postfix did not listen on 127.0.0.1:{self.port}: {self.log()}")

    def stop(self) -> None:
        self.postfix("stop")
        pid_file = self.root / "queue" / "pid" / "master.pid"
        with contextlib.suppress(OSError, ValueError):  # still there: end our master only
            pid = int(pid_file.read_text().split()[0])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                subprocess.run(["kill", "-9", str(pid)], check=False)

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Poll the mail log until ``pattern`` (a regex) shows up."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log())
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"not in the Postfix log: {pattern}\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def flush(self) -> None:
        self.postfix("flush")


def _rekey(table: str, hops: dict[str, str]) -> str:
    out = []
    for line in table.splitlines():
        key, sep, rest = line.partition("\t")
        out.append(f"{hops[key]}\t{rest}" if sep and key in hops else line)
    return "\n".join(out) + "\n"


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@contextlib.contextmanager
def running(instance: PostfixInstance) -> Iterator[PostfixInstance]:
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
