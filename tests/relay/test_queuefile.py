"""Queue files committed through the pool: one synchronous write, then a rename; what a
crash leaves at any point is recovered as committed (sealed) or dropped as never
acknowledged (unused, torn), never mistaken for damage. No network."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectwiz.relay.queuefile import (
    HEAD_LEN,
    DamagedQueueFile,
    QueueEntry,
    QueueWriter,
    Recipient,
    read_queue_file,
)
from connectwiz.relay.spool import Spool, new_message_id

BODY = b"Subject: pooled\r\n\r\n" + b"line of the body\r\n" * 200


def _entry() -> QueueEntry:
    return QueueEntry(id=new_message_id(), mail_from="a@partner.example",
                      recipients=[Recipient("b@corp.example")], received_at=1_700_000_000.0)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool")
    s.create()
    s.start_pool()
    yield s
    s.stop_pool()


def _pool_files(spool: Spool) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (spool.root / "pool").iterdir()}


def _commit(spool: Spool, publish: bool = True) -> tuple[QueueEntry, QueueWriter]:
    entry = _entry()
    writer = spool.open_message(entry.id)
    writer.add(BODY)
    writer.commit(entry)
    if publish:
        writer.publish()
    return entry, writer


def test_the_pool_is_filled_with_empty_private_files_when_it_starts(spool: Spool) -> None:
    """(That their folder is fsync'd before one is used: test_durability's strace check.)"""
    files = _pool_files(spool)
    assert len(files) == spool.pool.size and set(files.values()) == {0}
    assert {(p.stat().st_mode & 0o777) for p in (spool.root / "pool").iterdir()} == {0o600}


def test_a_small_message_is_one_sealed_write_into_a_pool_file_then_renamed(
        spool: Spool) -> None:
    before = _pool_files(spool)
    entry, writer = _commit(spool, publish=False)
    [used] = [name for name, size in _pool_files(spool).items() if size]
    assert used in before and not list((spool.root / "queue").iterdir())
    data = (spool.root / "pool" / used).read_bytes()
    assert data.startswith(b"CWZQ2 ") and data[HEAD_LEN:].startswith(BODY)
    writer.publish()
    assert not (spool.root / "pool" / used).exists()
    assert spool.queue_path(entry.id).read_bytes() == data
    assert spool.read_body(entry.id) == BODY
    assert spool.read_entry("incoming", entry.id) == entry


def test_a_commit_whose_rename_a_crash_lost_is_recovered_under_its_name(spool: Spool) -> None:
    entry, _ = _commit(spool, publish=False)
    spool.stop_pool()  # the relay is gone; what is on disk stays (stop removes unused ones)
    found = Spool(spool.root).recover()
    assert [e.id for e in found.ready] == [entry.id] and not found.quarantined
    assert spool.read_body(entry.id) == BODY
    assert not list((spool.root / "pool").iterdir())


def test_unused_and_torn_pool_files_are_dropped_not_quarantined(spool: Spool) -> None:
    """A pool file whose write a crash cut short was never acknowledged (the 250 follows
    the write): dropped, like an unused one, and not taken for damage."""
    _, cut = _commit(spool, publish=False)
    _, flipped = _commit(spool, publish=False)
    assert cut._slot is not None and flipped._slot is not None
    cut_path, flipped_path = cut._slot[1], flipped._slot[1]
    os.truncate(cut_path, cut_path.stat().st_size - 100)  # the tail never reached the disk
    data = bytearray(flipped_path.read_bytes())
    data[HEAD_LEN + 10] ^= 0xFF  # same length, other bytes: the checksum tells
    flipped_path.write_bytes(bytes(data))
    os.ftruncate(os.open(spool.root / "pool" / "zeros", os.O_WRONLY | os.O_CREAT), 4096)
    spool.stop_pool()
    found = Spool(spool.root).recover()
    assert found.ready == [] and found.quarantined == []
    assert not list((spool.root / "pool").iterdir()) and not list(spool.root.glob("corrupt/*"))


def test_a_damaged_body_in_the_queue_is_caught_by_the_checksum(spool: Spool) -> None:
    entry, _ = _commit(spool)
    path = spool.queue_path(entry.id)
    data = bytearray(path.read_bytes())
    data[HEAD_LEN + 5] ^= 0x20
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedQueueFile, match="checksum"):
        spool.read_body(entry.id)


def test_queue_files_of_the_previous_format_are_still_read(spool: Spool) -> None:
    """Upgrading with mail in the queue: CWZQ1 files (no checksum) are delivered."""
    entry = _entry()
    spool.queue_path(entry.id).write_bytes(
        b"CWZQ1 %012d\n" % len(BODY) + BODY + entry.to_json())
    found = Spool(spool.root).recover()
    assert [e.id for e in found.ready] == [entry.id]
    assert spool.read_body(entry.id) == BODY


def test_the_header_seals_length_and_checksum(spool: Spool) -> None:
    entry, _ = _commit(spool)
    data = spool.queue_path(entry.id).read_bytes()
    _, body_len, envelope_len, crc = data[:HEAD_LEN].split()
    assert int(body_len) == len(BODY) and int(envelope_len) == len(entry.to_json())
    assert int(crc, 16) == zlib.crc32(data[HEAD_LEN:])
    assert read_queue_file(spool.queue_path(entry.id), None, want_body=True) == (entry, BODY)


def test_an_empty_pool_means_the_ordinary_commit(spool: Spool) -> None:
    assert spool.pool is not None
    while spool.pool._free:  # taken by other sessions; the filling thread is behind
        spool.pool._free.popleft()
    entry, writer = _commit(spool)
    assert writer._slot is None and spool.read_body(entry.id) == BODY


def test_a_failed_write_leaves_no_pool_file_with_content(spool: Spool) -> None:
    assert spool.pool is not None
    fd, path = spool.pool._free[0]
    os.close(fd)  # the write fails (EBADF), as it would on a full or broken disk
    spool.pool._free[0] = (os.open(path, os.O_RDONLY), path)
    entry = _entry()
    writer = spool.open_message(entry.id)
    writer.add(BODY)
    with pytest.raises(OSError):
        writer.commit(entry)
    assert not path.exists() and not spool.queue_path(entry.id).exists()
    assert not any(_pool_files(spool).values())


def test_a_failed_rename_revokes_the_commit(spool: Spool) -> None:
    """The caller then answers 451: the message must not be delivered as well."""
    _, writer = _commit(spool, publish=False)
    assert writer._slot is not None
    path = writer._slot[1]
    (spool.root / "queue").rmdir()  # the rename fails (ENOENT); modes would not stop root
    try:
        with pytest.raises(OSError):
            writer.publish()
    finally:
        (spool.root / "queue").mkdir()
    assert not path.exists()
    spool.stop_pool()
    assert Spool(spool.root).recover().ready == []


def test_stopping_removes_the_unused_pool_files(spool: Spool) -> None:
    _commit(spool)
    spool.stop_pool()
    assert not list((spool.root / "pool").iterdir())
    assert len(list((spool.root / "queue").iterdir())) == 1
