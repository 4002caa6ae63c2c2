"""Lazy key rotation, the one orchestrator: re-encrypt a file under a new key version, switch, retire.

The whole sequence for one file lives here (the key service offers its single steps); a
crash anywhere leaves the file readable, and a later run finishes:

1. claim the file's rotation (a lease) and get its pending key version (reused after a crash);
2. decrypt the protected blob and re-encrypt it into ``<file_id>/<new version>.bseal``;
3. one transaction: the keys switch state, the file points at the new blob and key, and the
   old blob is scheduled for deletion after the grace period (downloads already streaming it
   finish: they hold the old key already);
4. disable the old key version in the vault. One rule for a vault failure here: the rotation
   is done (the switch committed), the failure is logged and counted, and the sweep at the
   end of every ``rotate_due`` run retries the disable;
5. ``rotate_due`` deletes retired blobs whose grace has passed.

``rotate_due`` takes expired keys oldest first, bounded by a count and a time budget, and
skips files another worker is rotating.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from shared.blobs import Container
from shared.clock import Clock, utcnow
from shared.crypto.stream import Decryptor
from shared.db.files import FileRecord, FileRepository
from shared.db.pool import Database
from shared.errors import BlobsealError, KeyMissingError, KeyVaultError, RotationConflictError, UnknownFileError
from shared.ingest import protected_blob_name
from shared.keys import FileKeyService, RotationTicket
from shared.metrics import ERRORS, OPERATION_SECONDS
from shared.transfer import Sealed, Transfer, seal

__all__ = ["RotationPolicy", "RotationReport", "Rotator"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RotationPolicy:
    """How much one timer run may do, and how long a rotated-out blob stays for downloads in flight."""

    batch_size: int = 100
    time_budget_seconds: float = 240
    grace: timedelta = timedelta(minutes=60)
    lease_seconds: float = 900


@dataclass
class RotationReport:
    rotated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blobs_deleted: int = 0
    out_of_budget: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"rotated": self.rotated, "skipped": self.skipped, "failed": self.failed,
                "blobs_deleted": self.blobs_deleted, "out_of_budget": self.out_of_budget}


class Rotator:
    def __init__(self, *, db: Database, keys: FileKeyService, protected: Container, transfer: Transfer,
                 policy: RotationPolicy, clock: Clock = utcnow, worker: str | None = None) -> None:
        self._db, self._keys, self._protected = db, keys, protected
        self._transfer, self._policy, self._clock = transfer, policy, clock
        self._worker = worker or f"{socket.gethostname()}:{os.getpid()}"

    async def rotate_due(self, *, limit: int | None = None, budget_seconds: float | None = None) -> RotationReport:
        report = RotationReport()
        deadline = time.monotonic() + (budget_seconds or self._policy.time_budget_seconds)
        for key in await self._keys.due_for_rotation(self._clock(), limit or self._policy.batch_size):
            if time.monotonic() > deadline:
                report.out_of_budget = True
                break
            await self._rotate_counted(key.file_id, key.key_reference, report)
        report.blobs_deleted = await self.delete_retired_blobs()
        await self._keys.retire_pending_disables()
        return report

    async def rotate_file(self, file_id: uuid.UUID, *, only_from: str | None = None) -> str | None:
        """Rotate one file now; returns the new key reference.

        With ``only_from``, only if the file's key is still that one (another run may have
        rotated it since the due list was read); returns None when it was not.
        """
        started = time.perf_counter()
        if only_from is not None and (await self._keys.active_key(file_id)).key_reference != only_from:
            return None  # checked before claiming: a claim makes a pending key version
        record = await self._encrypted(file_id)
        ticket = await self._keys.claim_rotation(file_id, worker=self._worker,
                                                 lease_seconds=self._policy.lease_seconds)
        if only_from is not None and ticket.old.key_reference != only_from:  # rotated between check and claim
            await self._keys.release_claim(ticket, discard_pending=True)
            return None
        new_blob = protected_blob_name(file_id, ticket.new.key_reference)
        try:
            sealed = await self._reencrypt(record, new_blob, ticket)
            await self._switch(record, new_blob, sealed, ticket)
        except Exception as exc:
            await self._give_up(ticket, exc)
            raise
        await self._disable_old_key(ticket)
        OPERATION_SECONDS.labels("rotate").observe(time.perf_counter() - started)
        log.info("rotated file %s to a new key version", file_id)
        return ticket.new.key_reference

    async def delete_retired_blobs(self, limit: int = 1000) -> int:
        async with self._db.connection("retired_blobs") as conn:
            due = await FileRepository(conn).retired_blobs_due(self._clock(), limit)
        for blob_name in due:
            await self._protected.delete(blob_name)
            async with self._db.connection("forget_retired_blob") as conn:
                await FileRepository(conn).forget_retired_blob(blob_name)
        return len(due)

    async def rotate_one(self, file_id: uuid.UUID, from_reference: str, *, only_if_current: bool = True) -> bool:
        """One file of a run (the timer's, or the reconciler's resuming a stalled one): whether it was rotated
        (False: skipped, another worker holds it or it was rotated since). A failure backs this file off (1, 2,
        4 ... minutes) and is raised; its claim was given back already (``rotate_file``)."""
        try:
            return await self.rotate_file(file_id, only_from=from_reference if only_if_current else None) is not None
        except RotationConflictError:
            return False
        except BlobsealError as exc:
            ERRORS.labels("rotate", type(exc).__name__).inc()
            failures = await self._back_off(file_id, from_reference, exc)
            log.error("rotation of file %s failed (%d in a row; backing off): %s", file_id, failures, exc)
            raise

    async def _rotate_counted(self, file_id: uuid.UUID, due_reference: str, report: RotationReport) -> None:
        """One file of a run: a failure is counted and backs this file off; the run goes on."""
        try:
            rotated = await self.rotate_one(file_id, due_reference)
        except BlobsealError:
            report.failed.append(str(file_id))
            return
        (report.rotated if rotated else report.skipped).append(str(file_id))

    async def _back_off(self, file_id: uuid.UUID, reference: str, exc: BlobsealError) -> int:
        try:
            return await self._keys.rotation_failed(file_id, reference, error=str(exc))
        except BlobsealError as record_exc:  # the database may be what failed: the next run retries anyway
            log.warning("file %s: the rotation failure could not be recorded: %s", file_id, record_exc)
            return 0

    async def _give_up(self, ticket: RotationTicket, exc: Exception) -> None:
        """Release the claim at once (so the next attempt need not wait out the lease); a pending key
        the vault lost is dropped, so that the next attempt makes a new one."""
        lost_pending = isinstance(exc, KeyMissingError) and exc.details.get("key_reference") == \
            ticket.new.key_reference
        try:
            await self._keys.release_claim(ticket, discard_pending=lost_pending)
        except BlobsealError as release_exc:
            log.warning("file %s: releasing the rotation claim failed (the lease ends it): %s",
                        ticket.old.file_id, release_exc)

    async def _encrypted(self, file_id: uuid.UUID) -> FileRecord:
        async with self._db.connection("rotate_file") as conn:
            record = await FileRepository(conn).get(file_id)
        if record is None or record.status != "encrypted" or record.protected_blob is None:
            raise UnknownFileError("no encrypted file with this id", operation="rotate_file",
                                   details={"file_id": str(file_id)})
        return record

    async def _reencrypt(self, record: FileRecord, new_blob: str, ticket: RotationTicket) -> Sealed:
        assert record.protected_blob is not None
        opener = Decryptor(await self._keys.get_key(ticket.old.key_reference), expect_file_id=record.file_id)
        info = await self._protected.info(record.protected_blob)
        return await seal(self._protected.read(record.protected_blob, etag=info.etag), self._protected, new_blob,
                          key=await self._keys.get_key(ticket.new.key_reference), file_id=record.file_id,
                          key_reference=ticket.new.key_reference, transfer=self._transfer, opener=opener,
                          size_hint=info.size)

    async def _switch(self, record: FileRecord, new_blob: str, sealed: Sealed, ticket: RotationTicket) -> None:
        """Keys, pointer and the old blob's retirement in one commit; a lost race rolls all of it back."""
        assert record.protected_blob is not None
        old_blob, now = record.protected_blob, self._clock()

        async def switch(conn: Any) -> None:
            await self._keys.switch_keys(conn, ticket)
            files = FileRepository(conn)
            if not await files.switch(record.file_id, old_reference=ticket.old.key_reference,
                                      old_blob=old_blob, key_reference=ticket.new.key_reference,
                                      protected_blob=new_blob, protected_etag=sealed.etag,
                                      block_size=sealed.block_size, now=now):
                raise RotationConflictError("the file changed (a new version, or another rotation) while it was "
                                            "re-encrypted", operation="switch_rotation",
                                            details={"file_id": str(record.file_id)})
            await files.retire_blob(old_blob, record.file_id, delete_after=now + self._policy.grace)

        # a lost answer is settled by a re-read: the file points at the new blob and key, or it does not
        await self._db.resolved("switch_rotation", switch, committed=lambda conn: FileRepository(conn).points_at(
            record.file_id, new_blob, ticket.new.key_reference))

    async def _disable_old_key(self, ticket: RotationTicket) -> None:
        """After the commit the rotation is done: a vault failure is left for the sweep, never raised."""
        try:
            await self._keys.disable_old_key(ticket)
        except KeyVaultError as exc:
            ERRORS.labels("rotate", "disable_deferred").inc()
            log.warning("file %s rotated; disabling its old key version failed and is left for the sweep: %s",
                        ticket.old.file_id, exc)
