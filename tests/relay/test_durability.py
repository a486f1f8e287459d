"""Nothing acknowledged is lost, observed from outside the relay whatever files its spool uses:
the 250 to DATA leaves only after the message's spool files and a name for each are durable
(the relay process runs under strace), and a spool that cannot be written answers 451 and
keeps nothing, whether it is full or read-only."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import pytest

from .conftest import STRICT, body, lab_messages, make_model, send, token, wait_lab
from .test_process import BUNDLE, start_relay

pytestmark = pytest.mark.network

STRACE = shutil.which("strace")
WRITES = {"write", "pwrite64", "writev", "pwritev", "pwritev2", "sendto", "sendmsg"}
SYNCS = {"fsync", "fdatasync"}
RENAMES = {"rename", "renameat", "renameat2"}
OPENS = {"open", "openat"}


@dataclass
class Call:
    """One system call from an ``strace -f -y`` log: ``start``/``end`` are the log lines
    where it was entered and where it returned (they differ when threads interleave)."""

    pid: str
    name: str
    args: str
    result: str
    start: int
    end: int

    @property
    def fd(self) -> str | None:
        match = re.match(r"(\d+)<", self.args)
        return match.group(1) if match else None

    @property
    def fd_path(self) -> str | None:
        match = re.match(r"\d+<(.*?)>", self.args)
        return match.group(1) if match else None

    @property
    def ok(self) -> bool:
        return not self.result.startswith("-1")


# strace pads short lines before "= result" ("close(3</x>)      = 0").
_RESULT = re.compile(r"(.*)\)\s+= (.*)")


def parse_strace(text: str) -> list[Call]:
    calls: list[Call] = []
    pending: dict[str, tuple[str, str, int]] = {}
    for n, line in enumerate(text.splitlines()):
        pid, _, rest = line.strip().partition(" ")
        rest = rest.lstrip()
        if rest.endswith(" <unfinished ...>"):
            name, _, args = rest.removesuffix(" <unfinished ...>").partition("(")
            pending[pid] = (name, args, n)
        elif resumed := re.match(r"<\.\.\. (\w+) resumed>(.*)", rest):
            name, args, start = pending.pop(pid)
            if done := _RESULT.fullmatch(args + resumed.group(2)):
                calls.append(Call(pid, name, done[1], done[2], start, n))
        elif re.match(r"\w+\(", rest) and (done := _RESULT.fullmatch(rest)):
            name, _, args = done[1].partition("(")
            calls.append(Call(pid, name, args, done[2], n, n))
    return calls


def _relay_pid(wrapper_pid: int) -> int:
    children = Path(f"/proc/{wrapper_pid}/task/{wrapper_pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.mark.peer
@pytest.mark.skipif(STRACE is None, reason="strace not installed (scripts/system-packages.txt)")
async def test_250_to_data_is_sent_only_after_the_spool_is_fsynced(lab, tmp_path) -> None:
    bundle, spool, log = tmp_path / "bundle.toml", tmp_path / "spool", tmp_path / "strace.log"
    bundle.write_text(BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port))
    traced = ",".join(sorted(WRITES | SYNCS | RENAMES | OPENS | {"close"}))
    relay = await start_relay(lab, bundle, spool, wrapper=[
        STRACE, "-f", "--seccomp-bpf", "-qq", "-e", "signal=none", "-s", "100000", "-yy",
        "-e", f"trace={traced}", "-o", str(log)])
    relay_pid = _relay_pid(relay.proc.pid)
    sent = []  # two messages: the second must not ride on the first one's fsyncs
    try:
        for _ in range(2):
            tag = token()
            sent.append((tag, await send(relay.port, f"alice-{tag}@partner.example",
                                         [f"bob-{tag}@corp.example"], body(tag))))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(relay_pid, signal.SIGKILL)  # strace then exits by itself
        await relay.wait_exit()

    calls = parse_strace(log.read_text(errors="replace"))
    for tag, msg_id in sent:
        _check_fsynced_before_250(calls, tag, msg_id, str(spool.resolve()))


def _check_fsynced_before_250(calls: list[Call], tag: str, msg_id: str, root: str) -> None:
    # The reply on the client's socket (the JSON log on stderr may quote a 250 too).
    [reply] = [c for c in calls if c.name in WRITES and (c.fd_path or "").startswith("TCP:")
               and '"250 ' in c.args and msg_id in c.args]
    before = [c for c in calls if c.end < reply.start and c.ok]

    def in_spool(path: str | None) -> bool:
        return path is not None and (path == root or path.startswith(root + "/"))

    # Every write of this message (body and envelope) into a queue file is durable before the
    # 250 goes out: made through a descriptor opened with O_DSYNC (or O_SYNC), or fsync'd on
    # the same descriptor before that descriptor is closed. The message log (SPOOL/log/) is
    # the receipt view, not the message: like Postfix's maillog it is not part of what the
    # 250 promises.
    log_dir = root + "/log/"
    stored = [c for c in before if c.name in WRITES and tag in c.args and in_spool(c.fd_path)
              and not (c.fd_path or "").startswith(log_dir)]
    assert stored, "the message never reached the spool before the 250"
    synchronous: set[str] = set()  # files written through O_DSYNC (paths)
    for write in stored:
        if (opened := _opened(calls, write)) and re.search(r"\bO_D?SYNC\b", opened.args):
            synchronous.add(write.fd_path or "")
            continue
        # (the same number in another worker process is another descriptor: -yy names it)
        following = [c for c in calls if c.fd == write.fd and c.fd_path == write.fd_path
                     and c.start > write.end and c.name in SYNCS | {"close"}]
        assert following and following[0].name in SYNCS, f"not fsync'd: {write.fd_path}"
        assert following[0].end < reply.start, f"fsync'd after the 250: {write.fd_path}"
    # A name for the message that a crash keeps: a file written synchronously was created in
    # a folder fsync'd after its creation (a later rename keeps one name or the other); any
    # other file, renamed into place, has the destination folder fsync'd after the rename.
    dir_syncs = [c for c in before if c.name in SYNCS and in_spool(c.fd_path)
                 and os.path.isdir(c.fd_path or "")]
    for path in synchronous:
        [created] = [c for c in calls if c.name in OPENS and "O_CREAT" in c.args
                     and c.result.partition("<")[2].rstrip(">") == path]
        assert any(s.fd_path == os.path.dirname(path) and s.start > created.end
                   for s in dir_syncs), f"{path}: its folder not fsync'd after it was made"
    written = {w.fd_path for w in stored}
    if written - synchronous:
        assert any(s.start > stored[0].end for s in dir_syncs), "no folder fsync after the writes"
    for rename in (c for c in before if c.name in RENAMES and c.start > stored[0].start):
        source, target = re.findall(r'"((?:[^"\\]|\\.)*)"', rename.args)[-2:]
        if os.path.realpath(source) in synchronous:
            continue
        if in_spool(os.path.realpath(target)):
            folder = os.path.dirname(os.path.realpath(target))
            assert any(s.fd_path == folder and s.start > rename.end for s in dir_syncs), \
                f"{folder} not fsync'd after the rename to {target}"


def _opened(calls: list[Call], write: Call) -> Call | None:
    """The call that opened the descriptor ``write`` uses (its last open of that file before
    the write, maybe in another thread: strace -f names threads, not processes)."""
    opens = [c for c in calls if c.name in OPENS and c.end < write.start
             and c.result == f"{write.fd}<{write.fd_path}>"]
    return opens[-1] if opens else None


@pytest.fixture
def tiny_spool(tmp_path: Path) -> Iterator[Path]:
    """A spool on its own 1 MiB tmpfs, so the test can fill it up."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root: {done.stderr.strip()}")
    try:
        yield mount / "spool"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _fill(path: Path) -> None:
    """Write ``path`` until its file system reports ENOSPC."""
    with path.open("wb", buffering=0) as f:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)
    with pytest.raises(OSError) as info, (path.parent / "probe").open("wb", buffering=0) as f:
        f.write(b"x")
    assert info.value.errno == errno.ENOSPC


