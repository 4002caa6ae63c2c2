"""Uploading over HTTP without plaintext at rest: a request body encrypted on the fly, safe to retry.

``POST /api/files`` streams its body through the same seal step as the ingest path: the file
gets its own key, a ``files`` row and a protected blob in the same format; no byte of
plaintext is written to storage (there is no ingest blob). Order:

1. a new file id and a pending row whose attempt is ``upload:<random>`` (so the reconciler
   knows no ingest blob will come: a dead upload's leftovers are dropped); with an
   ``Idempotency-Key``, the key's row names this attempt in the same commit;
2. the file's key;
3. the body, re-cut into transfer chunks, sealed into staged blocks, committed at the end; the
   row is touched every minute meanwhile (a live upload never looks abandoned); the body's
   SHA-256 is taken on the way;
4. the row marked encrypted, and (with a key) the request's fingerprint and this answer kept, in
   one commit.

Every commit's outcome is known before anything is reported or cleaned up (``Database.resolved``:
a lost acknowledgement is settled by a re-read). A body over ``UPLOAD_MAX_MB``, a client that goes
away, or any failure leaves nothing (``shared.attempts``: what no committed row refers to goes).
When the database cannot say whether a commit happened (``CommitUnknownError``: the client gets 503),
nothing is removed then: the upload keeps asking in the background (``SETTLE_SECONDS``) and cleans
up once the database answers, if the file was not made; a retry with the same key gets the file if
it was; the reconciler settles whatever a stopped worker left.

**Idempotency-Key** (draft-ietf-httpapi-idempotency-key-header): per caller, a key names one
upload for ``IDEMPOTENCY_KEY_HOURS`` (24) from its first use. Again with the same name, type and
body: the first answer, the same file (nothing stored twice). With another request: 422. While
the first is still running: 409 (retry later); a first attempt that died (its row untouched for
``ATTEMPT_STALE_SECONDS``, or removed) is taken over by the retry, and can then never make a file
(its mark needs the key's row to still name it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from shared.attempts import Attempts
from shared.blobs import Container
from shared.clock import Clock, utcnow
from shared.db.files import FileRecord, FileRepository
from shared.db.pool import Database
from shared.db.upload_requests import UploadRequest, UploadRequestRepository
from shared.errors import (
    BlobsealError,
    CommitUnknownError,
    IdempotencyKeyReusedError,
    RequestInProgressError,
    UnknownFileError,
    UploadTooLargeError,
)
from shared.ingest import attempt_tag, protected_blob_name
from shared.keys import FileKey, FileKeyService
from shared.metrics import BYTES_PROCESSED, FILE_SIZE, OPERATIONS
from shared.transfer import Transfer, seal
from shared.views import file_view

__all__ = ["ATTEMPT_STALE_SECONDS", "IDEMPOTENCY_KEY_HOURS", "UPLOAD_ATTEMPT_PREFIX", "IdempotencyKey", "UploadSpec",
           "Uploaded", "Uploader"]

log = logging.getLogger(__name__)

UPLOAD_ATTEMPT_PREFIX = "upload:"
HEARTBEAT_SECONDS = 60.0
SETTLE_SECONDS = 300.0  # how long an upload whose commit's outcome is unknown keeps asking (then: the reconciler)
ATTEMPT_STALE_SECONDS = 150.0  # an upload whose row was not touched this long is dead (it touches it every minute)
IDEMPOTENCY_KEY_HOURS = 24  # how long an Idempotency-Key names its upload (from its first use)


@dataclass(frozen=True)
class UploadSpec:
    name: str
    content_type: str
    declared_size: int | None = None  # Content-Length, when the client sent one


@dataclass(frozen=True)
class IdempotencyKey:
    """A client's ``Idempotency-Key``, scoped to the caller who sent it."""

    caller: str
    key: str


@dataclass(frozen=True)
class Uploaded:
    """The answer to an upload: the file's view, and whether it is the first answer given again."""

    view: dict[str, Any]
    file_id: uuid.UUID
    size: int | None
    replayed: bool = False


@dataclass
class _Fingerprint:
    """The request as a retry must repeat it: name, type and the body's SHA-256 (taken as it streams)."""

    spec: UploadSpec
    body: Any = field(default_factory=hashlib.sha256)

    def hexdigest(self) -> str:
        whole = hashlib.sha256()
        for part in (self.spec.name, self.spec.content_type, self.body.hexdigest()):
            whole.update(part.encode() + b"\0")
        return whole.hexdigest()


