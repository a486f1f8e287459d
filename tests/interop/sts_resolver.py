"""postfix-mta-sts-resolver (its ``mta-sts-daemon``) on loopback, for interop tests.

The daemon is the one README tells admins to run (the test extra installs it), with its
default configuration except where it listens (a free port, which the test passes to
``export --mta-sts``) and a short shutdown. Like Postfix (tests/interop/postfix.py) it runs in
a mount namespace of its own whose /etc/resolv.conf names the lab's name server, so its
``_mta-sts`` TXT lookups are real lookups of lab names. Two more test-only changes, both below
the daemon: it trusts the lab CA (``SSL_CERT_FILE``, read by OpenSSL's default paths, which
aiohttp's default context uses), and it fetches policies from port 443 only, so the lab
serves them there too (``add_policy_server``) on the name server's loopback address, which
a private /etc/hosts gives to every ``mta-sts.<domain>`` name. The policies, their host
names and the certificate are the lab's own.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from connectwiz.lab import LabHandle
from connectwiz.lab.zones import MTA_STS_PAGES

from .postfix import free_port, in_lab_namespace, write_resolv_conf

DAEMON = Path(sys.executable).with_name("mta-sts-daemon")  # the test extra's console script
START_TIMEOUT = 30.0
_policy_servers: set[int] = set()


def _serve_policies_on_443(lab: LabHandle, host: str) -> None:
    if id(lab) not in _policy_servers:
        lab.add_policy_server(host, 443)
        _policy_servers.add(id(lab))


class StsResolverDaemon:
    def __init__(self, root: Path, lab: LabHandle, resolver: str) -> None:
        """``resolver``: the loopback address serving the lab zone on port 53 (lab_resolver)."""
        root.mkdir(parents=True, exist_ok=True)
        _serve_policies_on_443(lab, resolver)
        self.port = free_port()
        self.socketmap = f"inet:127.0.0.1:{self.port}"  # what `export --mta-sts` is given
        self.log_file = root / "mta-sts-daemon.log"
        self.stderr_file = root / "mta-sts-daemon.stderr"
        self.config = root / "mta-sts-daemon.yml"
        self.config.write_text(f"host: 127.0.0.1\nport: {self.port}\n"
                               "shutdown_timeout: 1\n")
        self.resolv_conf = write_resolv_conf(root / "resolv.conf", resolver)
        self.hosts = root / "hosts"
        self.hosts.write_text("127.0.0.1 localhost\n"
                              + "".join(f"{resolver} mta-sts.{d}\n" for d in MTA_STS_PAGES))
        self.ca_file = lab.ca_file
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.stderr_file.open("wb") as stderr:  # a traceback if it dies at start
            self._process = subprocess.Popen(
                in_lab_namespace([str(DAEMON), "-v", "debug", "-l", str(self.log_file),
                                  "-c", str(self.config)], self.resolv_conf, self.hosts),
                env={**os.environ, "SSL_CERT_FILE": str(self.ca_file)},
                stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self._process.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise RuntimeError(f"mta-sts-daemon did not listen on 127.0.0.1:{self.port}:\n"
                           f"{self.log()}{self.stderr_file.read_text(errors='replace')}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lookups(self) -> list[str]:
        """The keys Postfix asked for so far. The daemon logs from a queue, so a lookup of a
        marker key of our own is asked first and awaited: every earlier one is written by
        then."""
        marker = f"marker-{time.monotonic_ns()}.invalid"
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            request = f"postfix {marker}".encode()
            s.sendall(str(len(request)).encode() + b":" + request + b",")
            s.recv(100)
        deadline = time.monotonic() + 10
        while f"Enq request: b'postfix {marker}'" not in self.log():
            assert time.monotonic() < deadline, f"the daemon did not log {marker}"
            time.sleep(0.05)
        keys = [line.split("Enq request: b'postfix ", 1)[1].rstrip("'")
                for line in self.log().splitlines() if "Enq request: b'postfix " in line]
        return [k for k in keys if k != marker]