def _files(root: Path) -> dict[str, int]:
    """The spool's files that hold something (an empty file holds no message: the relay
    keeps empty queue files ready, and uses or replaces them as it likes)."""
    return {str(p.relative_to(root)): size for p in root.rglob("*")
            if p.is_file() and (size := p.stat().st_size)}


@pytest.mark.parametrize("lines", [0, 13_000], ids=["small", "streamed"])
async def test_full_spool_answers_451_and_keeps_nothing(lab, tiny_spool, relays,
                                                       event_log, lines: int) -> None:
    """A small message fails when it is committed; one of 1 MB already while DATA is
    streamed into the spool (in pieces of 256 KiB)."""
    # (tiny_spool before relays: the relay stops before its file system is unmounted)
    r = await relays(make_model(lab), spool=tiny_spool)
    filler = tiny_spool.parent / "filler"
    await asyncio.to_thread(_fill, filler)
    (tiny_spool.parent / "probe").unlink()
    before = _files(tiny_spool)
    tag = token()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False, timeout=10)
    await client.connect()
    try:
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await client.sendmail("p@partner.example", [f"bob-{tag}@corp.example"],
                                  body(tag) + (b"y" * 76 + b"\r\n") * lines)
        assert info.value.code == 451
        errors = [e for e in event_log.events() if e["event"] == "error"]
        assert [(e["client"], e["reason"].startswith("spool write failed: ")) for e in errors] \
            == [("127.0.0.1", True)]
        assert "No space left on device" in errors[0]["reason"]
        assert _files(tiny_spool) == before, "a refused message left files behind"
        # Space again: the same session is served and the next message is queued.
        filler.unlink()
        errors, _ = await client.sendmail("p@partner.example", [f"bob-{tag}@corp.example"],
                                          body(tag))
        assert not errors
    finally:
        client.close()
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)


