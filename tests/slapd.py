"""A real OpenLDAP server for directory tests: Debian's ``slapd`` with a config the test
writes, on 127.0.0.1 and an ephemeral port, never a system instance. Entries are loaded and
changed with ldap-utils (``ldapadd``/``ldapmodify``), as an admin would."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SUFFIX = "dc=corp,dc=example"
ADMIN = f"cn=admin,{SUFFIX}"
PASSWORD = "test-secret"
SCHEMAS = ("core", "cosine", "inetorgperson")

CONFIG = """\
{includes}
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {root}/slapd.pid
database mdb
maxsize 16777216
suffix "{suffix}"
rootdn "{admin}"
rootpw {password}
directory {root}/db
"""


class Slapd:
    def __init__(self, root: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.root, self.port, self.process = root, port, process
        self.url = f"ldap://127.0.0.1:{port}"

    def _tool(self, tool: str, ldif: str) -> None:
        subprocess.run([tool, "-x", "-H", self.url, "-D", ADMIN, "-w", PASSWORD],
                       input=ldif.encode(), check=True, capture_output=True, timeout=30)

    def add(self, ldif: str) -> None:
        self._tool("ldapadd", ldif)

    def modify(self, ldif: str) -> None:
        self._tool("ldapmodify", ldif)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def running_slapd(root: Path) -> Iterator[Slapd]:
    if not Path(SLAPD).exists() or not Path("/usr/lib/ldap/back_mdb.so").exists():
        pytest.skip("slapd is not installed (scripts/system-packages.txt: slapd, ldap-utils)")
    (root / "db").mkdir(parents=True)
    includes = "\n".join(f"include /etc/ldap/schema/{s}.schema" for s in SCHEMAS)
    conf = root / "slapd.conf"
    conf.write_text(CONFIG.format(includes=includes, root=root, suffix=SUFFIX, admin=ADMIN,
                                  password=PASSWORD))
    port = _free_port()
    # -d 0: stay in the foreground (a child we own and stop), logging nothing.
    process = subprocess.Popen([SLAPD, "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/",
                                "-d", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not _answers(port):
            if process.poll() is not None:
                err = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"slapd exited with {process.returncode}: {err[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("slapd did not listen within 30 s")
            time.sleep(0.05)  # polling for the port: the condition is checked each round
        server = Slapd(root, port, process)
        server.add(f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
                   f"o: Corp\ndc: corp\n")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
