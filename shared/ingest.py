"""Encrypting an upload: ingest blob -> protected blob, key and rows durable, then delete.

One attempt (a crash anywhere leaves a state the next attempt completes):

1. start reading the ingest blob; its first response gives its properties (gone: an earlier
   delivery finished; nothing to do), and the rest of the read is pinned to its ETag;
2. derive the file id (UUID at the start of the name, else stable from name and ETag);
3. claim the file's row for this attempt (``pending_etag``): a new row, or one of the same upload
   name (an earlier attempt, or an encrypted earlier version: the newest content wins). An
   encrypted row already holding this content is a duplicate delivery; a row of another upload
   name means the UUID is taken, and the upload is refused, permanently: it stays in ingest and
   ``failed`` lists it;
4. create or reuse the file's key (idempotent);
5. stream-encrypt into ``<file_id>/<key version>.<attempt>.bseal`` as staged blocks committed at
   the end (one request for a small file); the attempt's random tag means no two attempts share a
   blob;
6. point the row at the blob, only if the attempt still holds it (its ETag is the newest) and
   its key is still the file's; a new version's old blob is retired after the grace period
   (downloads in flight finish);
7. delete the plaintext, only if unchanged since step 1 (ETag) and unless KEEP_PLAINTEXT.

An attempt whose content was overwritten meanwhile removes its own blob (staged blocks
included) and ends ``superseded``: the newer content has a delivery of its own. If its content
is still the newest (an older attempt took the row back), it retries.

Transient failures (a dependency that did not answer) are retried with jittered exponential
backoff, honouring ``Retry-After``, for up to ``RetryPolicy.patience_seconds``; after that, and at
once for anything else, the failure is recorded with its reason (``ingest_failures``) and
raised: the host retries the delivery, and the reconciler picks the upload up again later
unless the failure is permanent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import os
import random
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from itertools import count
from typing import Any, Literal

from shared.blobs import BlobInfo, Container
from shared.clock import Clock, utcnow
from shared.db.failures import FailureRepository
from shared.db.files import FileRecord, FileRepository
from shared.db.pool import Database
from shared.errors import (
    BlobChangedError,
    BlobNotFoundError,
    BlobsealError,
    DatabaseError,
    UnknownFileError,
    UploadConflictError,
    UploadRaceError,
    is_transient,
)
from shared.keys import FileKeyService
from shared.metrics import BYTES_PROCESSED, FILE_SIZE, INGEST_RETRIES, OPERATION_SECONDS, OPERATIONS
from shared.names import check_name
from shared.transfer import Transfer, seal

__all__ = [
    "IngestOutcome", "Ingestor", "RetryPolicy", "attempt_tag", "guess_type", "identify_upload", "protected_blob_name",
    "upload_tag",
]

log = logging.getLogger(__name__)

# Namespace of file ids derived from blob names (uuid5); fixed forever.
UPLOAD_NAMESPACE = uuid.UUID("6f1d7a52-3b0e-5c8e-9a51-b10b5ea1f11e")
_LEADING_UUID = re.compile(r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(?:[/.]|$)")

IngestStatus = Literal["encrypted", "duplicate", "gone", "disabled", "superseded", "erased"]


@dataclass(frozen=True)
class IngestOutcome:
    status: IngestStatus
    file_id: uuid.UUID | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """How long one delivery keeps retrying transient failures, and how the reconciler backs off."""

    patience_seconds: float = 120.0
    first_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Jittered exponential backoff (0.5-1.0 of the step, so instances spread), at least ``Retry-After``."""
        step = min(self.max_delay, self.first_delay * float(2 ** (attempt - 1)))
        return max(step * random.uniform(0.5, 1.0), retry_after or 0.0)

    # The reconciler leaves a failed upload alone this long (the host may still be retrying it);
    # then every run retries it until it succeeds, unless the failure is permanent.
    hold: timedelta = timedelta(minutes=1)


def identify_upload(name: str, etag: str) -> tuple[uuid.UUID, str]:
    """(file id, display name) of an ingest blob name: ``<uuid>``, ``<uuid>/<name>``, ``<uuid>.<ext>``."""
    match = _LEADING_UUID.match(name)
    if match:
        rest = name[len(match.group(1)) :]
        display = rest[1:] if rest.startswith("/") and len(rest) > 1 else name
        return uuid.UUID(match.group(1)), display.rsplit("/", 1)[-1]
    return uuid.uuid5(UPLOAD_NAMESPACE, f"{name}\n{etag}"), name.rsplit("/", 1)[-1]


def protected_blob_name(file_id: uuid.UUID, key_reference: str, *, attempt: str | None = None) -> str:
    """One protected blob per key version and, for an upload, per delivery (``attempt``, random):
    two deliveries (two contents, or two of one) never share a blob; the retries of one do."""
    version = key_reference.rsplit("/", 1)[-1]
    return f"{file_id}/{version}.{attempt}.bseal" if attempt else f"{file_id}/{version}.bseal"


def attempt_tag() -> str:
    return os.urandom(6).hex()