class Uploader:
    def __init__(self, *, db: Database, keys: FileKeyService, protected: Container, transfer: Transfer,
                 max_bytes: int, clock: Clock = utcnow) -> None:
        self._db, self._keys, self._protected = db, keys, protected
        self._transfer, self._max, self._clock = transfer, max_bytes, clock
        self._attempts = Attempts(db=db, keys=keys, protected=protected)
        self._settling: set[asyncio.Task[None]] = set()  # uploads whose outcome is asked about in the background

    async def settled(self) -> None:
        """Wait until every upload whose outcome was unknown is settled (or gave up asking)."""
        await asyncio.gather(*self._settling, return_exceptions=True)

    async def close(self) -> None:
        """Stop asking about unknown outcomes (the reconciler settles them)."""
        for task in list(self._settling):
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)

    async def upload(self, spec: UploadSpec, body: AsyncIterator[bytes], *,
                     idempotency: IdempotencyKey | None = None) -> Uploaded:
        if spec.declared_size is not None and spec.declared_size > self._max:
            raise self._too_large()
        file_id, attempt = uuid.uuid4(), f"{UPLOAD_ATTEMPT_PREFIX}{uuid.uuid4().hex}"
        try:
            earlier = await self._register(spec, file_id, attempt, idempotency)
        except CommitUnknownError:
            self._settle_later(file_id, attempt, "")
            raise
        if earlier is not None:
            return await self._again(earlier, spec, body)
        fingerprint, blob_name = _Fingerprint(spec), ""
        try:
            key = await self._keys.create_key(file_id)
            blob_name = protected_blob_name(file_id, key.key_reference, attempt=attempt_tag())
            sealed = await seal(self._bounded(body, file_id, attempt, fingerprint), self._protected, blob_name,
                                key=await self._keys.key_of(key.key_reference), file_id=file_id,
                                key_reference=key.key_reference, transfer=self._transfer,
                                size_hint=spec.declared_size)

            async def mark(conn: Any) -> tuple[FileRecord, dict[str, Any]]:
                return await self._mark(conn, spec, file_id, attempt, key, blob_name, sealed.size, sealed.etag,
                                        sealed.block_size, idempotency, fingerprint.hexdigest())

            record, view = await self._db.resolved(
                "mark_encrypted", mark, committed=lambda conn: FileRepository(conn).points_at(file_id, blob_name))
        except BaseException as exc:
            OPERATIONS.labels("upload", type(exc).__name__).inc()
            await asyncio.shield(self._leave_nothing(file_id, attempt, blob_name, exc))
            raise
        OPERATIONS.labels("upload", "encrypted").inc()
        BYTES_PROCESSED.labels("encrypt").inc(sealed.size)
        FILE_SIZE.observe(sealed.size)
        log.info("uploaded and encrypted file %s (%d bytes)", file_id, sealed.size)
        return Uploaded(view, record.file_id, record.size)

    # --- steps ---------------------------------------------------------------------------------

    async def _register(self, spec: UploadSpec, file_id: uuid.UUID, attempt: str,
                        idempotency: IdempotencyKey | None) -> UploadRequest | None:
        """The pending row of this attempt (and, with a key, the key naming it), in one commit; or the
        earlier request the key names, when that one answered or is still running."""
        ttl = timedelta(hours=IDEMPOTENCY_KEY_HOURS).total_seconds()

        async def register(conn: Any) -> UploadRequest | None:
            if idempotency is not None:
                requests = UploadRequestRepository(conn)
                found = await requests.claim(idempotency.caller, idempotency.key, attempt=attempt, file_id=file_id,
                                             ttl_seconds=ttl)
                if found.attempt != attempt:
                    if found.fingerprint is not None or await FileRepository(conn).holds_attempt(
                            found.file_id, found.attempt, fresh_seconds=ATTEMPT_STALE_SECONDS):
                        return found  # answered (the same answer again), or still running (409)
                    if not await requests.take_over(idempotency.caller, idempotency.key, dead_attempt=found.attempt,
                                                    attempt=attempt, file_id=file_id, ttl_seconds=ttl):
                        return await requests.get(idempotency.caller, idempotency.key) or found
                    log.info("an upload with this Idempotency-Key died (file %s); a retry takes over", found.file_id)
            await FileRepository(conn).register(file_id, source_name=spec.name, source_etag=attempt,
                                                name=_display(spec.name), content_type=spec.content_type)
            return None

        return await self._db.resolved("register_upload", register,
                                       committed=lambda conn: FileRepository(conn).holds_attempt(file_id, attempt))

    async def _mark(self, conn: Any, spec: UploadSpec, file_id: uuid.UUID, attempt: str, key: FileKey,
                    blob_name: str, size: int, etag: str, block_size: int, idempotency: IdempotencyKey | None,
                    fingerprint: str) -> tuple[FileRecord, dict[str, Any]]:
        """The row marked encrypted, and the answer kept for the key's retries: one commit."""
        files = FileRepository(conn)
        marked, _ = await files.mark_encrypted(file_id, source_name=spec.name, source_etag=attempt,
                                               name=_display(spec.name), content_type=spec.content_type, size=size,
                                               key_reference=key.key_reference, protected_blob=blob_name,
                                               protected_etag=etag, block_size=block_size, now=self._clock())
        record = await files.get(file_id)
        if not marked or record is None:  # the row was dropped meanwhile (deleted, or abandoned as dead)
            raise UnknownFileError("the upload's row is gone (deleted, or dropped as abandoned)", operation="upload",
                                   details={"file_id": str(file_id)})
        view = file_view(record, key.expires_at) | {"key_custody": key.custody}
        if idempotency is not None and not await UploadRequestRepository(conn).answer(
                idempotency.caller, idempotency.key, attempt=attempt, fingerprint=fingerprint, response=view):
            raise RequestInProgressError("a retry with this Idempotency-Key took the request over; this attempt "
                                         "stops", operation="upload", details={"file_id": str(file_id)})
        return record, view

    async def _again(self, earlier: UploadRequest, spec: UploadSpec, body: AsyncIterator[bytes]) -> Uploaded:
        """The first answer again, for the same request; 409 while the first still runs; 422 for another."""
        if earlier.fingerprint is None or earlier.response is None:
            raise RequestInProgressError("a request with this Idempotency-Key is still being served; retry after "
                                         "it ends", operation="upload", details={"file_id": str(earlier.file_id)})
        fingerprint = _Fingerprint(spec)
        async for _ in self._bounded(body, None, None, fingerprint):
            pass
        if fingerprint.hexdigest() != earlier.fingerprint:
            raise IdempotencyKeyReusedError("this Idempotency-Key was used for another request (name, type or "
                                            "body differ)", operation="upload",
                                            details={"file_id": str(earlier.file_id)})
        log.info("an upload repeated with its Idempotency-Key: the first answer again (file %s)", earlier.file_id)
        return Uploaded(earlier.response, earlier.file_id, earlier.response.get("size"), replayed=True)

    async def _bounded(self, body: AsyncIterator[bytes], file_id: uuid.UUID | None, attempt: str | None,
                       fingerprint: _Fingerprint) -> AsyncIterator[bytes]:
        """The body in transfer chunks, refused past the size limit, hashed; the row touched now and then."""
        buffer, total, touched = bytearray(), 0, time.monotonic()
        async for piece in body:
            total += len(piece)
            if total > self._max:
                raise self._too_large()
            fingerprint.body.update(piece)
            buffer += piece
            if len(buffer) >= self._transfer.chunk_size:
                yield bytes(buffer)
                buffer.clear()
            if file_id is not None and attempt is not None and time.monotonic() - touched > HEARTBEAT_SECONDS:
                touched = time.monotonic()
                async with self._db.connection("upload_heartbeat") as conn:
                    await FileRepository(conn).touch_attempt(file_id, attempt)
        if buffer:
            yield bytes(buffer)

    async def _leave_nothing(self, file_id: uuid.UUID, attempt: str, blob_name: str, exc: BaseException) -> None:
        """Undo an upload that did not finish (``shared.attempts``: only what no committed row refers to); when
        the database could not say whether it finished, nothing (the reconciler settles it)."""
        if isinstance(exc, CommitUnknownError):
            log.warning("file %s: the database cannot say whether the upload's commit happened; nothing is cleaned "
                        "up now (asked again in the background; a retry with its Idempotency-Key gets the file if "
                        "it was made)", file_id)
            self._settle_later(file_id, attempt, blob_name)
            return
        try:
            outcome = await self._attempts.abandon(file_id, attempt, blob_name=blob_name or None)
        except BlobsealError as cleanup:
            log.warning("file %s: cleaning up an unfinished upload failed (the reconciler will): %s", file_id,
                        cleanup)
            return
        if outcome == "finished":
            log.warning("file %s: the upload failed after its mark committed (%s); the file is kept",
                        file_id, type(exc).__name__)

    def _settle_later(self, file_id: uuid.UUID, attempt: str, blob_name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(file_id, attempt, blob_name))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, file_id: uuid.UUID, attempt: str, blob_name: str) -> None:
        """Ask until the database answers, then clean up what the outcome left (nothing, if the file was made:
        ``Attempts.abandon`` waits for the row and re-reads it)."""
        deadline, delay = time.monotonic() + SETTLE_SECONDS, 1.0
        while True:
            await asyncio.sleep(delay)
            try:
                outcome = await self._attempts.abandon(file_id, attempt, blob_name=blob_name or None)
            except BlobsealError as exc:
                if not exc.transient or time.monotonic() + delay > deadline:
                    log.warning("file %s: the upload's outcome is still unsettled (the reconciler settles it): %s",
                                file_id, exc)
                    return
                delay = min(delay * 2, 30.0)
                continue
            log.info("file %s: the upload's unknown outcome settled: %s", file_id,
                     "it was made" if outcome == "finished" else "it was not made; its leftovers removed")
            return

    def _too_large(self) -> UploadTooLargeError:
        return UploadTooLargeError(f"the body is larger than UPLOAD_MAX_MB ({self._max // (1024 * 1024)} MiB)",
                                   operation="upload", details={"limit": self._max})


def _display(name: str) -> str:
    return name.rsplit("/", 1)[-1]
