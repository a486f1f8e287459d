"""Held Secure Messaging content on disk: the secure key, sealing, and the held store the
relay writes and the portal and ``connectwiz secure`` read and change. Layout under the spool
(docs/secure-messaging.md is the reference the portal reads)::

    secure/<id>/message.enc   the message as held (client header removed), encrypted with
                              the secure key (AES-256-GCM, kept outside the spool)
    secure/<id>/record.json   definition snapshot, expiry, recipients with token hashes
    secure/<id>/lock          flock'd by whoever rewrites record.json

Durability follows the queue: every file goes through ``Spool.write_atomic`` (temp file,
fsync, rename, fsync the folder). Tokens and message content are never logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connectwiz.errors import UserError
from connectwiz.policy.secure import (
    extend_expiry,
)
from connectwiz.relay.spool import Spool

RECORD_VERSION = 1
BODY_FILE = "message.enc"
_SEALED = b"CWZ-AESGCM-1\n"  # format marker of message.enc: marker, 12-byte nonce, ciphertext


def iso_utc(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def token_hash(token: str) -> str:
    """What the record keeps of a token; the portal hashes what it is given and compares
    with ``hmac.compare_digest``."""
    return hashlib.sha256(token.encode()).hexdigest()


def find_recipient(record: dict[str, Any], token: str) -> dict[str, Any] | None:
    """The recipient a link's token belongs to, or None; the check the portal makes. Every
    stored hash is compared, in constant time, so timing tells nothing about the others."""
    digest = token_hash(token)
    found = None
    for recipient in record.get("recipients", []):
        for stored in recipient.get("token_sha256", []):
            if hmac.compare_digest(stored, digest):
                found = recipient
    return found


# -- the secure key: held content is encrypted with it, and it never lives in the spool ------


def default_key_path() -> Path:
    """``$XDG_CONFIG_HOME/connectwiz/secure.key`` (``~/.config`` when unset or empty)."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "connectwiz" / "secure.key"


