"""``secrets.json`` on disk: cross-process lock, atomic replace with backups, parsed-copy cache.

Every update takes an exclusive ``flock`` on ``secrets.json.lock``, re-reads the file, writes
a temp file in the same folder, fsyncs it, keeps the previous file as ``secrets.json.bak.1``
(older ones shift to ``.bak.2`` ... ``.bak.<backups>``), renames the temp file over
``secrets.json`` and fsyncs the folder. Readers need no lock: a rename is atomic. The parsed
file is reused while its stamp (inode, size, mtime, ctime) is unchanged; each entry's line is
cached, so an update re-serialises only what changed. Blocking: callers use a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import KeyVaultError, VaultUnwritableError

__all__ = ["FILE_NAME", "Entries", "Entry", "JsonFile", "Snapshot"]

log = logging.getLogger(__name__)

Entry = dict[str, Any]
Entries = dict[str, Entry]

FILE_NAME = "secrets.json"


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
class Snapshot:
    """The parsed file as of ``stamp`` (``None``: no file). Never mutated once published."""

    stamp: tuple[int, ...] | None
    entries: Entries
    lines: dict[str, str] = field(default_factory=dict)


class JsonFile:
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
        self._snapshot = Snapshot(None, {})

    def backup_path(self, index: int) -> Path:
        return self.folder / f"{FILE_NAME}.bak.{index}"

    def prepare(self, *, create: bool = False) -> None:
        """Fix the modes of what is there (0700 folder, 0600 files); create the folder only if told.

        Reading never creates anything: a vault that is not there is reported missing.
        """
        with self._prepare_lock:
            if self._prepared:
                return
            try:
                if create:
                    self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                if not self.folder.is_dir():
                    return
                os.chmod(self.folder, 0o700)
                for path in (self.path, self.lock_path, *map(self.backup_path, range(1, self.backups + 1))):
                    with contextlib.suppress(FileNotFoundError):
                        os.chmod(path, 0o600)
            except OSError as exc:
                raise self._io_error("open", exc) from exc
            self._prepared = True

    def current(self) -> Snapshot:
        """The file as it is now (stamp ``None``: there is no file); refuses a corrupt one."""
        self.prepare()
        try:
            with open(self.path, "rb") as handle:
                # fstat of the open file: the stamp and the bytes are of the same inode.
                stamp = _stamp(os.fstat(handle.fileno()))
                if stamp == self._snapshot.stamp:
                    return self._snapshot
                snapshot = Snapshot(stamp, self._parse(handle.read()))
        except FileNotFoundError:
            return Snapshot(None, {})
        except OSError as exc:
            raise self._io_error("read", exc) from exc
        self._snapshot = snapshot
        return snapshot

    def forget(self) -> None:
        self._snapshot = Snapshot(None, {})

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

    def replace(self, base: Snapshot, entries: Entries, *changed: str) -> None:
        """Write ``entries`` (``base`` with the ``changed`` names altered) atomically. Hold ``locked``.

        The previous file becomes backup 1. On failure the kept snapshot is left as it was;
        its stamp decides on the next read whether the file changed after all.
        """
        lines = dict(base.lines)
        for name in changed:
            lines.pop(name, None)
        text = _render(entries, lines)
        temp = self.folder / f".{FILE_NAME}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            self._remove_stale_temps()
            self._write_synced(temp, text)
            self._rotate_backups()
            os.replace(temp, self.path)
            self._sync_folder()
            self._snapshot = Snapshot(_stamp(os.stat(self.path)), entries, lines)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise self._io_error("write", exc) from exc

    def rewrite_backups(self, transform: Callable[[Entries], Entries]) -> None:
        """Replace each backup by ``transform`` of its entries (atomically; unchanged ones stay). Hold ``locked``.

        A backup that does not parse is removed: it could hold what the transform takes out.
        """
        for path in map(self.backup_path, range(1, self.backups + 1)):
            try:
                entries = self._parse(path.read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, KeyVaultError):
                path.unlink(missing_ok=True)
                continue
            changed = transform(entries)
            if changed != entries:
                self._write_beside(path, _render(changed, {}))

    def _write_beside(self, path: Path, data: bytes) -> None:
        temp = self.folder / f".{FILE_NAME}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            self._write_synced(temp, data)
            os.replace(temp, path)
            self._sync_folder()
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
        kind = VaultUnwritableError if action == "write" else KeyVaultError  # a full or read-only disk: reads go on
        return kind(f"cannot {action} local secrets in {self.folder}: {exc.strerror}",
                    operation=action, details={"path": str(self.folder), "errno": exc.errno})

    def check_writable(self, margin: int) -> None:
        """Raise ``VaultUnwritableError`` unless an update could be written now: the disk has room for a copy of
        the file (an update writes one beside it before the rename) plus ``margin``, and a small file can be
        written and synced in the folder (a read-only or full disk, or a quota, refuses it)."""
        where = self.folder if self.folder.is_dir() else next((p for p in self.folder.parents if p.is_dir()), None)
        if where is None:
            return
        try:
            stats = os.statvfs(where)
            size = self.path.stat().st_size if self.path.exists() else 0
        except OSError as exc:
            raise self._io_error("write", exc) from exc
        free, needed = stats.f_bavail * stats.f_frsize, size + margin
        if free < needed:
            raise VaultUnwritableError(
                f"the local vault's disk ({where}) has {free} bytes free; storing a key needs about {needed} (a copy "
                "of secrets.json): free space there", operation="check_writable",
                details={"path": str(self.folder), "free_bytes": free, "needed_bytes": needed})
        if where != self.folder:
            return
        probe = self.folder / f".write-probe.{os.getpid()}.{uuid.uuid4().hex}"
        try:
            self._write_synced(probe, bytes(min(margin, 4096)))
        except OSError as exc:
            raise self._io_error("write", exc) from exc
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
