"""The file service: what the functions and the CLI call (one method per use case).

It validates identifiers (file ids), maps the database row to the metadata view, and
delegates the work: ``Ingestor`` (encrypt an upload), ``Reader`` (verified streaming
read), ``Rotator`` (lazy rotation). Health checks every dependency. Answers are neutral (a
file record, a verified body): HTTP lives in ``shared.http_api``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from shared.audit import SYSTEM, Access, AuditLog
from shared.blobs import Container
from shared.clock import Clock, utcnow
from shared.custody import IntermediateKeys
from shared.db.failures import FailureRecord, FailureRepository
from shared.db.file_keys import Custody
from shared.db.files import FileRecord, FileRepository
from shared.db.pool import Database
from shared.download import Reader, Span
from shared.erase import Eraser
from shared.errors import BlobsealError, FileNotReadyError, InvalidRequestError, UnknownFileError
from shared.ingest import Ingestor, IngestOutcome
from shared.keys import FileKeyService, MigrationReport
from shared.reconcile import LAST_RUN_STATE, OLDEST_PLAINTEXT_STATE, Reconciler, ReconcileReport
from shared.rotation import RotationReport, Rotator
from shared.upload import Uploader, UploadRequest

__all__ = ["FileService", "parse_file_id"]

HEALTH_TIMEOUT_SECONDS = 5.0
MAX_BLOB_NAME = 1024

Probe = Callable[[], Awaitable[None]]


def parse_file_id(text: str) -> uuid.UUID:
    try:
        value = uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        raise InvalidRequestError("file id must be a UUID", operation="parse_file_id") from None
    if str(value) != text.lower():
        raise InvalidRequestError("file id must be a UUID in canonical form", operation="parse_file_id")
    return value


class FileService:
    def __init__(self, *, db: Database, keys: FileKeyService, intermediates: IntermediateKeys, protected: Container,
                 reader: Reader, eraser: Eraser, ingestor: Ingestor, rotator: Rotator, reconciler: Reconciler,
                 uploader: Uploader, audit: AuditLog, probes: Mapping[str, Probe],
                 plaintext_alert: timedelta = timedelta(minutes=30), clock: Clock = utcnow) -> None:
        self._db, self._keys, self._intermediates, self._protected = db, keys, intermediates, protected
        self._eraser = eraser
        self._reader = reader
        self._ingestor, self.rotator, self._reconciler = ingestor, rotator, reconciler
        self._uploader, self.audit = uploader, audit
        self._probes = dict(probes)
        self._plaintext_alert, self._clock = plaintext_alert, clock

    async def encrypt_ingest_blob(self, name: str) -> IngestOutcome:
        return await self._ingestor.encrypt(name)

    async def describe(self, file_id_text: str) -> dict[str, Any]:
        return await self._view(await self._record(parse_file_id(file_id_text)))

    async def find_by_name(self, name: str | None) -> dict[str, Any]:
        if not name:
            raise InvalidRequestError("query parameter 'name' is required", operation="find_file")
        _check_name(name)  # PostgreSQL text cannot hold NUL; no blob name is longer
        async with self._db.connection("find_file") as conn:
            record = await FileRepository(conn).by_source_name(name)
        if record is None:
            raise UnknownFileError("no file was uploaded under this name", operation="find_file")
        return await self._view(record)

    async def encrypted_file(self, file_id_text: str) -> FileRecord:
        """The record of a file that can be read (``FileNotReadyError`` while it is not encrypted)."""
        record = await self._record(parse_file_id(file_id_text))
        if record.status == "deleted":
            raise UnknownFileError("the file was deleted", operation="download",
                                   details={"file_id": str(record.file_id)})
        if record.status != "encrypted" or record.size is None or record.key_reference is None:
            raise FileNotReadyError("file is not encrypted yet", operation="download",
                                    details={"file_id": str(record.file_id)})
        return record

    async def open(self, record: FileRecord, span: Span | None) -> AsyncIterator[memoryview]:
        """The verified plaintext of ``span`` (None: the whole file), checked before it starts."""
        assert record.key_reference is not None
        key = await self._keys.key_of(record.key_reference)  # the file's own current key: no second lookup
        return await self._reader.open(record, key, span)

    async def rotate_file(self, file_id_text: str, access: Access = SYSTEM) -> str:
        file_id = parse_file_id(file_id_text)
        try:
            reference = await self.rotator.rotate_file(file_id)
        except BlobsealError as exc:
            await self.audit.record("rotate", access, file_id=file_id, outcome=type(exc).__name__, required=False)
            raise
        assert reference is not None  # unconditional rotation always yields a new key
        await self.audit.record("rotate", access, file_id=file_id, required=False)
        return reference

    async def release_rotation(self, file_id_text: str) -> bool:
        """Give up a rotation claim whoever holds it (an operator's way out of a stuck one)."""
        return await self._keys.force_release(parse_file_id(file_id_text))

    async def list_files(self, *, prefix: str = "", status: str | None = None, limit: int = 100,
                         cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of files by upload name; the cursor of the next page, or None at the end."""
        if status not in (None, "pending", "encrypted", "deleted"):
            raise InvalidRequestError("status must be pending, encrypted or deleted", operation="list_files")
        if not 1 <= limit <= 1000:
            raise InvalidRequestError("limit must be from 1 to 1000", operation="list_files")
        _check_name(prefix, allow_empty=True)
        async with self._db.connection("list_files") as conn:
            page = await FileRepository(conn).listed(prefix=prefix, status=status, after=_cursor(cursor),
                                                     limit=limit + 1)
        views = [_view(record, expires) for record, expires in page[:limit]]
        last = page[limit - 1][0] if len(page) > limit else None
        return views, (_next_cursor(last.source_name, last.file_id) if last else None)

    async def delete(self, file_id_text: str, access: Access) -> dict[str, Any]:
        """Erase a file (``shared.erase``): its plaintext in ingest, its blobs and every key go; the row stays
        as a tombstone (who, when).

        Idempotent: a deletion that stopped half way is finished by calling it again (or by the
        reconciler). After it no key exists that could open any copy of the file.
        """
        file_id = parse_file_id(file_id_text)
        await self._record(file_id)
        async with self._db.transaction("delete_file") as conn:
            files = FileRepository(conn)
            record = await files.mark_deleted(file_id, by=access.caller, now=self._clock())
            await files.forget_retired_of(file_id)  # in the same commit: no row outlives the blob it names
        assert record is not None
        await self._eraser.erase(record)
        await self.audit.record("delete", access, file_id=file_id, required=False)
        return _view(record, None)

    async def upload(self, request: UploadRequest, body: AsyncIterator[bytes], access: Access) -> dict[str, Any]:
        try:
            record = await self._uploader.upload(request, body)
        except BlobsealError as exc:
            await self.audit.record("upload", access, outcome=type(exc).__name__, required=False)
            raise
        await self.audit.record("upload", access, file_id=record.file_id, bytes_sent=record.size, required=False)
        return await self._view(record)

    async def expire_key(self, file_id_text: str) -> str:
        """Make the file's key due now (the next rotation run rotates it); returns the new expiry."""
        expires = (await self._keys.expire(parse_file_id(file_id_text))).expires_at
        assert expires is not None
        return expires.isoformat()

    async def rotate_due(self, *, limit: int | None = None, budget_seconds: float | None = None) -> RotationReport:
        return await self.rotator.rotate_due(limit=limit, budget_seconds=budget_seconds)

    async def reconcile(self) -> ReconcileReport:
        return await self._reconciler.run()

    async def migrate_keys(self, to: Custody, access: Access = SYSTEM, *, batch: int = 100) -> dict[str, Any]:
        """Move every readable key into custody ``to`` (no blob is touched); resumable, idempotent."""
        total, after = MigrationReport(), 0
        while True:
            report, last = await self._keys.migrate_keys(to, batch, after=after)
            total.moved, total.raced, total.refused = (total.moved + report.moved, total.raced + report.raced,
                                                       total.refused + report.refused)
            if last == after:
                outcome = f"ok: {total.moved} moved" + (f", {total.refused} refused" if total.refused else "")
                await self.audit.record(f"migrate_keys_to_{to}", access, outcome=outcome, required=False)
                return {"to": to, "moved": total.moved, "raced": total.raced, "refused": total.refused}
            after = last

    async def rotate_kek(self, access: Access = SYSTEM, *, rewrap_only: bool = False) -> dict[str, Any]:
        """A new KEK version and every intermediate key rewrapped with it (or only the rewrap, to resume)."""
        kek = None if rewrap_only else await self._intermediates.kek.create()
        rewrapped = 0
        while done := await self._intermediates.rewrap(500):
            rewrapped += done
        await self.audit.record("rotate_kek", access, outcome=f"ok: {rewrapped} rewrapped", required=False)
        return {"kek_reference": kek, "rewrapped": rewrapped,
                "kek_versions_in_use": await self._intermediates.kek_usage()}

    async def attest_intermediates(self, access: Access = SYSTEM) -> dict[str, Any]:
        """Sign the intermediate key rows made before signatures existed (trust on first use: run once, right
        after upgrading, while the database is trusted; docs/THREATS.md)."""
        attested = 0
        while done := await self._intermediates.attest(500):
            attested += done
        await self.audit.record("attest_intermediates", access, outcome=f"ok: {attested} signed", required=False)
        return {"attested": attested}

    async def failed_uploads(self, limit: int = 1000) -> list[FailureRecord]:
        async with self._db.connection("failed_uploads") as conn:
            return await FailureRepository(conn).listed(limit)

    async def replay(self, name: str) -> IngestOutcome:
        """Ingest an upload again now, whatever its recorded failure said (an operator fixed the cause)."""
        return await self._ingestor.encrypt(name)

    async def health(self) -> dict[str, Any]:
        """``ok`` or the failing error type, per dependency (never a message with secrets); whether an
        upload has waited in plaintext for longer than the alert threshold."""
        results = await asyncio.gather(*(asyncio.wait_for(probe(), HEALTH_TIMEOUT_SECONDS)
                                         for probe in self._probes.values()), return_exceptions=True)
        checks = {name: "ok" if not isinstance(r, BaseException) else type(r).__name__
                  for name, r in zip(self._probes, results, strict=True)}
        report: dict[str, Any] = {"dependencies": checks}
        if checks.get("database") == "ok":
            report.update(await self._plaintext_report())
        return report

    async def _plaintext_report(self) -> dict[str, Any]:
        """What the last reconciler run saw in ``ingest`` (health must not list a container itself)."""
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS), self._db.connection("health") as conn:
                repo = FailureRepository(conn)
                oldest, last_run = await repo.state(OLDEST_PLAINTEXT_STATE), await repo.state(LAST_RUN_STATE)
        except (BlobsealError, TimeoutError):
            return {}
        age = (self._clock() - datetime.fromisoformat(oldest)).total_seconds() if oldest else 0.0
        return {"oldest_plaintext_seconds": round(age), "reconciled_at": last_run or None,
                "degraded": age > self._plaintext_alert.total_seconds()}

    async def _record(self, file_id: uuid.UUID) -> FileRecord:
        async with self._db.connection("get_file") as conn:
            record = await FileRepository(conn).get(file_id)
        if record is None:
            raise UnknownFileError("no such file", operation="get_file", details={"file_id": str(file_id)})
        return record

    async def _view(self, record: FileRecord) -> dict[str, Any]:
        key = await self._keys.active_key(record.file_id) if record.status == "encrypted" else None
        return _view(record, key.expires_at if key else None) | {"key_custody": key.custody if key else None}


def _view(record: FileRecord, key_expires_at: datetime | None) -> dict[str, Any]:
    """The metadata a client may see: never key material."""
    view = {
        "file_id": str(record.file_id),
        "name": record.name,
        "source_name": record.source_name,
        "size": record.size,
        "content_type": record.content_type,
        "status": record.status,
        "created_at": record.created_at.isoformat(),
        "encrypted_at": record.encrypted_at.isoformat() if record.encrypted_at else None,
        "key_reference": record.key_reference,
        "key_expires_at": key_expires_at.isoformat() if key_expires_at else None,
    }
    if record.status == "deleted":
        view.update(deleted_at=record.deleted_at.isoformat() if record.deleted_at else None,
                    deleted_by=record.deleted_by)
    return view


def _check_name(name: str, *, allow_empty: bool = False) -> None:
    if (not name and not allow_empty) or "\x00" in name or len(name) > MAX_BLOB_NAME:
        raise InvalidRequestError(f"a name is a blob name: no NUL, at most {MAX_BLOB_NAME} characters",
                                  operation="find_file")


def _next_cursor(name: str, file_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(json.dumps([name, str(file_id)]).encode()).decode()


def _cursor(text: str | None) -> tuple[str, uuid.UUID] | None:
    if not text:
        return None
    try:
        name, file_id = json.loads(base64.urlsafe_b64decode(text.encode()))
        return str(name), uuid.UUID(file_id)
    except (ValueError, TypeError):
        raise InvalidRequestError("malformed cursor (pass back next_cursor as it came)", operation="list_files") \
            from None
