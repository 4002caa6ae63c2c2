"""The file key service: one AES-256 key per file, tracked in PostgreSQL, kept in its custody.

A row of ``file_keys`` records a key's reference, its state (``pending`` -> ``active`` ->
``retired``) and its custody (``shared.custody``: a vault secret version, or wrapped in the row
under a signed intermediate key); never the plain key. ``KEY_MODE`` picks the custody of new keys;
a row is read only through the custody it names, when the deployment allows that custody
(``KEY_CUSTODIES``) and the custody can prove the row is the service's own
(``shared.custody.base``): anything else is ``KeyIntegrityError``, never followed. Every step can
be retried or resumed after a crash:

- ``create_key`` is idempotent: a file has at most one active key (a unique index decides a
  race; the loser discards the key it placed and returns the winner's key).
- Rotation is driven by ``shared.rotation.Rotator``; this service offers its key steps, each
  one call: ``claim_rotation`` claims the file (a lease) and adds a pending key, reusing one
  left by a crashed attempt only if it passes the same checks as any read (else it is dropped
  and a new one made); ``switch_keys`` turns pending -> active and active -> retired inside the
  caller's transaction; ``disable_old_key`` disables the old key once that committed
  (``retire_pending_disables`` sweeps up disables that failed); ``release_claim`` gives a claim
  up. Until the switch the old key stays active and readable.
- Keys are recorded only for files that are not deleted: each recording transaction locks the
  file's row, so a deletion and a recording never interleave (a key placed for a file deleted
  meanwhile is erased at once).

Vault failures surface as ``KeyVaultError``; database failures as ``DatabaseError``
(``DatabaseUnavailableError`` when it is down). Time comes from the injected ``clock``.
"""

from __future__ import annotations

import logging
import random
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.clock import Clock, utcnow
from shared.custody import KeyCustody, check_reference
from shared.db.file_keys import Custody, FileKeyRepository, KeyRow, KeyState, Placement
from shared.db.pool import Database
from shared.errors import (
    CommitUnknownError,
    DatabaseError,
    FileKeyNotFoundError,
    KeyIntegrityError,
    KeyManagementError,
    KeyMissingError,
    KeyRetiredError,
    KeyVaultError,
    RotationConflictError,
    UnknownFileError,
)
from shared.metrics import ROTATIONS
from shared.vault.base import parse_key_reference, secret_name
from shared.vault.cache import TtlCache

__all__ = ["KEY_BYTES", "FileKey", "FileKeyService", "KeyState", "MigrationReport", "RotationTicket"]

log = logging.getLogger(__name__)

KEY_BYTES = 32  # AES-256


@dataclass(frozen=True)
class FileKey:
    """What the database knows about one key of a file (never the key itself)."""

    file_id: uuid.UUID
    key_reference: str
    created_at: datetime
    expires_at: datetime | None
    state: KeyState
    custody: Custody = "secret"


@dataclass
class MigrationReport:
    """What one ``migrate_keys`` pass did."""

    moved: int = 0
    raced: int = 0  # moved or retired by someone else meanwhile, or its file deleted: left as they were
    refused: int = 0  # rows the service cannot prove its own (KeyIntegrityError): left, and alerted on


@dataclass(frozen=True)
class RotationTicket:
    """A claimed rotation: re-encrypt from ``old`` to ``new``, then complete or abandon."""

    old: FileKey
    new: FileKey
    worker: str
    lease_until: datetime


def _public(row: KeyRow) -> FileKey:
    return FileKey(row.file_id, row.key_reference, row.created_at, row.expires_at, row.state, row.custody)


