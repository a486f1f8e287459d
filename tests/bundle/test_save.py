"""Saving: atomic with a backup, never over a broken or changed file, one writer at a time."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectwiz.bundle import Bundle, BundleError

from .conftest import HAND_WRITTEN

AT = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def test_save_keeps_previous_version_as_bak_and_leaves_no_temp_files(hand_written: Path) -> None:
    os.chmod(hand_written, 0o640)
    bundle = Bundle.load(hand_written)
    bundle.add_domains(["one.example"], at=AT)
    bundle.save()
    bak = hand_written.with_name("bundle.toml.bak")
    assert bak.read_text(encoding="utf-8") == HAND_WRITTEN
    first = hand_written.read_text(encoding="utf-8")
    assert "one.example" in first
    assert hand_written.stat().st_mode & 0o777 == 0o640  # permissions survive the rename
    bundle.add_domains(["two.example"], at=AT)
    bundle.save()
    assert bak.read_text(encoding="utf-8") == first
    leftovers = [p.name for p in hand_written.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_broken_bundle_is_never_overwritten(hand_written: Path) -> None:
    broken = HAND_WRITTEN.replace("port = 25", "port = ", 1)
    hand_written.write_text(broken, encoding="utf-8")
    with pytest.raises(BundleError):
        Bundle.load(hand_written)
    with pytest.raises(BundleError):
        Bundle.load_or_new(hand_written)
    assert hand_written.read_text(encoding="utf-8") == broken


def test_hand_edit_since_load_is_not_overwritten(hand_written: Path) -> None:
    bundle = Bundle.load(hand_written)
    bundle.add_domains(["one.example"], at=AT)
    edited = HAND_WRITTEN.replace("# our only mail domain", "# edited by hand meanwhile")
    hand_written.write_text(edited, encoding="utf-8")
    with pytest.raises(BundleError, match="changed on disk since it was read"):
        bundle.save()
    assert hand_written.read_text(encoding="utf-8") == edited


def test_file_created_by_someone_else_after_load_or_new_is_not_overwritten(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bundle.toml"
    bundle = Bundle.load_or_new(path)
    bundle.add_domains(["one.example"], at=AT)
    path.write_text(HAND_WRITTEN, encoding="utf-8")
    with pytest.raises(BundleError, match="was created since it was read"):
        bundle.save()
    assert path.read_text(encoding="utf-8") == HAND_WRITTEN


def test_second_writer_in_process_gets_a_lock_error(hand_written: Path) -> None:
    first, second = Bundle.load(hand_written), Bundle.load(hand_written)
    second.add_domains(["late.example"], at=AT)
    with first.lock():
        busy = rf"being written by another process \(pid {os.getpid()}\)"
        with pytest.raises(BundleError, match=busy):
            second.save()
        first.add_domains(["early.example"], at=AT)
        first.save()  # the holder saves without taking the lock again
    # the loser's change is refused, not silently lost over the winner's
    with pytest.raises(BundleError, match="changed on disk"):
        second.save()
    assert "early.example" in hand_written.read_text(encoding="utf-8")


def test_second_writer_process_gets_a_lock_error(hand_written: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\n"
         "from connectwiz.bundle import Bundle\n"
         "b = Bundle.load(sys.argv[1])\n"
         "with b.lock():\n"
         "    print('locked', flush=True)\n"
         "    sys.stdin.readline()\n",
         str(hand_written)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        bundle = Bundle.load(hand_written)
        bundle.add_domains(["one.example"], at=AT)
        with pytest.raises(BundleError, match=rf"another process \(pid {holder.pid}\)"):
            bundle.save()
        assert hand_written.read_text(encoding="utf-8") == HAND_WRITTEN
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    bundle.save()  # free again once the other writer is done
    assert "one.example" in hand_written.read_text(encoding="utf-8")


def test_a_document_that_would_not_validate_is_not_written(hand_written: Path) -> None:
    bundle = Bundle.load(hand_written)
    doc = bundle._document()  # simulate a bad edit reaching the document
    doc["inbound_routes"][0]["port"] = 0
    with pytest.raises(BundleError, match="inbound_routes"):
        bundle.save()
    assert hand_written.read_text(encoding="utf-8") == HAND_WRITTEN


def test_save_as_writes_another_file(hand_written: Path, tmp_path: Path) -> None:
    bundle = Bundle.load(hand_written)
    copy = tmp_path / "copy.toml"
    bundle.save(copy)
    assert copy.read_text(encoding="utf-8") == HAND_WRITTEN
    assert Bundle.from_text("schema_version = 1\n").path is None


def test_unwritable_folder_is_a_bundle_error(hand_written: Path) -> None:
    bundle = Bundle.load(hand_written)
    bundle.add_domains(["one.example"], at=AT)
    blocker = hand_written.parent / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(BundleError, match=r"cannot write"):
        bundle.save(blocker / "bundle.toml")