def load_secure_key(path: Path | None = None, create: bool = True) -> bytes:
    """The 32-byte key in ``path`` (64 hex digits), created 0600 on first use when ``create``
    (the relay's set-up; the portal only reads it). A key file others can read is refused,
    as ssh refuses such a private key."""
    path = path or default_key_path()
    if not path.exists() and not create:
        raise UserError(f"secure key {path}: no such file; give the relay's --secure-key "
                        "(the relay creates it)")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            try:
                os.write(fd, secrets.token_hex(32).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise UserError(f"secure key {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise UserError(f"secure key {path}: readable by others; chmod 600 it")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise UserError(f"secure key {path}: expected 64 hex digits")
    return key


def seal(key: bytes, held_id: str, data: bytes) -> bytes:
    """Encrypt ``data``; the held id is authenticated too, so files cannot be swapped."""
    nonce = secrets.token_bytes(12)
    return _SEALED + nonce + AESGCM(key).encrypt(nonce, data, held_id.encode())


def unseal(key: bytes, held_id: str, blob: bytes) -> bytes:
    if not blob.startswith(_SEALED):
        raise UserError(f"held message {held_id}: not in the encrypted format")
    rest = blob[len(_SEALED):]
    try:
        return AESGCM(key).decrypt(rest[:12], rest[12:], held_id.encode())
    except InvalidTag:
        raise UserError(f"held message {held_id}: cannot be decrypted with this secure key "
                        f"(another key, or damaged)") from None


# -- the held store ----------------------------------------------------------------------------


class HeldStore:
    """``<spool>/secure``: held messages and their records. Blocking I/O: use a thread.
    The secure key is read (or created) only when content is written or read, so listing,
    extending and revoking need no key."""

    def __init__(self, spool: Spool, key_file: Path | None = None,
                 create_key: bool = True) -> None:
        self.spool = spool
        self.root = spool.root / "secure"
        self.key_file = key_file
        self.create_key = create_key  # False for the portal: only the relay makes the key
        self._key: bytes | None = None

    def key(self) -> bytes:
        if self._key is None:
            self._key = load_secure_key(self.key_file, self.create_key)
        return self._key

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, held_id: str) -> Path:
        if not re.fullmatch(r"[0-9A-Za-z]+", held_id):
            raise UserError(f"{held_id!r} is not a held message id")
        return self.root / held_id.upper()

    @contextlib.contextmanager
    def locked(self, held_id: str) -> Iterator[Path]:
        folder = self._dir(held_id)
        folder.mkdir(exist_ok=True)
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield folder
        finally:
            os.close(fd)

    def exists(self, held_id: str) -> bool:
        return (self._dir(held_id) / "record.json").is_file()

    def read(self, held_id: str) -> dict[str, Any]:
        path = self._dir(held_id) / "record.json"
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            raise UserError(f"no held message {held_id!r} in {self.root}") from None
        except ValueError:  # written atomically, so only outside damage gets here
            raise UserError(f"{path}: damaged (not JSON); fix or remove it") from None

    def write(self, record: dict[str, Any]) -> None:
        data = json.dumps(record, indent=2, sort_keys=True).encode()
        self.spool.write_atomic(self._dir(record["id"]) / "record.json", data)

    def write_body(self, held_id: str, body: bytes) -> None:
        sealed = seal(self.key(), held_id.upper(), body)
        self.spool.write_atomic(self._dir(held_id) / BODY_FILE, sealed)

    def read_body(self, held_id: str) -> bytes | None:
        """The held message, decrypted; None once its content is deleted."""
        try:
            blob = (self._dir(held_id) / BODY_FILE).read_bytes()
        except FileNotFoundError:
            return None
        return unseal(self.key(), held_id.upper(), blob)

    def delete_body(self, held_id: str) -> bool:
        """Delete the held content (revoked or expired); True when there was some."""
        path = self._dir(held_id) / BODY_FILE
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the deletion itself survives a crash
        finally:
            os.close(fd)
        return True

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/record.json"))

    def update(self, held_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read, change and rewrite a record under its lock; returns the new record."""
        if not self.exists(held_id):
            raise UserError(f"no held message {held_id!r} in {self.root}")
        with self.locked(held_id):
            record = self.read(held_id)
            change(record)
            self.write(record)
        return record


def held_status(record: dict[str, Any], now: datetime) -> str:
    if record.get("revoked_at"):
        return "revoked"
    if now >= _parse_iso(record["expires_at"]):
        return "expired"
    return "held"


def extend_held(store: HeldStore, held_id: str, days: int, now: datetime) -> dict[str, Any]:
    """Push the expiry ``days`` later, within the limit the definition allowed."""

    def change(record: dict[str, Any]) -> None:
        status = held_status(record, now)
        if status == "revoked":
            raise UserError(f"{held_id}: revoked; it cannot be extended")
        try:
            new = extend_expiry(_parse_iso(record["expires_at"]),
                                _parse_iso(record["limit_at"]), days)
        except ValueError as exc:
            raise UserError(f"{held_id}: {exc}") from None
        record["expires_at"] = iso_utc(new)
        record["extended_days"] = record.get("extended_days", 0) + days
        unlock_recipients(record)

    return store.update(held_id, change)


def unlock_recipients(record: dict[str, Any]) -> None:
    """Give every recipient a fresh set of code guesses: the admin's answer to a link the
    portal locked after too many wrong codes (portal.limits keeps those counters)."""
    for r in record["recipients"]:
        for key in ("locked_at", "code_wait_until"):
            r.pop(key, None)
        r["wrong_codes"] = 0


def revoke_held(store: HeldStore, held_id: str, now: datetime) -> dict[str, Any]:
    """Recipients can no longer read it; the held copy of the content is deleted."""

    def change(record: dict[str, Any]) -> None:
        if not record.get("revoked_at"):
            record["revoked_at"] = iso_utc(now)

    record = store.update(held_id, change)
    store.delete_body(held_id)
    return record