class FileKeyService:
    """Create, fetch, rotate, expire and delete the keys of files."""

    def __init__(self, db: Database, custodies: Mapping[str, KeyCustody], *, rotation_days: int,
                 mode: Custody = "secret", allowed: tuple[Custody, ...] | None = None, clock: Clock = utcnow,
                 cache: TtlCache[str, bytes] | None = None) -> None:
        self.allowed: tuple[Custody, ...] = allowed if allowed is not None else (mode,)
        if rotation_days < 1:
            raise ValueError("rotation_days must be at least 1")
        if mode not in self.allowed or any(name not in custodies for name in self.allowed):
            raise ValueError("the mode's custody must be allowed, and every allowed custody known")
        self._db, self._custodies, self.mode = db, dict(custodies), mode
        self._rotation, self._clock = timedelta(days=rotation_days), clock
        # Plain keys by reference (a reference's key never changes), so a warm download costs no lookup; for at
        # most KEY_CACHE_SECONDS. (``cache or ...`` replaced a given, empty, hence falsy cache by a no-op one.)
        self._plain = cache if cache is not None else TtlCache(ttl_seconds=0, max_entries=1)

    # --- create and read ------------------------------------------------------------------

    async def create_key(self, file_id: uuid.UUID) -> FileKey:
        """The file's active key, created (in its custody and the database) if it has none."""
        existing = await self._find_active(file_id, "create_key")
        if existing is not None:
            return _public(existing)
        now = self._clock()
        key, reference, placement = await self._new_key(file_id, now + self._rotation)
        row = await self._record(file_id, reference, placement, "active", now, "create_key")
        if row is not None:
            log.info("created key %s", row.key_reference)
            self._plain.put(reference, key, file_id)
            return _public(row)
        await self._discard(placement, reference, "create_key")  # lost a race: the winner's key stands
        winner = await self._find_active(file_id, "create_key")
        if winner is None:
            raise KeyManagementError("key creation raced with a deletion", operation="create_key",
                                     details={"file_id": str(file_id)})
        return _public(winner)

    async def active_key(self, file_id: uuid.UUID) -> FileKey:
        row = await self._find_active(file_id, "active_key")
        if row is None:
            raise FileKeyNotFoundError("no active key for the file", operation="active_key",
                                       details={"file_id": str(file_id)})
        return _public(row)

    async def get_key(self, key_reference: str) -> bytes:
        """The 32-byte key of a recorded reference (pending, active, or retired but not yet disabled)."""
        row = await self._row(key_reference)
        _check_readable(row, key_reference)
        assert row is not None
        return await self._read(row)

    async def key_of(self, key_reference: str) -> bytes:
        """The key of a reference taken from this service's own records (a ``FileKey`` it returned, a
        file row's current key): from memory when read before, else through its row's custody (no
        state check; a disabled vault version is still refused by the vault)."""
        cached = self._plain.get(key_reference)
        if cached is not None:
            return cached
        row = await self._row(key_reference)
        if row is None:
            raise FileKeyNotFoundError("no key is recorded for this reference", operation="get_key",
                                       details={"key_reference": key_reference})
        return await self._read(row)

    async def due_for_rotation(self, now: datetime | None = None, limit: int = 100) -> list[FileKey]:
        """Active keys with ``expires_at <= now``, oldest ``expires_at`` first."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        async with self._db.connection("due_for_rotation") as conn:
            rows = await FileKeyRepository(conn).due(now or self._clock(), limit)
        return [_public(row) for row in rows]

    # --- rotation ---------------------------------------------------------------------------

    async def claim_rotation(self, file_id: uuid.UUID, *, worker: str, lease_seconds: float = 900) -> RotationTicket:
        """Claim the file's rotation for ``worker`` and return the old and the new (pending) key.

        Raises ``RotationConflictError`` while another worker's lease is live. A pending key left
        by an earlier attempt is reused only if it is provably the service's (checked as any read);
        otherwise it is dropped and a new one made.
        """
        if not worker or lease_seconds <= 0:
            raise ValueError("worker must be named and lease_seconds positive")
        now = self._clock()
        lease_until = now + timedelta(seconds=lease_seconds)
        async with self._db.transaction("claim_rotation") as conn:
            repo = FileKeyRepository(conn)
            claimed = await repo.claim(file_id, worker, now=now, lease_until=lease_until)
            other = await repo.active(file_id) if claimed is None else await repo.pending(file_id)
        if claimed is None:
            raise _claim_refused(file_id, other)
        try:
            pending = await self._trusted_pending(other) if other is not None else None
            pending = pending or await self._create_pending(file_id, now)
        except BaseException:  # no pending key: the claim goes back at once (the next run need not wait it out)
            await self._release_quietly(file_id, worker)
            raise
        ROTATIONS.labels("begun").inc()
        return RotationTicket(_public(claimed), _public(pending), worker, lease_until)

    async def switch_keys(self, conn: Any, ticket: RotationTicket) -> FileKey:
        """On the caller's connection, inside its transaction: the new key active, the old one retired.

        The caller commits (with its own pointer change) and then calls ``disable_old_key``.
        A rerun of a committed switch returns its result; a lost claim raises.
        """
        with self._db.translating("switch_keys", conn):
            return await self._switch(conn, ticket)

    async def disable_old_key(self, ticket: RotationTicket) -> None:
        """Disable the retired old key (after the switch committed). Idempotent."""
        old = ticket.old
        async with self._db.connection("disable_old_key") as conn:
            row = await FileKeyRepository(conn).by_reference(old.file_id, old.key_reference)
        if row is None or row.state != "retired":
            raise RotationConflictError("the old key is not retired: the switch did not commit",
                                        operation="disable_old_key", details={"key_reference": old.key_reference})
        if row.vault_disabled_at is None:
            await self._disable_retired(row)

    async def release_claim(self, ticket: RotationTicket, *, discard_pending: bool = False) -> bool:
        """Release the claim (if still ours); optionally drop the unused pending key too."""
        new = ticket.new
        async with self._db.transaction("release_claim") as conn:
            repo = FileKeyRepository(conn)
            released = await repo.release_claim(new.file_id, ticket.worker)
            discarded = await repo.delete_pending(new.file_id, new.key_reference) \
                if released and discard_pending else None
        if discarded is not None:
            await self._discard(discarded.placement, discarded.key_reference, "release_claim")
        if released:
            ROTATIONS.labels("abandoned").inc()
        return released

    async def rotation_failed(self, file_id: uuid.UUID, key_reference: str, *, error: str) -> int:
        """Count a failed rotation of the file's active key; it is not due again before a backoff
        (1, 2, 4 ... minutes, at most an hour, jittered) runs out. Returns the failures in a row."""
        async with self._db.transaction("rotation_failed") as conn:
            repo = FileKeyRepository(conn)
            row = await repo.by_reference(file_id, key_reference)
            failures = (row.rotation_failures if row is not None else 0) + 1
            wait = timedelta(minutes=min(60, 2 ** (failures - 1)) * random.uniform(0.8, 1.2))
            return await repo.rotation_failed(file_id, key_reference, error=error,
                                              next_attempt_at=self._clock() + wait)

    async def force_release(self, file_id: uuid.UUID) -> bool:
        """Release the file's rotation claim whoever holds it (an operator's decision); False if none."""
        async with self._db.transaction("force_release") as conn:
            return await FileKeyRepository(conn).release_any_claim(file_id)

    async def stalled_rotations(self, limit: int = 100) -> list[FileKey]:
        """Active keys whose rotation was begun and left (lease run out, or a pending key without a claim)."""
        async with self._db.connection("stalled_rotations") as conn:
            return [_public(row) for row in await FileKeyRepository(conn).stalled_rotations(self._clock(), limit)]

    async def retire_pending_disables(self, limit: int = 100, *, file_id: uuid.UUID | None = None) -> int:
        """Disable retired keys whose disable failed earlier; return how many."""
        async with self._db.connection("retire_pending_disables") as conn:
            rows = await FileKeyRepository(conn).retired_not_disabled(limit, file_id)
        for row in rows:
            await self._disable_retired(row)
        return len(rows)

    # --- lifecycle --------------------------------------------------------------------------

    async def expire(self, file_id: uuid.UUID) -> FileKey:
        """Make the file's active key due for rotation now."""
        async with self._db.transaction("expire") as conn:
            row = await FileKeyRepository(conn).expire(file_id, self._clock())
        if row is None:
            raise FileKeyNotFoundError("no active key for the file", operation="expire",
                                       details={"file_id": str(file_id)})
        return _public(row)

    async def delete_file_keys(self, file_id: uuid.UUID) -> int:
        """Destroy every key of the file: what each custody keeps outside the rows, then the rows (and
        with them the wrapped keys: crypto-shredding). Idempotent."""
        async with self._db.connection("delete_file_keys") as conn:
            rows = await FileKeyRepository(conn).of_file(file_id)
        for custody in self._custodies.values():
            await custody.erase(file_id, rows or None)  # no row left to tell: each custody checks for itself
        self._plain.forget_group(file_id)
        async with self._db.transaction("delete_file_keys") as conn:
            deleted = await FileKeyRepository(conn).delete_file(file_id)
        log.info("deleted %d key(s) of file %s", deleted, file_id)
        return deleted

    async def repair_placements(self, cutoff: datetime, limit: int) -> int:
        """Make unusable what killed workers placed before ``cutoff`` and never recorded (every custody)."""
        return sum([await custody.repair(cutoff, limit) for custody in self._custodies.values()])

    async def check_vault(self) -> None:
        """Each allowed custody can serve; the one new keys go to can make them (health)."""
        for name in self.allowed:
            await self._custodies[name].check(placing=name == self.mode)

    async def check_uploads(self) -> None:
        """A new file's key could be placed now in the mode's custody (health: uploads fail while this does, reads
        may not; the vault itself is ``check_vault``'s)."""
        await self._custodies[self.mode].check_writable()

    # --- custody ------------------------------------------------------------------------------

    async def migrate_keys(self, to: Custody, limit: int = 100, *, after: int = 0) -> tuple[MigrationReport, int]:
        """Move up to ``limit`` readable keys (rows after id ``after``) into custody ``to``, without touching a
        blob; the report and the last row id looked at (pass it back for the next batch).

        Each move is a compare-and-set on the row's custody, under the file row's lock (a deletion waits
        for it, or it sees the deletion); the key's old placement is discarded once the move committed.
        """
        if to not in self.allowed:
            raise KeyManagementError(f"moving keys to {to} custody needs it allowed (KEY_CUSTODIES)",
                                     operation="migrate_keys")
        async with self._db.connection("migrate_keys") as conn:
            rows = await FileKeyRepository(conn).readable_elsewhere(to, after, limit)
        report = MigrationReport()
        for row in rows:
            try:
                moved = await self._move(row, to)
            except KeyIntegrityError:
                report.refused += 1
                continue
            report.moved += moved
            report.raced += not moved
        return report, (rows[-1].id if rows else after)

    async def _move(self, row: KeyRow, to: Custody) -> bool:
        key = await self._read(row)
        reference, placement = await self._custodies[to].place(row.file_id, key, row.expires_at or self._clock(),
                                                               reference=row.key_reference,
                                                               previous=row.placement)
        async with self._db.transaction("migrate_keys") as conn:
            repo = FileKeyRepository(conn)
            live = await repo.lock_file(row.file_id)
            moved = live and await repo.move(row, placement)
            if moved:
                await self._custodies[to].recorded(conn, placement)
        if moved:  # the old placement no longer holds the key (a key moved into envelope still names its
            await self._discard(row.placement, row.key_reference, "migrate_keys")  # secret: deletion deletes it)
        else:
            await self._unused(placement, reference, row.file_id, deleted=not live, operation="migrate_keys")
        return moved

    # --- steps ------------------------------------------------------------------------------

    async def _find_active(self, file_id: uuid.UUID, operation: str) -> KeyRow | None:
        async with self._db.connection(operation) as conn:
            return await FileKeyRepository(conn).active(file_id)

    async def close(self) -> None:
        self._plain.clear()

    async def _new_key(self, file_id: uuid.UUID, expires_at: datetime) -> tuple[bytes, str, Placement]:
        """A new random key, placed in the custody of the mode (not recorded yet)."""
        key = secrets.token_bytes(KEY_BYTES)
        reference, placement = await self._custodies[self.mode].place(file_id, key, expires_at)
        return key, reference, placement

    async def _row(self, key_reference: str) -> KeyRow | None:
        file_id, _, _ = _split_reference(key_reference)
        async with self._db.connection("get_key") as conn:
            return await FileKeyRepository(conn).by_reference(file_id, key_reference)

    async def _read(self, row: KeyRow) -> bytes:
        """The plain key of a row, through its custody, after the checks every row passes (remembered)."""
        check_reference(row, self.allowed)
        key = await self._custodies[row.custody].read(row)
        if len(key) != KEY_BYTES:
            raise KeyManagementError("the key's custody returned a key of the wrong size", operation="get_key",
                                     details={"key_reference": row.key_reference, "size": len(key)})
        self._plain.put(row.key_reference, key, row.file_id)
        return key

    async def _record(
        self, file_id: uuid.UUID, reference: str, placement: Placement, state: KeyState, now: datetime, operation: str
    ) -> KeyRow | None:
        """Insert the row of a new key; ``None`` if another one won the race. A file deleted meanwhile gets
        no key: the placed one is erased and ``UnknownFileError`` raised."""
        async def record(conn: Any) -> tuple[bool, KeyRow | None]:
            repo = FileKeyRepository(conn)
            live = await repo.lock_file(file_id)
            row = await repo.insert(file_id, reference, placement, state=state, created_at=now,
                                    expires_at=now + self._rotation) if live else None
            if row is not None:
                await self._custodies[placement.custody].recorded(conn, placement)
            return live, row

        try:  # a lost answer is settled by a re-read of the row by its reference
            live, row = await self._db.resolved(operation, record,
                                                committed=lambda conn: _recorded(conn, file_id, reference))
        except DatabaseError as exc:
            if not isinstance(exc, CommitUnknownError):  # surely not committed: the placed key is an orphan
                await self._discard(placement, reference, operation)
            raise
        if not live:
            await self._unused(placement, reference, file_id, deleted=True, operation=operation)
            raise UnknownFileError("the file was deleted", operation=operation, details={"file_id": str(file_id)})
        return row

    async def _trusted_pending(self, row: KeyRow) -> KeyRow | None:
        """The pending key left by an earlier attempt, if it is provably the service's and still there; else it
        is dropped (a row someone planted, or a key its vault lost) and None returned."""
        try:
            await self._read(row)
            return row
        except KeyIntegrityError:
            log.error("file %s: the pending key %s is not the service's: dropped, a new one is made",
                      row.file_id, row.key_reference[:200])
        except KeyMissingError:
            log.warning("file %s: the pending key %s is missing from its vault: dropped, a new one is made",
                        row.file_id, row.key_reference)
        async with self._db.transaction("claim_rotation") as conn:
            await FileKeyRepository(conn).delete_pending(row.file_id, row.key_reference)
        return None  # its placement is not ours to discard (a planted row may name another file's secret)

    async def _release_quietly(self, file_id: uuid.UUID, worker: str) -> None:
        try:
            async with self._db.transaction("release_claim") as conn:
                await FileKeyRepository(conn).release_claim(file_id, worker)
        except DatabaseError as exc:
            log.warning("file %s: releasing the rotation claim failed (its lease ends it): %s", file_id, exc)

    async def _create_pending(self, file_id: uuid.UUID, now: datetime) -> KeyRow:
        key, reference, placement = await self._new_key(file_id, now + self._rotation)
        row = await self._record(file_id, reference, placement, "pending", now, "claim_rotation")
        if row is not None:
            self._plain.put(reference, key, file_id)
            return row
        await self._discard(placement, reference, "claim_rotation")
        async with self._db.connection("claim_rotation") as conn:
            row = await FileKeyRepository(conn).pending(file_id)
        if row is None:
            raise RotationConflictError("another worker took over this rotation", operation="claim_rotation",
                                        details={"file_id": str(file_id)})
        return row

    async def _switch(self, conn: Any, ticket: RotationTicket) -> FileKey:
        repo, old, new = FileKeyRepository(conn), ticket.old, ticket.new
        if not await repo.retire_claimed(old.file_id, old.key_reference, ticket.worker, now=self._clock()):
            return await _already_switched(repo, ticket)
        activated = await repo.activate_pending(new.file_id, new.key_reference)
        if activated is None:  # raising rolls the retirement back with the transaction
            raise RotationConflictError("the pending key of this rotation is gone", operation="switch_keys",
                                        details={"key_reference": new.key_reference})
        ROTATIONS.labels("completed").inc()
        log.info("rotated file %s to %s", new.file_id, new.key_reference)
        return _public(activated)

    async def _disable_retired(self, row: KeyRow) -> None:
        """Disable a retired key in its custody (a wrapped key is refused by the mark alone), then mark it."""
        if row.custody in self._custodies:
            await self._custodies[row.custody].discard(row.placement)
        self._plain.forget(row.key_reference)
        async with self._db.transaction("disable_retired") as conn:
            await FileKeyRepository(conn).mark_vault_disabled(row.file_id, row.key_reference, self._clock())

    async def _unused(self, placement: Placement, reference: str, file_id: uuid.UUID, *, deleted: bool,
                      operation: str) -> None:
        """A placed key no row records: discarded; for a deleted file, erased whole."""
        await self._discard(placement, reference, operation)
        if deleted:
            await self._custodies[placement.custody].erase(file_id, None)

    async def _discard(self, placement: Placement, reference: str, operation: str) -> None:
        """Make a placed key no row needs unusable. Best effort: the caller's outcome stands."""
        self._plain.forget(reference)
        try:
            await self._custodies[placement.custody].discard(placement)
        except KeyVaultError as exc:
            log.warning("%s: could not disable unused key version %s: %s", operation, reference, exc)


