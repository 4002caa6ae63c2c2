"""The local key vault: one JSON file, ``secrets.json``, in the folder ``KEY_VAULT_LOCAL_PATH``.

This module owns the file's shape and the ``KeyVault`` port over it; ``jsonfile`` owns the
file on disk (lock, atomic update with backups). The shape is the spec's example file,
extended without breaking it (see
``docs/VAULT_LOCAL.md``)::

    {"file-<id>": {"value": "sealed:v1:...", "content_type": "application/octet-stream",
                   "enabled": true, "created_on": "...Z", "expires_on": "...Z" | null,
                   "version": "<32 hex>",             # optional: implicit if absent
                   "versions": {"<32 hex>": {...}}}}   # optional: older versions, oldest first

The top-level fields always describe the latest version. Each ``value`` is sealed under the master
key (``shared.vault.sealing``: AES-256-GCM, bound to its name and version), so the file and its
backups reveal no key without the master key, which lives apart from them; a vault written by an
older version (plain base64 values) is sealed in place, backups included, the first time it is
opened with a master key. Deleting a name removes it from the backups too. An entry without ``version`` gets
the implicit id ``uuid5(NAMESPACE, "<name>\\n<created_on>").hex``: stable, and never derived
from the key itself.

The file I/O is blocking and runs in ``asyncio.to_thread``. Local mode has no soft delete:
``delete_secret`` removes the name and every version.

Fail closed: nothing here creates the file, or writes the first secret into an empty one,
unless ``initialize`` was called first (by the key service, after checking that the database
records no key). A missing file or folder, and an empty file, raise ``VaultMissingError``, so a
deleted vault, or one looked for in the wrong place, never silently becomes a new empty one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.errors import KeyVaultError, SecretDisabledError, SecretNotFoundError, VaultMissingError
from shared.metrics import timed
from shared.vault.base import SecretProperties, SecretVersion, check_secret_name
from shared.vault.jsonfile import Entries, Entry, JsonFile, Snapshot
from shared.vault.sealing import MasterKey, MasterKeySource, is_sealed

__all__ = ["LocalJsonVault", "default_master_key_path"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/octet-stream"
IMPLICIT_VERSION_NAMESPACE = uuid.UUID("6f1c3c1e-6a55-4b8e-9d6c-0b1e5ea1b0b5")
MAX_VALUE_CHARS = 25 * 1024  # Azure's limit on a secret value, kept so both modes agree
WRITE_MARGIN = 64 * 1024  # room a key's update needs beyond a copy of the file (its entry, the file system's blocks)
_RECORD_FIELDS = ("value", "content_type", "enabled", "created_on", "expires_on")
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


def _plain(name: str, record: Entry) -> bytes:
    """A value written before values were sealed (plain base64)."""
    try:
        return base64.b64decode(record["value"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise _bad_entry(name, "value is not base64") from None


def _sealed_entry(name: str, entry: Entry, master: MasterKey) -> Entry:
    """The entry with every plain value sealed (an entry too malformed to read is left for its reader to refuse)."""
    try:
        versions = _versions(name, entry)
    except KeyVaultError:
        return entry
    sealed = {version: _sealed_record(name, version, record, master) for version, record in versions}
    latest = next(reversed(sealed))
    top = {**entry, **sealed.pop(latest)}
    return {**top, "versions": sealed} if "versions" in entry else top


def _sealed_record(name: str, version: str, record: Entry, master: MasterKey) -> Entry:
    if not isinstance(record, dict) or is_sealed(record.get("value")):
        return record
    try:
        return {**record, "value": master.seal(_plain(name, record), name, version)}
    except KeyVaultError:
        return record


def _plain_names(entries: Entries) -> list[str]:
    """Names with a value not sealed yet (a vault written before values were sealed)."""
    return [name for name, entry in entries.items()
            if isinstance(entry, dict) and any(not is_sealed(v.get("value")) for v in _records(entry))]


def _any_sealed(entries: Entries) -> bool:
    return any(is_sealed(v.get("value")) for entry in entries.values() if isinstance(entry, dict)
               for v in _records(entry))


def _records(entry: Entry) -> list[Entry]:
    older = entry.get("versions")
    return [entry, *(v for v in older.values() if isinstance(v, dict))] if isinstance(older, dict) else [entry]


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


# --- the vault: the KeyVault port over the file --------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


def default_master_key_path(folder: Path) -> Path:
    """``<folder>.master-key``: beside the vault folder, never in it (a copy of the folder holds no key)."""
    return folder.parent / f"{folder.name}.master-key"


class LocalJsonVault:
    """``KeyVault`` backed by ``<path>/secrets.json`` (development mode), values sealed under a master key."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = _utcnow, backups: int = 3,
                 master: MasterKeySource | None = None) -> None:
        if backups < 1:
            raise ValueError("backups must be at least 1")
        path = Path(path)
        self._file = JsonFile(path, backups)
        self._clock = clock
        self._source = master or MasterKeySource(default_master_key_path(path))
        self._master: MasterKey | None = None
        self._sealing = threading.Lock()
        self._checked: tuple[int, ...] | None = None  # the file stamp known to hold no plain value
        self._may_start_empty = False  # set by ``initialize``: the first secret may go into an empty file

    @property
    def path(self) -> Path:
        """The secrets file (for messages and tests)."""
        return self._file.path

    async def set_secret(self, name: str, value: bytes, *, expires_on: datetime | None = None) -> SecretProperties:
        check_secret_name(name, "set_secret")
        with timed("set_secret", backend=_BACKEND):
            return await asyncio.to_thread(self._set, name, value, expires_on)

    async def get_secret(self, name: str, version: str | None = None) -> SecretVersion:
        check_secret_name(name, "get_secret")
        with timed("get_secret", backend=_BACKEND):
            return await asyncio.to_thread(self._get, name, version)

    async def disable_version(self, name: str, version: str) -> None:
        check_secret_name(name, "disable_version")
        with timed("disable_version", backend=_BACKEND):
            await asyncio.to_thread(self._update, name, lambda entry: _with_disabled(name, entry, version))
        log.info("disabled secret version %s/%s", name, version)

    async def delete_secret(self, name: str) -> None:
        """Remove the name and every version, from the file and from its backups (no restorable copy stays)."""
        check_secret_name(name, "delete_secret")
        with timed("delete_secret", backend=_BACKEND):
            await asyncio.to_thread(self._update, name, lambda entry: _deleted(name, entry), scrub=True)
        log.info("deleted secret %s and all its versions", name)

    async def list_versions(self, name: str) -> list[SecretProperties]:
        check_secret_name(name, "list_versions")
        with timed("list_versions", backend=_BACKEND):
            return await asyncio.to_thread(self._list, name)

    async def ping(self) -> None:
        with timed("ping", backend=_BACKEND):
            await asyncio.to_thread(self._ping)

    async def check_writable(self) -> None:
        """``VaultUnwritableError`` unless a new secret could be stored now (room for the update's copy of the
        file, and a real write and sync in the folder)."""
        with timed("check_writable", backend=_BACKEND):
            await asyncio.to_thread(self._file.check_writable, WRITE_MARGIN)

    async def initialize(self) -> None:
        """Create the vault's folder if there is none, and allow the first secret into a missing or empty file."""
        await asyncio.to_thread(self._initialize)
        log.warning("initialized an empty local vault at %s", self._file.path)

    async def close(self) -> None:
        """Drop the parsed copy of the file (no descriptor is held between operations)."""
        self._file.forget()

    # The blocking halves, run in a worker thread.

    def _set(self, name: str, value: bytes, expires_on: datetime | None) -> SecretProperties:
        if not isinstance(value, bytes | bytearray) or not value:
            raise KeyVaultError("secret value must be non-empty bytes", operation="set_secret",
                                details={"name": name})
        if len(base64.b64encode(value)) > MAX_VALUE_CHARS:
            raise KeyVaultError("secret value too large", operation="set_secret",
                                details={"name": name, "size": len(value)})
        version = uuid.uuid4().hex
        record: Entry = {"content_type": CONTENT_TYPE, "enabled": True, "created_on": _iso(self._clock()),
                         "expires_on": None if expires_on is None else _iso(expires_on)}

        def change(entry: Entry | None) -> Entry:
            sealed = {"value": self._key_for_write().seal(bytes(value), name, version), **record}
            return _with_new_version(name, entry, sealed, version)

        self._update(name, change, adding=True)
        log.info("stored secret %s version %s", name, version)
        return _properties(name, version, record)

    def _get(self, name: str, version: str | None) -> SecretVersion:
        version_id, record = _find(name, self._entry(name, "get_secret"), version)
        properties = _properties(name, version_id, record)
        if not properties.enabled:
            raise SecretDisabledError("secret version is disabled", operation="get_secret",
                                      details={"name": name, "version": version_id})
        return SecretVersion(properties=properties, value=self._value(name, version_id, record))

    def _value(self, name: str, version: str, record: Entry) -> bytes:
        value = record.get("value")
        if not is_sealed(value):
            return _plain(name, record)  # only until the file is sealed (on first open with a master key)
        master = self._master or self._source.load()
        if master is None:
            raise self._source.missing("get_secret")
        self._master = master
        return master.open(str(value), name, version)

    def _key_for_write(self) -> MasterKey:
        """The master key; made on first run, only while the vault holds no sealed value (fail closed)."""
        master = self._master or self._source.load()
        if master is None and _any_sealed(self._file.current().entries):
            master = self._source.load()  # another writer may have made it (and sealed with it) since the first look
            if master is None:
                raise self._source.missing("set_secret")
        if master is None:
            master = self._source.create()
            log.warning("made a master key for the local vault at %s (back it up apart from the vault)",
                        self._source.path if not self._source.text else "KEY_VAULT_LOCAL_MASTER_KEY")
        self._master = master
        return master

    def _seal_plain_values(self, snapshot: Snapshot) -> None:
        """Seal in place, under the lock, what an older version wrote in plain base64 (backups too)."""
        if snapshot.stamp is None or snapshot.stamp == self._checked or not _plain_names(snapshot.entries):
            self._checked = snapshot.stamp
            return
        with self._sealing, self._file.locked():
            base = self._file.current()
            plain = _plain_names(base.entries)
            if plain:
                master = self._key_for_write()
                entries = {n: _sealed_entry(n, e, master) if n in plain else e for n, e in base.entries.items()}
                self._file.replace(base, entries, *plain)
                self._file.rewrite_backups(lambda old: {n: _sealed_entry(n, e, master) for n, e in old.items()})
                log.warning("sealed %d plain key(s) of the local vault at %s under its master key (backups too)",
                            len(plain), self._file.path)
            self._checked = self._file.current().stamp

    def _list(self, name: str) -> list[SecretProperties]:
        entry = self._present("list_versions").entries.get(name)
        if entry is None:
            return []
        return [_properties(name, version, record) for version, record in _versions(name, entry)]

    def _entry(self, name: str, operation: str) -> Entry:
        return _existing(name, self._present(operation).entries.get(name), operation)

    def _present(self, operation: str) -> Snapshot:
        """The file as it is now (plain values sealed first); ``VaultMissingError`` if there is none (unless this
        is a new vault)."""
        snapshot = self._file.current()
        if snapshot.stamp is None and not self._may_start_empty:
            raise self._missing(operation, "does not exist")
        if snapshot.stamp != self._checked:
            self._seal_plain_values(snapshot)
            snapshot = self._file.current()
        return snapshot

    def _missing(self, operation: str, problem: str) -> VaultMissingError:
        return VaultMissingError(
            f"local vault {self._file.path} {problem}; keys are never written into a new or empty vault "
            "while the database records keys: restore the file (or its backup), or fix KEY_VAULT_LOCAL_PATH",
            operation=operation, details={"path": str(self._file.path)})

    def _update(self, name: str, change: Callable[[Entry | None], Entry | None], *, adding: bool = False,
                scrub: bool = False) -> None:
        """Read-modify-write of one entry under the lock; ``None`` from ``change`` deletes it.

        The file is re-read under the lock (another process may have changed it) and the
        published snapshot is copied, never modified: readers in other threads keep theirs.
        Adding the first secret to an empty file needs ``initialize`` first.
        """
        starting = adding and self._may_start_empty
        if not self._file.folder.is_dir():
            raise self._missing("update", "does not exist")
        self._seal_plain_values(self._file.current())  # before the lock: sealing takes it itself
        with self._file.locked():
            base = self._file.current()
            if base.stamp is None and not self._may_start_empty:
                raise self._missing("update", "does not exist")
            if adding and not base.entries and not starting:
                raise self._missing("set_secret", "is empty")
            entries = dict(base.entries)
            changed = change(entries.get(name))
            if changed is None:
                del entries[name]
            else:
                entries[name] = changed
            self._file.replace(base, entries, name)
            if scrub:  # a deleted name leaves no copy in the backups
                self._file.rewrite_backups(lambda old: {n: e for n, e in old.items() if n != name})
            self._checked = self._file.current().stamp if self._checked == base.stamp else self._checked
        self._may_start_empty = False

    def _initialize(self) -> None:
        self._file.prepare(create=True)  # the folder; the file comes with the first secret
        self._key_for_write()  # and the master key, made here on first run
        self._may_start_empty = True

    def _ping(self) -> None:
        self._file.prepare()
        if not os.access(self._file.folder, os.R_OK | os.W_OK | os.X_OK):
            if not self._file.folder.exists():
                raise self._missing("ping", "does not exist")
            raise KeyVaultError(f"local secrets folder {self._file.folder} is not readable and writable",
                                operation="ping", details={"path": str(self._file.folder)})
        snapshot = self._file.current()
        if snapshot.stamp is None:
            raise self._missing("ping", "does not exist")
        if not snapshot.entries:
            raise self._missing("ping", "is empty")
        self._present("ping")  # seals what an older version left plain
        if self._master is None and self._source.load() is None:
            raise self._source.missing("ping")