async def _until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(condition):
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_connection_dropped_during_data_leaves_nothing(lab, relays, tmp_path) -> None:
    """The first 256 KiB of a message are already in the spool when the client goes away:
    the partial file is removed."""
    spool = tmp_path / "spool"
    r = await relays(make_model(lab), spool=spool)
    before = _files(spool)
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    try:
        assert (await reader.readline()).startswith(b"220")
        for line in (b"HELO t\r\n", b"MAIL FROM:<p@partner.example>\r\n",
                     b"RCPT TO:<bob@corp.example>\r\n", b"DATA\r\n"):
            writer.write(line)
            assert (await reader.readline())[:1] in (b"2", b"3")
        writer.write(body(token()) + (b"y" * 76 + b"\r\n") * 13_000)  # no end of DATA
        await writer.drain()
        await _until(lambda: _files(spool) != before, "nothing written while DATA streamed")
    finally:
        writer.close()
    await _until(lambda: _files(spool) == before, "the partial message was left behind")


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path, bool], None]]:
    """``read_only(folder, True/False)``: a bind mount of ``folder`` over itself, remounted
    read-only or writable (root ignores file modes, not a read-only mount). The relay's files
    opened before the first call stay on the original mount, so the remount is not busy."""
    mounted: list[Path] = []

    def switch(folder: Path, on: bool) -> None:
        if folder not in mounted:
            done = subprocess.run(["mount", "--bind", str(folder), str(folder)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"a bind mount needs root: {done.stderr.strip()}")
            mounted.append(folder)
        subprocess.run(["mount", "-o", f"remount,bind,{'ro' if on else 'rw'}", str(folder)],
                       check=True, capture_output=True)

    yield switch
    for folder in mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


async def test_read_only_spool_answers_451_and_keeps_nothing(lab, relays, read_only, tmp_path,
                                                             event_log) -> None:
    # (relays before read_only: the mount goes first, so the relay stops on a writable spool)
    spool = tmp_path / "spool"
    r = await relays(make_model(lab), spool=spool)
    read_only(spool, True)
    before = _files(spool)
    tag = token()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False, timeout=10)
    await client.connect()
    try:
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await client.sendmail("p@partner.example", [f"bob-{tag}@corp.example"], body(tag))
        assert info.value.code == 451
        errors = [e for e in event_log.events() if e["event"] == "error"]
        assert [(e["client"], e["reason"].startswith("spool write failed: ")) for e in errors] \
            == [("127.0.0.1", True)]
        assert _files(spool) == before, "a refused message left files behind"
        # Writable again: the same session is served and the next message is queued.
        read_only(spool, False)
        errors, _ = await client.sendmail("p@partner.example", [f"bob-{tag}@corp.example"],
                                          body(tag))
        assert not errors
    finally:
        client.close()
    assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)


async def test_the_spool_is_private_to_the_relay(lab, relays) -> None:
    """Queued mail is readable by the relay's user only, whatever the umask: the spool
    folder is 0700 and every file in it 0600 (queue file, state file, message log, lock,
    STARTTLS key), but the certificate the relay shows every client."""
    r = await relays(make_model(lab, delivery={"selfsigned.example": STRICT}))
    tag = token()
    msg_id = await send(r.port, f"alice-{tag}@corp.example", [f"rcpt-{tag}@selfsigned.example"],
                        body(tag))
    await r.wait_status(msg_id, "deferred")
    assert r.spool.stat().st_mode & 0o777 == 0o700
    modes = {str(p.relative_to(r.spool)): p.stat().st_mode & 0o777
             for p in r.spool.rglob("*") if p.is_file()}
    assert {name.split("/")[0] for name in modes} >= {"queue", "deferred", "log", "lock"}
    assert {name: mode for name, mode in modes.items() if mode != 0o600} \
        == {"tls/relay-cert.pem": 0o644}