async def _recorded(conn: Any, file_id: uuid.UUID, reference: str) -> bool:
    return await FileKeyRepository(conn).by_reference(file_id, reference) is not None


async def _already_switched(repo: FileKeyRepository, ticket: RotationTicket) -> FileKey:
    """A rerun of a committed switch returns its result; anything else is a lost claim."""
    old = await repo.by_reference(ticket.old.file_id, ticket.old.key_reference)
    new = await repo.by_reference(ticket.new.file_id, ticket.new.key_reference)
    if old is not None and new is not None and old.state == "retired" and new.state == "active":
        return _public(new)
    raise RotationConflictError("this worker no longer holds the rotation of the file",
                                operation="switch_keys",
                                details={"file_id": str(ticket.old.file_id), "worker": ticket.worker})


def _claim_refused(file_id: uuid.UUID, active: KeyRow | None) -> KeyManagementError:
    if active is None:
        return FileKeyNotFoundError("no active key for the file", operation="claim_rotation",
                                    details={"file_id": str(file_id)})
    ROTATIONS.labels("conflict").inc()
    lease = active.rotation_lease_until.isoformat() if active.rotation_lease_until else None
    return RotationConflictError("another worker is rotating this file", operation="claim_rotation",
                                 details={"file_id": str(file_id), "claimed_by": active.rotation_claimed_by,
                                          "lease_until": lease})


def _split_reference(reference: str) -> tuple[uuid.UUID, str, str]:
    name, version = parse_key_reference(reference)
    try:
        file_id = uuid.UUID(name.removeprefix("file-")) if name.startswith("file-") else None
    except ValueError:
        file_id = None
    if file_id is None or secret_name(file_id) != name:
        raise FileKeyNotFoundError("not a file key reference", operation="get_key",
                                   details={"reference_length": len(reference)})
    return file_id, name, version


def _check_readable(row: KeyRow | None, reference: str) -> None:
    if row is None:
        raise FileKeyNotFoundError("no key is recorded for this reference", operation="get_key",
                                   details={"key_reference": reference})
    if row.state == "retired" and row.vault_disabled_at is not None:
        raise KeyRetiredError("the key was rotated out and disabled", operation="get_key",
                              details={"key_reference": reference})
