"""Lazy key rotation: re-encrypt a file under a new key version, switch, then retire the old.

Steps for one file (a crash anywhere leaves the file readable; a later run finishes):

1. ``begin_rotation`` claims the file and adds (or reuses) a pending key version;
2. the protected blob is decrypted and re-encrypted into ``<file_id>/<new version>.bseal``;
3. one transaction switches the key states and the file's blob pointer, and schedules the
   old blob for deletion after ``ROTATION_GRACE_MINUTES`` (downloads already streaming it
   finish; they hold the old key already);
4. the old key version is disabled in the vault (a sweep retries it if that fails).

``rotate_due`` takes expired keys oldest first, bounded by a count and a time budget, skips
files another worker is rotating, then deletes retired blobs whose grace has passed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from shared.crypto.stream import Decryptor, Encryptor
from shared.db.files import FileRepository
from shared.deps import Deps
from shared.errors import BlobsealError, RotationConflictError, UnknownFileError
from shared.ingest import protected_blob_name
from shared.keys import RotationTicket
from shared.metrics import ERRORS, OPERATION_SECONDS
from shared.transfer import seal_stream

__all__ = ["RotationReport", "Rotator"]

log = logging.getLogger(__name__)


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
    def __init__(self, deps: Deps, *, worker: str | None = None) -> None:
        self._d = deps
        self._worker = worker or f"{socket.gethostname()}:{os.getpid()}"

    async def rotate_due(self, *, limit: int | None = None, budget_seconds: float | None = None) -> RotationReport:
        d, report = self._d, RotationReport()
        deadline = time.monotonic() + (budget_seconds or d.settings.rotation_time_budget_seconds)
        for key in await d.keys.due_for_rotation(d.clock(), limit or d.settings.rotation_batch_size):
            if time.monotonic() > deadline:
                report.out_of_budget = True
                break
            await self._rotate_counted(key.file_id, key.key_reference, report)
        report.blobs_deleted = await self.delete_retired_blobs()
        await d.keys.retire_pending_disables()
        return report

    async def _rotate_counted(self, file_id: uuid.UUID, due_reference: str, report: RotationReport) -> None:
        try:
            rotated = await self.rotate_file(file_id, only_from=due_reference)
            (report.rotated if rotated else report.skipped).append(str(file_id))
        except RotationConflictError:
            report.skipped.append(str(file_id))
        except BlobsealError as exc:
            ERRORS.labels("rotate", type(exc).__name__).inc()
            log.error("rotation of file %s failed: %s", file_id, exc)
            report.failed.append(str(file_id))

    async def rotate_file(self, file_id: uuid.UUID, *, only_from: str | None = None) -> str | None:
        """Rotate one file now; returns the new key reference.

        With ``only_from``, only if the file's key is still that one (another run may have
        rotated it since the due list was read); returns None when it was not.
        """
        started = time.perf_counter()
        d = self._d
        if only_from is not None and (await d.keys.active_key(file_id)).key_reference != only_from:
            return None
        async with d.db.connection("rotate_file") as conn:
            record = await FileRepository(conn).get(file_id)
        if record is None or record.status != "encrypted" or record.protected_blob is None:
            raise UnknownFileError("no encrypted file with this id", operation="rotate_file",
                                   details={"file_id": str(file_id)})
        ticket = await d.keys.begin_rotation(file_id, worker=self._worker)
        if only_from is not None and ticket.old.key_reference != only_from:  # rotated between check and claim
            await d.keys.abandon_rotation(ticket, discard_pending=True)
            return None
        new_blob = protected_blob_name(file_id, ticket.new.key_reference)
        await self._reencrypt(file_id, record.protected_blob, new_blob, ticket)
        await self._switch(file_id, record.protected_blob, new_blob, ticket)
        await d.keys.finish_rotation(ticket)
        OPERATION_SECONDS.labels("rotate").observe(time.perf_counter() - started)
        log.info("rotated file %s to a new key version", file_id)
        return ticket.new.key_reference

    async def _reencrypt(self, file_id: uuid.UUID, old_blob: str, new_blob: str, ticket: RotationTicket) -> None:
        d = self._d
        opener = Decryptor(await d.keys.get_key(ticket.old.key_reference), expect_file_id=file_id)
        encryptor = Encryptor(await d.keys.get_key(ticket.new.key_reference), file_id=file_id,
                              key_reference=ticket.new.key_reference, block_size=d.settings.block_size)
        info = await d.blobs.info(d.settings.protected_container, old_blob)
        source = d.blobs.read(d.settings.protected_container, old_blob, etag=info.etag)
        await seal_stream(source, d.blobs.writer(d.settings.protected_container, new_blob), encryptor,
                          chunk_size=d.settings.chunk_size, file_id=file_id, opener=opener)

    async def _switch(self, file_id: uuid.UUID, old_blob: str, new_blob: str, ticket: RotationTicket) -> None:
        d = self._d
        now = d.clock()
        async with d.db.transaction("switch_rotation") as conn:
            await d.keys.complete_rotation(ticket, conn=conn)
            files = FileRepository(conn)
            switched = await files.switch(file_id, old_reference=ticket.old.key_reference,
                                          key_reference=ticket.new.key_reference, protected_blob=new_blob, now=now)
            if not switched:  # rolls the whole transaction back; the old key and blob stay in use
                raise RotationConflictError("file no longer uses the key being rotated", operation="switch_rotation",
                                            details={"file_id": str(file_id)})
            await files.retire_blob(old_blob, file_id,
                                    delete_after=now + timedelta(minutes=d.settings.rotation_grace_minutes))

    async def delete_retired_blobs(self, limit: int = 1000) -> int:
        d = self._d
        async with d.db.connection("retired_blobs") as conn:
            due = await FileRepository(conn).retired_blobs_due(d.clock(), limit)
        for blob_name in due:
            await d.blobs.delete(d.settings.protected_container, blob_name)
            async with d.db.connection("forget_retired_blob") as conn:
                await FileRepository(conn).forget_retired_blob(blob_name)
        return len(due)
