"""The local key vault: one JSON file, ``secrets.json``, in the folder ``KEY_VAULT_LOCAL_PATH``.

This module owns the file's shape, its atomic update with backups, and the cross-process
lock. The shape is the spec's example file, extended without breaking it (see
``docs/VAULT_LOCAL.md``)::

    {"file-<id>": {"value": "<base64>", "content_type": "application/octet-stream",
                   "enabled": true, "created_on": "...Z", "expires_on": "...Z" | null,
                   "version": "<32 hex>",             # optional: implicit if absent
                   "versions": {"<32 hex>": {...}}}}   # optional: older versions, oldest first

The top-level fields always describe the latest version. An entry without ``version`` gets
the implicit id ``uuid5(NAMESPACE, "<name>\\n<created_on>").hex``: stable, and never derived
from the key itself.

Every update takes an exclusive ``flock`` on ``secrets.json.lock``, re-reads the file, writes
a temp file in the same folder, fsyncs it, keeps the previous file as ``secrets.json.bak.1``
(older ones shift to ``.bak.2`` ... ``.bak.<backups>``), renames the temp file over
``secrets.json`` and fsyncs the folder. Readers need no lock: a rename is atomic, so they see
the old file or the new one. The parsed file is kept in memory and reused while its stamp
(inode, size, mtime, ctime) is unchanged; the file is written one entry per line and each
entry's line is cached, so an update re-serialises only what changed. The file I/O is
blocking and runs in ``asyncio.to_thread``. Local mode has no soft delete:
``delete_secret`` removes the name and every version.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.errors import KeyVaultError, SecretDisabledError, SecretNotFoundError
from shared.metrics import timed
from shared.vault.base import SecretProperties, SecretVersion

__all__ = ["LocalJsonVault"]

log = logging.getLogger(__name__)

Entry = dict[str, Any]
Entries = dict[str, Entry]

FILE_NAME = "secrets.json"
CONTENT_TYPE = "application/octet-stream"
IMPLICIT_VERSION_NAMESPACE = uuid.UUID("6f1c3c1e-6a55-4b8e-9d6c-0b1e5ea1b0b5")
MAX_VALUE_CHARS = 25 * 1024  # Azure's limit on a secret value, kept so both modes agree
_RECORD_FIELDS = ("value", "content_type", "enabled", "created_on", "expires_on")
_NAME = re.compile(r"[0-9a-zA-Z-]{1,127}")
_BACKEND = "local"


# --- the entry shape: pure functions over JSON values -------------------------------------


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise KeyVaultError("timestamps must be timezone-aware", operation="set_secret")
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_time(name: str, text: Any, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise _bad_entry(name, f"{field} is not an ISO 8601 timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _bad_entry(name: str, problem: str) -> KeyVaultError:
    return KeyVaultError(f"local secrets file: entry {name!r} is malformed: {problem}",
                         operation="read_entry", details={"name": name})


def _implicit_version(name: str, record: Entry) -> str:
    return uuid.uuid5(IMPLICIT_VERSION_NAMESPACE, f"{name}\n{record.get('created_on', '')}").hex


def _record(entry: Entry) -> Entry:
    """The latest version's own fields (the top level without ``version``/``versions``)."""
    return {key: entry[key] for key in _RECORD_FIELDS if key in entry}


def _versions(name: str, entry: Entry) -> list[tuple[str, Entry]]:
    """Every ``(version id, record)`` of an entry, oldest first, latest last."""
    older = entry.get("versions") or {}
    if not isinstance(older, dict):
        raise _bad_entry(name, "versions is not an object")
    latest = entry.get("version") or _implicit_version(name, entry)
    return [*older.items(), (latest, _record(entry))]


def _find(name: str, entry: Entry, version: str | None) -> tuple[str, Entry]:
    versions = _versions(name, entry)
    if version is None:
        return versions[-1]
    for found in versions:
        if found[0] == version:
            return found
    raise SecretNotFoundError("no such secret version", operation="get_secret",
                              details={"name": name, "version": version})


