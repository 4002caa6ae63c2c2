"""Dropping an attempt that did not finish: the one clean-up, for the uploader and the reconciler.

An attempt (an upload over HTTP, a delivery of an ingest blob) holds its file's row through
``pending_etag`` until it marks the file encrypted. When it fails, or is found abandoned,
``Attempts.abandon`` removes what it left, and only that. Nothing is guessed from an exception:

1. in one transaction the row is locked (a transaction still writing it, such as a mark whose COMMIT
   is on its way, is waited for) and read. If the attempt no longer holds it, its mark committed
   after all (its blob is the file's: nothing is removed) or another attempt took the row. If it
   still holds it, the attempt is forgotten: a ``pending`` row is deleted, an encrypted file (the
   attempt was a new version) keeps its content. A lost answer to that commit is settled by a
   re-read;
2. then the attempt's blobs that no row refers to are discarded (a file's current blob, and an old
   version's waiting out its grace, stay);
3. only if the row is gone (the file never got encrypted) do its keys go: they protect nothing.

Every step is idempotent; a failure part way is finished by the next call (the reconciler's; a blob
left behind is an orphan it discards).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any, Literal

from shared.blobs import Container
from shared.db.files import FileRepository
from shared.db.pool import Database
from shared.keys import FileKeyService

__all__ = ["Abandoned", "Attempts"]

log = logging.getLogger(__name__)

# finished: its mark committed (nothing removed); moved: another attempt holds the row (only its own blob
# went); dropped: a pending row deleted with its keys and blobs; kept: an encrypted file kept its content.
Abandoned = Literal["finished", "moved", "dropped", "kept"]


class Attempts:
    def __init__(self, *, db: Database, keys: FileKeyService, protected: Container) -> None:
        self._db, self._keys, self._protected = db, keys, protected

    async def abandon(self, file_id: uuid.UUID, attempt: str, *, blob_name: str | None = None,
                      settled_before: datetime | None = None) -> Abandoned:
        """Remove what the attempt ``attempt`` (a ``pending_etag``) left at ``file_id``.

        ``blob_name``: the attempt's own blob (the uploader knows it); else every blob under ``<file_id>/``
        that no row refers to and that was last changed before ``settled_before`` (the reconciler: an
        attempt in flight is never touched).
        """
        async def forget(conn: Any) -> Abandoned:
            files = FileRepository(conn)
            record = await files.lock(file_id)
            if record is None:
                return "dropped"
            if record.pending_etag != attempt:
                finished = blob_name and record.status == "encrypted" and record.protected_blob == blob_name
                return "finished" if finished else "moved"
            return "dropped" if await files.forget_attempt(file_id, attempt) == "deleted" else "kept"

        outcome = await self._db.resolved("abandon_attempt", forget,
                                          committed=lambda conn: _not_held(conn, file_id, attempt))
        if outcome == "finished":
            return outcome  # its mark committed: the blob and the keys are the file's
        await self._discard_unreferenced(file_id, [blob_name] if blob_name else None, settled_before)
        if outcome == "dropped":  # the file never got encrypted: its keys protect nothing
            await self._keys.delete_file_keys(file_id)
        return outcome

    async def _discard_unreferenced(self, file_id: uuid.UUID, names: list[str] | None,
                                    settled_before: datetime | None) -> None:
        """Discard the blobs among ``names`` (None: every blob of the file, staged ones too, last changed before
        ``settled_before``) that no row refers to."""
        if names is None:
            blobs, _ = await self._protected.page(prefix=f"{file_id}/", size=1000, uncommitted=True)
            names = [b.name for b in blobs if settled_before is None or _before(b.modified_on or b.created_on,
                                                                                settled_before)]
        if not names:
            return
        async with self._db.connection("abandon_attempt") as conn:
            referenced = await FileRepository(conn).referenced_blobs(names)
        for name in names:
            if name not in referenced:
                await self._protected.discard(name)


async def _not_held(conn: Any, file_id: uuid.UUID, attempt: str) -> bool:
    """The forgetting committed iff the attempt no longer holds the row."""
    return not await FileRepository(conn).holds_attempt(file_id, attempt)


def _before(changed: datetime | None, moment: datetime) -> bool:
    return changed is not None and changed < moment