# What clients send when nobody chose a type: SDK and curl defaults.
_UNCHOSEN_TYPES = ("", "application/octet-stream", "application/x-www-form-urlencoded")


def guess_type(given: str | None, name: str) -> str:
    """The uploader's content type, else a guess from the name, else ``application/octet-stream``."""
    if given and given.split(";")[0].strip().lower() not in _UNCHOSEN_TYPES:
        return given
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def upload_tag(name: str) -> str:
    """A short stand-in for an upload's name in logs (names are user data: kept out of logs above DEBUG)."""
    return "upload-" + hashlib.sha256(name.encode()).hexdigest()[:12]


class Ingestor:
    """Encrypts uploads from the ``ingest`` container into the ``protected`` one."""

    def __init__(self, *, db: Database, keys: FileKeyService, ingest: Container, protected: Container,
                 transfer: Transfer, keep_plaintext: bool = False, enabled: bool = True,
                 retry: RetryPolicy | None = None, replace_grace: timedelta = timedelta(minutes=60),
                 clock: Clock = utcnow) -> None:
        self._db, self._keys = db, keys
        self._ingest, self._protected = ingest, protected
        self._transfer = transfer
        self._keep_plaintext, self._enabled = keep_plaintext, enabled
        self._retry = retry or RetryPolicy()
        self._replace_grace = replace_grace  # how long a new version's old blob stays for downloads in flight
        self._clock = clock

    async def encrypt(self, name: str, *, patience: float | None = None) -> IngestOutcome:
        """Encrypt one upload, retrying transient failures for ``patience`` seconds (default: the policy's)."""
        started = time.perf_counter()
        try:
            outcome = await self._with_retries(name, patience)
        except Exception as exc:
            OPERATIONS.labels("encrypt", type(exc).__name__).inc()
            raise
        OPERATIONS.labels("encrypt", outcome.status).inc()
        OPERATION_SECONDS.labels("encrypt").observe(time.perf_counter() - started)
        return outcome

    async def _with_retries(self, name: str, patience: float | None) -> IngestOutcome:
        if not self._enabled:
            log.warning("encryption is disabled (ENCRYPTION_ENABLED=false): %s left in ingest", upload_tag(name))
            return IngestOutcome("disabled")
        deadline = time.monotonic() + (self._retry.patience_seconds if patience is None else patience)
        tag = attempt_tag()  # this delivery's blob: a retry writes over its own earlier try
        for attempt in count(1):
            info: BlobInfo | None = None
            try:
                info, source = await self._ingest.open_whole(name)
                return await self._attempt(name, info, source, tag)
            except BlobNotFoundError:
                log.debug("ingest blob %s is gone: an earlier delivery completed it", name)
                return IngestOutcome("gone")
            except Exception as exc:
                delay = self._retry.delay(attempt, _retry_after(exc))
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    await self._record_failure(name, info, exc)
                    raise
                INGEST_RETRIES.inc()
                log.warning("%s: %s; retrying in %.1f s (attempt %d)", upload_tag(name), _reason(exc), delay, attempt)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _attempt(self, name: str, info: BlobInfo, source: AsyncIterator[bytes], tag: str) -> IngestOutcome:
        """``source``: the upload's bytes, its first request made (it told ``info``), pinned to its ETag."""
        check_name(name, "ingest")  # a name no client could download or look up: refused, kept, listed by `failed`
        file_id, display = identify_upload(name, info.etag)
        async with self._db.connection("register_file") as conn:  # one statement: no BEGIN/COMMIT round trips
            record = await FileRepository(conn).register(file_id, source_name=name, source_etag=info.etag,
                                                         name=display, content_type=guess_type(info.content_type, name))
        if record.pending_etag != info.etag or record.source_name != name:
            return await self._not_ours(name, info.etag, record)
        try:
            key = await self._keys.create_key(file_id)
        except UnknownFileError:  # deleted since it was registered: erased, never encrypted
            return await self._lost(name, info.etag, file_id, "")
        key_ref, blob_name = key.key_reference, protected_blob_name(file_id, key.key_reference, attempt=tag)
        try:
            sealed = await seal(source, self._protected, blob_name,
                                key=await self._keys.key_of(key.key_reference), file_id=file_id, key_reference=key_ref,
                                transfer=self._transfer, size_hint=info.size)
        except BlobChangedError:  # overwritten while being read: this content is no longer the upload
            return await self._lost(name, info.etag, file_id, blob_name)
        async def mark(conn: Any) -> tuple[bool, str | None]:
            files = FileRepository(conn)
            marked, replaced = await files.mark_encrypted(
                file_id, source_name=name, source_etag=info.etag, name=display,
                content_type=guess_type(info.content_type, name), size=sealed.size, key_reference=key_ref,
                protected_blob=blob_name, protected_etag=sealed.etag, block_size=sealed.block_size,
                now=self._clock())
            if marked:
                await FailureRepository(conn).clear(name)
            if marked and replaced and replaced != blob_name:  # a new version: the old content's blob retires
                await files.retire_blob(replaced, file_id, delete_after=self._clock() + self._replace_grace)
            return marked, replaced

        # a lost answer is settled by a re-read (the blob name is this delivery's own); unknown: retried
        marked, replaced = await self._db.resolved(
            "mark_encrypted", mark, committed=lambda conn: FileRepository(conn).points_at(file_id, blob_name))
        if not marked:
            return await self._lost(name, info.etag, file_id, blob_name)
        BYTES_PROCESSED.labels("encrypt").inc(sealed.size)
        FILE_SIZE.observe(sealed.size)
        log.info("encrypted file %s (%d bytes%s)", file_id, sealed.size, ", a new version" if replaced else "")
        await self._discard_plaintext(name, info.etag)
        return IngestOutcome("encrypted", file_id)

    async def _not_ours(self, name: str, etag: str, record: FileRecord) -> IngestOutcome:
        """The file id's row belongs to another upload name (refused), or to a deleted file (its upload is
        erased on arrival: a deleted file never comes back), or holds this content already (a duplicate)."""
        if record.status == "deleted" and record.source_name == name:
            return await self._erase_arrival(name, etag, record)
        if record.source_name != name:
            raise UploadConflictError("the file id at the start of this name is already used by another upload; "
                                      "upload refused and kept in ingest", operation="ingest",
                                      details={"file_id": str(record.file_id)})
        log.info("duplicate delivery of file %s: already encrypted", record.file_id)
        await self._discard_plaintext(name, etag)
        return IngestOutcome("duplicate", record.file_id)

    async def _erase_arrival(self, name: str, etag: str, record: FileRecord) -> IngestOutcome:
        """An upload of a deleted file (a late delivery, or the same name again): its plaintext is deleted
        (whatever KEEP_PLAINTEXT says), never encrypted; the file id is never filled again."""
        await self._ingest.delete(name, etag=etag)
        async with self._db.transaction("erase_arrival") as conn:
            await FailureRepository(conn).clear(name)
        log.warning("%s: an upload of deleted file %s arrived; its plaintext was deleted (a deleted file id is "
                    "never filled again: upload under a new name)", upload_tag(name), record.file_id)
        return IngestOutcome("erased", record.file_id)

    async def _lost(self, name: str, etag: str, file_id: uuid.UUID, blob_name: str) -> IngestOutcome:
        """This attempt does not hold the row (any more): a twin finished, or newer content won."""
        async with self._db.connection("ingest_lost") as conn:
            record = await FileRepository(conn).get(file_id)
        if record is not None and record.protected_blob == blob_name:  # an earlier try of this delivery marked it
            return await self._not_ours(name, etag, record)
        if blob_name:
            await self._protected.discard(blob_name)  # this delivery's alone: no other one writes this name
        if record is not None and record.status == "deleted":
            return await self._not_ours(name, etag, record)
        if record is not None and record.status == "encrypted" and (record.source_name, record.source_etag) == (
                name, etag):
            return await self._not_ours(name, etag, record)  # a concurrent delivery of this content finished
        if await self._current_etag(name) == etag:  # still the newest content: take the row back
            raise UploadRaceError("another attempt held the upload's row, or the file's key changed; retrying",
                                  operation="ingest", details={"file_id": str(file_id)})
        log.info("file %s: the upload was overwritten while it was encrypted; the newer content is encrypted "
                 "by its own delivery", file_id)
        return IngestOutcome("superseded", file_id)

    async def _current_etag(self, name: str) -> str | None:
        try:
            return (await self._ingest.info(name)).etag
        except BlobNotFoundError:
            return None

    async def _discard_plaintext(self, name: str, etag: str) -> None:
        if not self._keep_plaintext:
            await self._ingest.delete(name, etag=etag)

    async def _record_failure(self, name: str, info: BlobInfo | None, exc: Exception) -> None:
        """Keep the reason where ``failed`` lists it; best effort (the reconciler finds the upload anyway)."""
        permanent = isinstance(exc, BlobsealError) and exc.permanent
        file_id = identify_upload(name, info.etag)[0] if info is not None else None
        attempts = 0
        try:
            if info is not None:
                async with self._db.transaction("record_failure") as conn:
                    now = self._clock()
                    attempts = await FailureRepository(conn).record(
                        source_name=name, source_etag=info.etag, file_id=file_id, error=type(exc).__name__,
                        reason=_reason(exc), permanent=permanent, now=now,
                        next_attempt_at=None if permanent else now + self._retry.hold)
        except DatabaseError as db_exc:
            log.warning("%s: the failure could not be recorded (%s)", upload_tag(name), type(db_exc).__name__)
        log.error("%s (file %s) failed%s, attempt %d: %s", upload_tag(name), file_id,
                  " permanently" if permanent else "", attempts, _reason(exc))


def _reason(exc: BaseException) -> str:
    """Our own messages (free of secrets by construction); for anything else only its type."""
    return str(exc) if isinstance(exc, BlobsealError) else f"{type(exc).__name__} (unexpected)"


def _retry_after(exc: BaseException) -> float | None:
    value = exc.details.get("retry_after") if isinstance(exc, BlobsealError) else None
    return float(value) if isinstance(value, int | float) else None
