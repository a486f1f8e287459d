"""The Bundle: one TOML file, read fast, edited in place, written safely.

Loading parses with ``tomli`` (the stdlib ``tomllib`` parser, compiled: fast) and validates
into a PolicyModel. The tomlkit document, which keeps comments and layout, is only built
when an edit is asked for: tomlkit is many times slower to parse, and most readers (the
relay, ``explain``, ``domains list``) never edit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli
import tomlkit
from tomlkit.exceptions import TOMLKitError

from connectwiz.atomic import write_atomic
from connectwiz.bundle import document as d
from connectwiz.bundle.data import (
    model_data,
)
from connectwiz.bundle.errors import BundleError
from connectwiz.bundle.locate import toml_error
from connectwiz.bundle.reader import check_port, normalize_host, parse_network
from connectwiz.bundle.schema import build_model
from connectwiz.bundle.split import Document, SplitDocument, split_document
from connectwiz.errors import UserError
from connectwiz.policy.domains import InvalidDomain, normalize_domain
from connectwiz.policy.model import (
    EncryptionMode,
    IPNetwork,
    LastValidation,
    PolicyModel,
)


def parse_text(text: str, source: str) -> PolicyModel:
    """TOML text to a validated model, or BundleError naming source, line and key."""
    return _parse(text, source)[1]


def _parse(text: str, source: str) -> tuple[dict[str, Any], PolicyModel]:
    try:
        data = tomli.loads(text)  # tomllib's parser, compiled: twice as fast at 10k domains
    except tomli.TOMLDecodeError as exc:
        line, problem = toml_error(text, str(exc))
        raise BundleError(f"not valid TOML: {problem}", file=source, line=line) from None
    return data, build_model(data, source, lambda: text)


def _fingerprint(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _read(path: Path) -> bytes | None:
    """The file's bytes, None when it does not exist; other failures are BundleErrors."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise BundleError("is a directory, not a bundle file", file=str(path)) from None
    except OSError as exc:
        raise BundleError(f"cannot read: {exc.strerror}", file=str(path)) from None


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise BundleError(f"not UTF-8 text (byte {exc.start})", file=source, line=line) from None


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class _Lock:
    """An exclusive, non-blocking fcntl lock on ``<bundle>.lock`` holding the owner's pid."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self.fd: int | None = None

    def acquire(self, bundle: Path) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BundleError(f"cannot create lock file {self.path.name}: {exc.strerror}",
                              file=str(bundle)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise BundleError(f"bundle is being written by another process (pid {owner}); "
                                  f"try again when it is done", file=str(bundle)) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _replace(target: Path, text: str, expected: str | None) -> str:
    """Replace ``target`` (lock held) if it still has fingerprint ``expected``; keeps the
    old file as ``.bak``. Returns the new fingerprint."""
    current = _read(target)
    if _fingerprint(current) != expected:
        if current is None:
            what = "was deleted"
        else:
            what = "was created" if expected is None else "changed on disk"
        raise BundleError(f"{what} since it was read; not overwriting it (run the command "
                          f"again to start from the current file)", file=str(target))
    data = text.encode("utf-8")
    mode = _default_mode()
    if current is not None:
        mode = target.stat().st_mode & 0o7777
        write_atomic(target.with_name(target.name + ".bak"), current, mode)
    write_atomic(target, data, mode)
    return hashlib.sha256(data).hexdigest()


class Bundle:
    """A policy bundle: ``model`` to read, edit methods to change, ``save`` to write."""

    def __init__(self, path: Path | None, text: str | None, model: PolicyModel | None,
                 fingerprint: str | None, source: str,
                 data: dict[str, Any] | None = None) -> None:
        self._path = path
        self._text = text  # None for a new bundle: the document is built from scratch
        self._data = data  # tomli's reading of _text, until the document is built
        self._doc: Document | None = None
        self._domains: dict[str, int] | None = None  # domain -> entry index in _doc
        self._model = model
        self._fingerprint = fingerprint  # of the file as read or last written
        self._source = source
        self._lock: _Lock | None = None

    # Loading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Bundle:
        p = Path(path)
        raw = _read(p)
        if raw is None:
            raise BundleError("no such file (add a domain or run the wizard to create it)",
                              file=str(p))
        return cls._from_bytes(p, raw)

    @classmethod
    def load_or_new(cls, path: str | os.PathLike[str]) -> Bundle:
        """The bundle at ``path``, or an empty one that is created there on the first save."""
        p = Path(path)
        raw = _read(p)
        if raw is None:
            return cls(p, None, None, None, str(p))
        return cls._from_bytes(p, raw)

    @classmethod
    def _from_bytes(cls, path: Path, raw: bytes) -> Bundle:
        text = _decode(raw, str(path))
        data, model = _parse(text, str(path))
        return cls(path, text, model, _fingerprint(raw), str(path), data)

    @classmethod
    def from_text(cls, text: str, source: str = "<string>") -> Bundle:
        data, model = _parse(text, source)
        return cls(None, text, model, None, source, data)

    @classmethod
    def from_model(cls, model: PolicyModel, path: str | os.PathLike[str] | None = None) -> Bundle:
        """A bundle holding ``model``, in memory until ``save`` replaces the file at ``path``."""
        p = Path(path) if path is not None else None
        source = str(p) if p is not None else "<model>"
        text = d.model_text(model)
        current = _fingerprint(_read(p)) if p is not None else None
        data, model = _parse(text, source)
        return cls(p, text, model, current, source, data)

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def model(self) -> PolicyModel:
        if self._model is None:
            doc = self._document()
            self._model = build_model(doc.unwrap(), self._source, doc.as_string)
        return self._model

    def _document(self) -> Document:
        if self._doc is None:
            if self._text is None:
                self._doc = d.new_document()
            else:
                try:
                    split = split_document(self._text, self._data) if self._data else None
                    self._doc = split or tomlkit.parse(self._text)
                except TOMLKitError as exc:  # tomli accepted it; tomlkit should too
                    raise BundleError(f"cannot edit: {exc}", file=self._source) from None
                self._data = None
        return self._doc

    def _edited(self) -> Document:
        """The document, about to change: the cached model and domain index are dropped."""
        doc = self._document()
        self._model = None
        self._domains = None
        return doc

    # Output -----------------------------------------------------------------------------

    def to_toml(self) -> str:
        if self._doc is None:
            return self._text if self._text is not None else d.new_document().as_string()
        text = self._doc.as_string()
        # appended entries end in a blank line; the file itself should not
        return text.rstrip("\n") + "\n" if text.endswith("\n\n") else text

    def export_text(self, fmt: str) -> str:
        """``toml``: the file as it is; ``json``: the model in schema v1 shape."""
        if fmt == "json":
            return json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"
        return self.to_toml()

    def to_json(self) -> dict[str, Any]:
        """The model in schema v1 shape, JSON-safe (date-times as ISO 8601 ``Z`` strings)."""
        return model_data(self.model, json_safe=True)

    # Saving -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the writer's lock (saves inside do not take it again). A second writer,
        in this process or another, gets a BundleError instead of waiting."""
        if self._lock is not None:
            yield
            return
        if self._path is None:
            raise UserError("this bundle has no file to lock")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        lock = _Lock(self._path)
        lock.acquire(self._path)
        self._lock = lock
        try:
            yield
        finally:
            lock.release()
            self._lock = None

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write atomically, keeping the previous file as ``<name>.bak``. Refuses when the
        document does not validate, when another process holds the lock, or when the file
        changed on disk since it was read (someone's hand edit would be lost)."""
        target = Path(path) if path is not None else self._path
        if target is None:
            raise UserError("this bundle has no file; give a path to save it to")
        text = self.to_toml()
        model = parse_text(text, str(target))  # what is written must load again
        try:
            if target == self._path:
                with self.lock():
                    self._fingerprint = _replace(target, text, self._fingerprint)
                self._text, self._model = text, model
            else:  # save as: the other file is replaced on purpose, with its own lock and .bak
                other = Bundle(target, text, None, None, str(target))
                with other.lock():
                    _replace(target, text, _fingerprint(_read(target)))
        except OSError as exc:
            raise BundleError(f"cannot write: {exc.strerror or exc}", file=str(target)) from None

    # External domains -------------------------------------------------------------------

    def _domain_index(self, doc: Document) -> dict[str, int]:
        if self._domains is None:
            self._domains = {d.domain_of(t): i
                             for i, t in enumerate(d.entries(doc, "external_domains"))}
        return self._domains

    @staticmethod
    def _normal(domain: str) -> str:
        try:
            return normalize_domain(domain)
        except InvalidDomain as exc:
            raise UserError(f"{domain!r} {exc.reason}") from None

    def _domain_entry(self, doc: Document, domain: str) -> Any:
        name = self._normal(domain)
        index = self._domain_index(doc).get(name)
        if index is None:
            raise UserError(f"{name} is not an external domain of this bundle")
        return doc["external_domains"][index]

    def add_domains(
        self, domains: Iterable[str], *, mode: EncryptionMode = EncryptionMode.STRICT,
        at: datetime,
    ) -> list[str]:
        """Add domains under the organisation's TLS policy; returns those added (domains
        already present are left as they are)."""
        names = list(dict.fromkeys(self._normal(x) for x in domains))
        internal = set(self.model.organisation.internal_domains)
        clash = [n for n in names if n in internal]
        if clash:
            raise UserError(f"{', '.join(clash)}: an internal domain cannot be an external one")
        doc = self._document()
        present = self._domain_index(doc)
        added = [n for n in names if n not in present]
        if not added:
            return []
        d.check_definition(doc, mode)
        doc = self._edited()
        when = d.stamp(at)
        for name in added:
            entry = {"domain": name, "added": when, "encryption_mode": mode.value}
            d.append_entry(doc, "external_domains", d.make_table(entry))
        d.sync_managed(doc)
        return added

    def remove_domains(self, domains: Iterable[str]) -> list[str]:
        """Remove domains and what was created for them. All must exist, else nothing
        changes and UserError names the unknown ones."""
        names = list(dict.fromkeys(self._normal(x) for x in domains))
        doc = self._document()
        present = self._domain_index(doc)
        unknown = [n for n in names if n not in present]
        if unknown:
            raise UserError(f"not an external domain of this bundle: {', '.join(unknown)}")
        if not names:
            return []
        doc = self._edited()
        d.delete_entries(doc, "external_domains", [present[n] for n in names])
        d.sync_managed(doc)
        return names

    def set_domain_mode(self, domain: str, mode: EncryptionMode) -> None:
        entry = self._domain_entry(self._document(), domain)
        if str(entry.get("encryption_mode", "strict")) == mode.value:
            return
        d.check_definition(self._document(), mode)
        doc = self._edited()
        entry["encryption_mode"] = mode.value
        d.sync_managed(doc)

    def record_domain_validation(self, domain: str, result: LastValidation) -> None:
        # Only this entry's last_validation changes, so the domain index stays valid and the
        # cached model is patched rather than rebuilt: a rebuild per result made "Validate
        # all" cost O(domains) per result in the wizard (0.27 s each at 10,000 domains).
        entry = self._domain_entry(self._document(), domain)
        entry["last_validation"] = d.validation_table(result)
        if self._model is not None:
            name = d.domain_of(entry)
            stored = LastValidation(result.status, d.stamp(result.at), result.reason)
            domains = tuple(
                dataclasses.replace(x, last_validation=stored) if x.domain == name else x
                for x in self._model.external_domains)
            self._model = dataclasses.replace(self._model, external_domains=domains)

    # Inbound routes ---------------------------------------------------------------------

    def _route_index(self, doc: Document) -> dict[tuple[str, int], int]:
        return {route_key(str(t["host"]), int(t.get("port", 25))): i
                for i, t in enumerate(d.entries(doc, "inbound_routes"))}

    def _route_at(self, doc: Document, key: tuple[str, int]) -> int:
        index = self._route_index(doc).get(key)
        if index is None:
            raise UserError(f"{route_label(*key)} is not an inbound route of this bundle")
        return index

    def add_route(self, host: str, port: int = 25) -> tuple[str, int]:
        """Add an inbound route; returns its normalised (host, port)."""
        key = route_key(host, port)
        if key in self._route_index(self._document()):
            raise UserError(f"{route_label(*key)} is already an inbound route")
        doc = self._edited()
        d.append_entry(doc, "inbound_routes", d.make_table({"host": key[0], "port": key[1]}))
        return key

    def remove_route(self, host: str, port: int) -> None:
        doc = self._document()
        index = self._route_at(doc, route_key(host, port))
        d.delete_entries(self._edited(), "inbound_routes", [index])

    def update_route(self, old_host: str, old_port: int, new_host: str, new_port: int) -> None:
        """Point a route elsewhere; what its validation found no longer applies and is
        dropped."""
        doc = self._document()
        old, new = route_key(old_host, old_port), route_key(new_host, new_port)
        index = self._route_at(doc, old)
        if new != old and new in self._route_index(doc):
            raise UserError(f"{route_label(*new)} is already an inbound route")
        entry = self._edited()["inbound_routes"][index]
        entry["host"], entry["port"] = new
        for key in ("encryption_mode", "last_validation"):
            if key in entry:
                del entry[key]

    def record_route_validation(
        self, host: str, port: int, result: LastValidation, mode: EncryptionMode | None
    ) -> None:
        """Store a route's verdict and the encryption mode it supports (None: it does not
        support TLS, so no mode is stored)."""
        doc = self._document()
        entry = doc["inbound_routes"][self._route_at(doc, route_key(host, port))]
        self._edited()
        if mode is None:
            if "encryption_mode" in entry:
                del entry["encryption_mode"]
        else:
            entry["encryption_mode"] = mode.value
        entry["last_validation"] = d.validation_table(result)

    # Organisation -----------------------------------------------------------------------

    def set_organisation(
        self, internal_domains: Iterable[str] | None = None,
        authorized_outbound: Iterable[str | IPNetwork] | None = None,
    ) -> None:
        """Replace the lists given; None leaves a list as it is."""
        values: dict[str, list[str]] = {}
        if internal_domains is not None:
            domains = list(dict.fromkeys(self._normal(x) for x in internal_domains))
            external = {x.domain for x in self.model.external_domains}
            clash = [x for x in domains if x in external]
            if clash:
                raise UserError(f"{', '.join(clash)}: already an external domain; "
                                f"remove it there first")
            values["internal_domains"] = domains
        if authorized_outbound is not None:
            networks: list[str] = []
            for item in authorized_outbound:
                try:
                    networks.append(str(parse_network(str(item))))
                except ValueError as exc:
                    raise UserError(str(exc)) from None
            values["authorized_outbound"] = list(dict.fromkeys(networks))
        if not values:
            return
        doc = self._edited()
        org = doc["organisation"] if "organisation" in doc else d.add_table(doc, "organisation")
        for key, items in values.items():
            org[key] = d.array(items)

    # Policies and definitions (bundle.policies decides what; these only edit) -----------

    def append_entry(self, section: str, data: dict[str, Any]) -> None:
        """Append a ``[[section]]`` entry (a v1 bundle becomes v2 for a Secure Messaging one)."""
        doc = self._edited()
        if section.startswith("secure_") and int(doc.get("schema_version", 1)) < 2:
            # schema_version heads the file: in a split document it is in the head part.
            (doc.head if isinstance(doc, SplitDocument) else doc)["schema_version"] = 2
        d.append_entry(doc, section, d.make_table(data))

    def set_entry_key(self, section: str, index: int, key: str, value: Any) -> None:
        self._edited()[section][index][key] = value

    def delete_entry(self, section: str, index: int) -> None:
        d.delete_entries(self._edited(), section, [index])


def route_key(host: str, port: int) -> tuple[str, int]:
    """A route's normalised (host, port), or UserError."""
    try:
        return normalize_host(host), check_port(port)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def route_label(host: str, port: int) -> str:
    """HOST:PORT as an admin types it back ([V6]:PORT for an IPv6 address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
