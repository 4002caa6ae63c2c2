"""The file key service: one AES-256 key per file, tracked in PostgreSQL, kept in its custody.

In ``secret`` custody (the spec's model) a key lives in the vault as a version of
``file-<file_id>`` and the database records its reference ``file-<file_id>/<version>``; in
``envelope`` custody (``shared.custody``) the row holds the key wrapped by an intermediate key
under a reference ``file-<file_id>/env-<random>``. Either way the row records the state
(``pending`` -> ``active`` -> ``retired``) and never the plain key; ``KEY_MODE`` picks the
custody of new keys and ``migrate_keys`` moves recorded ones. Every step can be retried or
resumed after a crash:

- ``create_key`` is idempotent: a file has at most one active key (a unique index decides a
  race; the loser disables the vault version it made and returns the winner's key).
- Rotation is driven by ``shared.rotation.Rotator``; this service offers its key steps, each
  one call: ``claim_rotation`` claims the file (a lease) and adds a pending key, reusing one
  left by a crashed attempt; ``switch_keys`` turns pending -> active and active -> retired on
  the caller's connection, inside the caller's transaction (so the file's pointer moves in
  the same commit); ``disable_old_key`` disables the old vault version once that committed
  (``retire_pending_disables`` sweeps up disables that failed); ``release_claim`` gives a
  claim up. Until the switch the old key stays active and readable.

Vault failures surface as ``KeyVaultError``; database failures as ``DatabaseError``
(``DatabaseUnavailableError`` when it is down). Time comes from the injected ``clock``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.clock import Clock, utcnow
from shared.custody import EnvelopeCustody, SecretCustody
from shared.db.file_keys import Custody, FileKeyRepository, KeyRow, KeyState, Placement
from shared.db.pool import Database
from shared.errors import (
    DatabaseError,
    FileKeyNotFoundError,
    KeyManagementError,
    KeyMissingError,
    KeyRetiredError,
    KeyVaultError,
    RotationConflictError,
    SecretNotFoundError,
    VaultMissingError,
)
from shared.metrics import KEYS_MISSING, ROTATIONS
from shared.vault.base import KeyVault, parse_key_reference, secret_name
from shared.vault.cache import TtlCache
from shared.vault.kek import Wrapped

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
    raced: int = 0  # moved or retired by someone else meanwhile: left as they were


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

    def __init__(self, db: Database, vault: KeyVault, *, rotation_days: int, clock: Clock = utcnow,
                 envelope: EnvelopeCustody | None = None, mode: Custody = "secret",
                 cache: TtlCache[str, bytes] | None = None) -> None:
        if rotation_days < 1:
            raise ValueError("rotation_days must be at least 1")
        if mode == "envelope" and envelope is None:
            raise ValueError("envelope mode needs the envelope custody")
        self._db = db
        self._vault = vault
        self._secret = SecretCustody(vault)
        self.envelope = envelope
        self.mode: Custody = mode
        self._rotation = timedelta(days=rotation_days)
        self._clock = clock
        # Plain keys by reference (a reference's key never changes), so a warm download costs no lookup.
        self._plain = cache or TtlCache(ttl_seconds=0, max_entries=1)

    # --- create and read ------------------------------------------------------------------

    async def create_key(self, file_id: uuid.UUID) -> FileKey:
        """The file's active key, created (in the vault and the database) if it has none."""
        existing = await self._find_active(file_id, "create_key")
        if existing is not None:
            return _public(existing)
        now = self._clock()
        key, (reference, placement) = await self._new_key(file_id, now + self._rotation)
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
        found = await self._placed(key_reference)
        _check_readable(found[0] if found else None, key_reference)
        assert found is not None
        return await self._read(*found)

    async def key_of(self, key_reference: str) -> bytes:
        """The key of a reference taken from this service's own records (a ``FileKey`` it returned, a
        file row's current key): from memory when read before, else its row says where it lives (no
        state check; the vault still refuses a disabled version)."""
        cached = self._plain.get(key_reference)
        if cached is not None:
            return cached
        found = await self._placed(key_reference)
        if found is None:
            raise FileKeyNotFoundError("no key is recorded for this reference", operation="get_key",
                                       details={"key_reference": key_reference})
        return await self._read(*found)

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

        Raises ``RotationConflictError`` while another worker's lease is live. A pending key
        left by an earlier attempt is reused, so a crashed rotation resumes where it stopped.
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
        pending = other or await self._create_pending(file_id, now)
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
        """Disable the retired old key's vault version (after the switch committed). Idempotent."""
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
        """Disable vault versions of retired keys whose disable failed earlier; return how many."""
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
        """Delete the file's vault secret (every version) if it ever had one, then its rows (and with
        them the wrapped keys: crypto-shredding). Idempotent."""
        async with self._db.connection("delete_file_keys") as conn:
            in_vault = await FileKeyRepository(conn).held_in_vault(file_id)
        if in_vault is not False:  # True, or no row left to tell (an earlier attempt deleted them)
            with contextlib.suppress(SecretNotFoundError):
                await self._vault.delete_secret(secret_name(file_id))
        self._plain.forget_group(file_id)
        async with self._db.transaction("delete_file_keys") as conn:
            deleted = await FileKeyRepository(conn).delete_file(file_id)
        log.info("deleted %d key(s) of file %s", deleted, file_id)
        return deleted

    # --- custody ------------------------------------------------------------------------------

    async def migrate_keys(self, to: Custody, limit: int = 100) -> MigrationReport:
        """Move up to ``limit`` readable keys into custody ``to``, without touching a blob.

        Each move is a compare-and-set on the row's custody; a key moved out of secret custody has
        its vault version disabled once the move committed (deleting the file deletes it).
        """
        if to == "envelope" and self.envelope is None:
            raise KeyManagementError("moving keys to envelope custody needs the KEK (KEY_MODE=envelope)",
                                     operation="migrate_keys")
        async with self._db.connection("migrate_keys") as conn:
            rows = await FileKeyRepository(conn).readable_in("secret" if to == "envelope" else "envelope", limit)
        report = MigrationReport()
        for row in rows:
            moved = await self._move(row, to)
            report.moved += moved
            report.raced += not moved
        return report

    async def _move(self, row: KeyRow, to: Custody) -> bool:
        found = await self._placed(row.key_reference)
        if found is None:
            return False
        row, intermediate = found
        if row.custody == to:
            return False
        key = await self._read(row, intermediate)
        if to == "envelope":
            assert self.envelope is not None
            placement = await self.envelope.wrap_existing(row, key)
        else:
            _, placement = await self._secret.place(row.file_id, key, row.expires_at or self._clock())
        async with self._db.transaction("migrate_keys") as conn:
            moved = await FileKeyRepository(conn).move(row, placement)
        if moved and row.custody == "secret":  # the old vault version no longer holds the key
            await self._discard(row.placement, row.key_reference, "migrate_keys")
        elif not moved:  # someone else moved it first: this placement is unused
            await self._discard(placement, row.key_reference, "migrate_keys")
        return moved

    async def rotate_kek(self, batch: int = 500) -> tuple[str, int]:
        """Add a KEK version, then rewrap every intermediate key with it (file keys stay as they are)."""
        if self.envelope is None:
            raise KeyManagementError("KEK rotation needs KEY_MODE=envelope", operation="rotate_kek")
        reference = await self.envelope.intermediates.kek.create()
        return reference, await self.rewrap_intermediates(batch)

    async def kek_usage(self) -> dict[str, int]:
        """Each KEK version still wrapping intermediate keys, with how many (empty in secret-only use)."""
        return await self.envelope.intermediates.kek_usage() if self.envelope is not None else {}

    async def rewrap_intermediates(self, batch: int = 500) -> int:
        """Rewrap every intermediate key an older KEK version wraps (resumable); return how many."""
        if self.envelope is None:
            raise KeyManagementError("rewrapping needs KEY_MODE=envelope", operation="rewrap_intermediates")
        total = 0
        while done := await self.envelope.intermediates.rewrap(batch):
            total += done
        return total

    # --- steps ------------------------------------------------------------------------------

    async def _find_active(self, file_id: uuid.UUID, operation: str) -> KeyRow | None:
        async with self._db.connection(operation) as conn:
            return await FileKeyRepository(conn).active(file_id)

    async def close(self) -> None:
        """Close the KEK's client (the vault and the database have owners of their own)."""
        self._plain.clear()
        if self.envelope is not None:
            await self.envelope.intermediates.kek.close()

    async def check_vault(self) -> None:
        """The vault answers; a missing or empty store is an error only while the database records keys.
        In envelope mode the KEK must be there too (unless a first one may still be made: nothing recorded)."""
        try:
            await self._vault.ping()
        except VaultMissingError:
            await self._refuse_if_keys_recorded()
        if self.mode == "envelope" and self.envelope is not None:
            await self.envelope.intermediates.check()

    async def _new_key(self, file_id: uuid.UUID, expires_at: datetime) -> tuple[bytes, tuple[str, Placement]]:
        """A new random key, placed in the custody of the mode (not recorded yet)."""
        key = secrets.token_bytes(KEY_BYTES)
        if self.mode == "envelope":
            assert self.envelope is not None
            return key, await self.envelope.place(file_id, key, expires_at)
        try:
            return key, await self._secret.place(file_id, key, expires_at)
        except VaultMissingError:
            await self._refuse_if_keys_recorded()  # fail closed: never start a new vault beside recorded keys
            await self._vault.initialize()
            return key, await self._secret.place(file_id, key, expires_at)

    async def _placed(self, key_reference: str) -> tuple[KeyRow, Wrapped | None] | None:
        """The reference's row, and the wrapping of its intermediate key when it has one (one trip)."""
        file_id, _, _ = _split_reference(key_reference)
        async with self._db.connection("get_key") as conn:
            found = await FileKeyRepository(conn).with_intermediate(file_id, key_reference)
        if found is None:
            return None
        row, kek_reference, wrapped = found
        return row, (Wrapped(kek_reference, wrapped) if kek_reference is not None else None)

    async def _read(self, row: KeyRow, intermediate: Wrapped | None) -> bytes:
        """The plain key of a row, from its custody (and remembered by reference)."""
        if row.custody == "envelope":
            if self.envelope is None or intermediate is None:
                raise KeyManagementError("the key is wrapped (envelope custody) but this service has no KEK",
                                         operation="get_key", details={"key_reference": row.key_reference})
            key = await self.envelope.read(row, intermediate)
        else:
            key = await self._read_secret(row)
        if len(key) != KEY_BYTES:
            raise KeyManagementError("the key's custody returned a key of the wrong size", operation="get_key",
                                     details={"key_reference": row.key_reference, "size": len(key)})
        self._plain.put(row.key_reference, key, row.file_id)
        return key

    async def _read_secret(self, row: KeyRow) -> bytes:
        try:
            return await self._secret.read(row)
        except SecretNotFoundError as exc:
            KEYS_MISSING.inc()
            log.error("key %s is recorded but missing from the vault: restore it from the vault's backups",
                      row.key_reference)
            raise KeyMissingError("the file's key is missing from the vault", operation="get_key",
                                  details={"key_reference": row.key_reference}) from exc

    async def _refuse_if_keys_recorded(self) -> None:
        async with self._db.connection("check_vault") as conn:
            recorded = await FileKeyRepository(conn).any_recorded()
        if recorded:
            raise VaultMissingError("the vault is missing or empty while the database records keys; "
                                    "restore it (keys are never written into a new vault)", operation="check_vault")

    async def _record(
        self, file_id: uuid.UUID, reference: str, placement: Placement, state: KeyState, now: datetime, operation: str
    ) -> KeyRow | None:
        """Insert the row of a new key; ``None`` if another one won the race."""
        try:
            async with self._db.transaction(operation) as conn:
                return await FileKeyRepository(conn).insert(
                    file_id, reference, placement, state=state, created_at=now, expires_at=now + self._rotation
                )
        except DatabaseError as exc:
            if exc.details.get("stage") != "commit":  # surely not committed: the placed key is an orphan
                await self._discard(placement, reference, operation)
            raise

    async def _create_pending(self, file_id: uuid.UUID, now: datetime) -> KeyRow:
        key, (reference, placement) = await self._new_key(file_id, now + self._rotation)
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
        """Disable a retired key: its vault version (secret custody); a wrapped key is refused by the mark."""
        if row.custody == "secret":
            with contextlib.suppress(SecretNotFoundError):  # a deleted secret needs no disabling
                await self._secret.discard(row.placement)
        self._plain.forget(row.key_reference)
        async with self._db.transaction("disable_retired") as conn:
            await FileKeyRepository(conn).mark_vault_disabled(row.file_id, row.key_reference, self._clock())

    async def _discard(self, placement: Placement, reference: str, operation: str) -> None:
        """Disable a placed key no row refers to (secret custody). Best effort: the caller's outcome stands."""
        self._plain.forget(reference)
        try:
            await self._secret.discard(placement)
        except KeyVaultError as exc:
            log.warning("%s: could not disable unused key version %s: %s", operation, reference, exc)


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