def _properties(name: str, version: str, record: Entry) -> SecretProperties:
    if not isinstance(record, dict) or "created_on" not in record:
        raise _bad_entry(name, f"version {version} has no created_on")
    expires = record.get("expires_on")
    return SecretProperties(
        name=name,
        version=version,
        enabled=record.get("enabled", True) is True,
        created_on=_parse_time(name, record["created_on"], "created_on"),
        expires_on=None if expires is None else _parse_time(name, expires, "expires_on"),
        content_type=record.get("content_type") or CONTENT_TYPE,
    )


def _decode(name: str, record: Entry) -> bytes:
    try:
        return base64.b64decode(record["value"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise _bad_entry(name, "value is not base64") from None


def _with_new_version(name: str, entry: Entry | None, record: Entry, version: str) -> Entry:
    """A new entry whose top level is ``record``; the old top level moves into ``versions``."""
    if entry is None:
        return {**record, "version": version}
    versions = dict(_versions(name, entry))
    return {**record, "version": version, "versions": versions}


def _with_disabled(name: str, entry: Entry | None, version: str) -> Entry:
    versions = dict(_versions(name, _existing(name, entry, "disable_version")))
    if version not in versions:
        raise SecretNotFoundError("no such secret version", operation="disable_version",
                                  details={"name": name, "version": version})
    latest = next(reversed(versions))
    versions[version] = {**versions[version], "enabled": False}
    top = versions.pop(latest)
    return {**top, "version": latest, **({"versions": versions} if versions else {})}


def _existing(name: str, entry: Entry | None, operation: str = "get_secret") -> Entry:
    if entry is None:
        raise SecretNotFoundError("no such secret", operation=operation, details={"name": name})
    return entry


def _deleted(name: str, entry: Entry | None) -> None:
    """The change that deletes an entry (refused if there is none)."""
    _existing(name, entry, "delete_secret")


def _check_name(name: str, operation: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise KeyVaultError("invalid secret name", operation=operation,
                            details={"name_length": len(name) if isinstance(name, str) else None})


# --- the file: lock, read, atomic write with backups ---------------------------------------


def _render(entries: Entries, lines: dict[str, str]) -> bytes:
    """One entry per line; ``lines`` caches each entry's text (filled in for what is missing).

    At 100,000 entries this is what keeps an update cheap: only changed entries are
    serialised again, the rest is a join (see ``docs/VAULT_LOCAL.md`` for the numbers).
    """
    if not entries:
        return b"{}\n"
    parts = []
    for name, entry in entries.items():
        line = lines.get(name)
        if line is None:
            line = lines[name] = f"  {json.dumps(name)}: {json.dumps(entry)}"
        parts.append(line)
    return ("{\n" + ",\n".join(parts) + "\n}\n").encode()


def _stamp(status: os.stat_result) -> tuple[int, ...]:
    """What identifies one version of the file: every update is a new inode and new times."""
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


@dataclass(frozen=True)
class _Snapshot:
    """The parsed file as of ``stamp`` (``None``: no file). Never mutated once published."""

    stamp: tuple[int, ...] | None
    entries: Entries
    lines: dict[str, str] = field(default_factory=dict)


class _JsonFile:
    """``secrets.json`` in a 0700 folder: parse, and replace atomically under a lock.

    The last parsed content is kept and reused while the file's stamp (inode, size, times)
    is unchanged, so neither reads nor this process's own updates parse the file again.
    """

    def __init__(self, folder: Path, backups: int) -> None:
        self.folder = folder
        self.path = folder / FILE_NAME
        self.lock_path = folder / f"{FILE_NAME}.lock"
        self.backups = backups
        self._prepared = False
        self._prepare_lock = threading.Lock()
        self._snapshot = _Snapshot(None, {})

    def backup_path(self, index: int) -> Path:
        return self.folder / f"{FILE_NAME}.bak.{index}"

    def prepare(self) -> None:
        """Create the folder (0700) on first use and fix modes of what is already there."""
        with self._prepare_lock:
            if self._prepared:
                return
            try:
                self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(self.folder, 0o700)
                for path in (self.path, self.lock_path, *map(self.backup_path, range(1, self.backups + 1))):
                    with contextlib.suppress(FileNotFoundError):
                        os.chmod(path, 0o600)
            except OSError as exc:
                raise self._io_error("open", exc) from exc
            self._prepared = True

    def current(self) -> _Snapshot:
        """The file as it is now; empty if it does not exist yet; refuses a corrupt one."""
        self.prepare()
        try:
            with open(self.path, "rb") as handle:
                # fstat of the open file: the stamp and the bytes are of the same inode.
                stamp = _stamp(os.fstat(handle.fileno()))
                if stamp == self._snapshot.stamp:
                    return self._snapshot
                snapshot = _Snapshot(stamp, self._parse(handle.read()))
        except FileNotFoundError:
            return _Snapshot(None, {})
        except OSError as exc:
            raise self._io_error("read", exc) from exc
        self._snapshot = snapshot
        return snapshot

    def forget(self) -> None:
        self._snapshot = _Snapshot(None, {})

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes and threads (each call opens its own descriptor)."""
        self.prepare()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._io_error("lock", exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def replace(self, base: _Snapshot, entries: Entries, changed: str) -> None:
        """Write ``entries`` (``base`` with ``changed`` altered) atomically. Hold ``locked``.

        The previous file becomes backup 1. On failure the kept snapshot is left as it was;
        its stamp decides on the next read whether the file changed after all.
        """
        lines = dict(base.lines)
        lines.pop(changed, None)
        text = _render(entries, lines)
        temp = self.folder / f".{FILE_NAME}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            self._remove_stale_temps()
            self._write_synced(temp, text)
            self._rotate_backups()
            os.replace(temp, self.path)
            self._sync_folder()
            self._snapshot = _Snapshot(_stamp(os.stat(self.path)), entries, lines)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise self._io_error("write", exc) from exc

    def _remove_stale_temps(self) -> None:
        """Temp files left by a killed writer (under the lock, no live writer owns one)."""
        for stale in self.folder.glob(f".{FILE_NAME}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def _write_synced(self, temp: Path, data: bytes) -> None:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rotate_backups(self) -> None:
        """Shift ``.bak.N-1`` to ``.bak.N`` ... and hard-link the current file as ``.bak.1``.

        The current file is never modified in place (only replaced), so a hard link is a
        free, exact copy of it. Each step is an atomic rename; a crash in between leaves at
        worst one backup slot duplicated, never ``secrets.json`` touched.
        """
        if not self.path.exists():
            return
        for index in range(self.backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.backup_path(index), self.backup_path(index + 1))
        staged = self.folder / f".{FILE_NAME}.bak.{uuid.uuid4().hex}.tmp"
        os.link(self.path, staged)
        os.replace(staged, self.backup_path(1))

    def _sync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _parse(self, raw: bytes) -> Entries:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            # ``from None``: the decode error holds the whole document, keys included.
            where = f"line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "encoding"
            raise self._corrupt(f"is not valid JSON ({where})") from None
        if not isinstance(data, dict) or not all(isinstance(entry, dict) for entry in data.values()):
            raise self._corrupt("is not an object of secret entries")
        return data

    def _corrupt(self, problem: str) -> KeyVaultError:
        backups = [path.name for path in map(self.backup_path, range(1, self.backups + 1)) if path.exists()]
        hint = f"backups exist: {', '.join(backups)}" if backups else "no backup exists"
        return KeyVaultError(
            f"local secrets file {self.path} {problem}; refusing to use it or start empty over it "
            f"({hint}; restore one by hand after checking it)",
            operation="load",
            details={"path": str(self.path), "backups": backups},
        )

    def _io_error(self, action: str, exc: OSError) -> KeyVaultError:
        return KeyVaultError(f"cannot {action} local secrets in {self.folder}: {exc.strerror}",
                             operation=action, details={"path": str(self.folder), "errno": exc.errno})


# --- the vault: the KeyVault port over the file --------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LocalJsonVault:
    """``KeyVault`` backed by ``<path>/secrets.json`` (development mode)."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = _utcnow, backups: int = 3) -> None:
        if backups < 1:
            raise ValueError("backups must be at least 1")
        self._file = _JsonFile(Path(path), backups)
        self._clock = clock

    @property
    def path(self) -> Path:
        """The secrets file (for messages and tests)."""
        return self._file.path

    async def set_secret(self, name: str, value: bytes, *, expires_on: datetime | None = None) -> SecretProperties:
        _check_name(name, "set_secret")
        with timed("set_secret", backend=_BACKEND):
            return await asyncio.to_thread(self._set, name, value, expires_on)

    async def get_secret(self, name: str, version: str | None = None) -> SecretVersion:
        _check_name(name, "get_secret")
        with timed("get_secret", backend=_BACKEND):
            return await asyncio.to_thread(self._get, name, version)

    async def disable_version(self, name: str, version: str) -> None:
        _check_name(name, "disable_version")
        with timed("disable_version", backend=_BACKEND):
            await asyncio.to_thread(self._update, name, lambda entry: _with_disabled(name, entry, version))
        log.info("disabled secret version %s/%s", name, version)

    async def delete_secret(self, name: str) -> None:
        _check_name(name, "delete_secret")
        with timed("delete_secret", backend=_BACKEND):
            await asyncio.to_thread(self._update, name, lambda entry: _deleted(name, entry))
        log.info("deleted secret %s and all its versions", name)

    async def list_versions(self, name: str) -> list[SecretProperties]:
        _check_name(name, "list_versions")
        with timed("list_versions", backend=_BACKEND):
            return await asyncio.to_thread(self._list, name)

    async def ping(self) -> None:
        with timed("ping", backend=_BACKEND):
            await asyncio.to_thread(self._ping)

    async def close(self) -> None:
        """Drop the parsed copy of the file (no descriptor is held between operations)."""
        self._file.forget()

    # The blocking halves, run in a worker thread.

    def _set(self, name: str, value: bytes, expires_on: datetime | None) -> SecretProperties:
        record = self._new_record(name, value, expires_on)
        version = uuid.uuid4().hex
        self._update(name, lambda entry: _with_new_version(name, entry, record, version))
        log.info("stored secret %s version %s", name, version)
        return _properties(name, version, record)

    def _new_record(self, name: str, value: bytes, expires_on: datetime | None) -> Entry:
        if not isinstance(value, bytes | bytearray) or not value:
            raise KeyVaultError("secret value must be non-empty bytes", operation="set_secret",
                                details={"name": name})
        encoded = base64.b64encode(value).decode("ascii")
        if len(encoded) > MAX_VALUE_CHARS:
            raise KeyVaultError("secret value too large", operation="set_secret",
                                details={"name": name, "size": len(value)})
        return {"value": encoded, "content_type": CONTENT_TYPE, "enabled": True,
                "created_on": _iso(self._clock()),
                "expires_on": None if expires_on is None else _iso(expires_on)}

    def _get(self, name: str, version: str | None) -> SecretVersion:
        version_id, record = _find(name, self._entry(name, "get_secret"), version)
        properties = _properties(name, version_id, record)
        if not properties.enabled:
            raise SecretDisabledError("secret version is disabled", operation="get_secret",
                                      details={"name": name, "version": version_id})
        return SecretVersion(properties=properties, value=_decode(name, record))

    def _list(self, name: str) -> list[SecretProperties]:
        entry = self._file.current().entries.get(name)
        if entry is None:
            return []
        return [_properties(name, version, record) for version, record in _versions(name, entry)]

    def _entry(self, name: str, operation: str) -> Entry:
        return _existing(name, self._file.current().entries.get(name), operation)

    def _update(self, name: str, change: Callable[[Entry | None], Entry | None]) -> None:
        """Read-modify-write of one entry under the lock; ``None`` from ``change`` deletes it.

        The file is re-read under the lock (another process may have changed it) and the
        published snapshot is copied, never modified: readers in other threads keep theirs.
        """
        with self._file.locked():
            base = self._file.current()
            entries = dict(base.entries)
            changed = change(entries.get(name))
            if changed is None:
                del entries[name]
            else:
                entries[name] = changed
            self._file.replace(base, entries, name)

    def _ping(self) -> None:
        self._file.prepare()
        if not os.access(self._file.folder, os.R_OK | os.W_OK | os.X_OK):
            raise KeyVaultError(f"local secrets folder {self._file.folder} is not readable and writable",
                                operation="ping", details={"path": str(self._file.folder)})
        self._file.current()
