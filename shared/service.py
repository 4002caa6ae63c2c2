"""The file service: what callers do with files (one method per use case), through the access boundary.

Each use case takes the ``Caller`` (``shared.identity``) and runs inside the ``Guard``
(``shared.access``): the role it needs is checked, and its rows go to the access log there and nowhere
else. It validates identifiers (file ids, names), maps the database row to the metadata view, and
delegates the work: ``Ingestor`` (encrypt an upload), ``Reader`` (verified streaming read),
``Uploader``, ``Eraser``. Answers are neutral (a file record, a verified body): HTTP lives in
``shared.http_api``; operators' tasks in ``shared.maintenance``; health in ``shared.health``.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.access import Guard
from shared.clock import Clock, utcnow
from shared.db.access_log import LoggedRow
from shared.db.files import FileRecord, FileRepository
from shared.db.pool import Database
from shared.download import Reader, Span
from shared.erase import Eraser
from shared.errors import FileNotReadyError, InvalidRequestError, UnknownFileError
from shared.identity import Caller
from shared.ingest import Ingestor, IngestOutcome, guess_type
from shared.keys import FileKeyService
from shared.names import check_name, check_prefix
from shared.upload import IdempotencyKey, Uploaded, Uploader, UploadSpec
from shared.views import file_view

__all__ = ["Download", "FileService", "file_id_or_none", "parse_file_id"]

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def parse_file_id(text: str) -> uuid.UUID:
    try:
        value = uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        raise InvalidRequestError("file id must be a UUID", operation="parse_file_id") from None
    if str(value) != text.lower():
        raise InvalidRequestError("file id must be a UUID in canonical form", operation="parse_file_id")
    return value


@dataclass(frozen=True)
class Download:
    """A checked file, the span asked for (None: all of it), and its verified body (None for a HEAD)."""

    record: FileRecord
    span: Span | None
    body: AsyncIterator[memoryview] | None


class FileService:
    def __init__(self, *, db: Database, keys: FileKeyService, reader: Reader, eraser: Eraser, ingestor: Ingestor,
                 uploader: Uploader, guard: Guard, clock: Clock = utcnow) -> None:
        self._db, self._keys, self._reader, self._eraser = db, keys, reader, eraser
        self._ingestor, self._uploader, self.guard, self._clock = ingestor, uploader, guard, clock

    async def close(self) -> None:
        await self._uploader.close()

    async def settled(self) -> None:
        """Wait until uploads whose commit's outcome was unknown are settled (``shared.upload``)."""
        await self._uploader.settled()

    async def encrypt_ingest_blob(self, name: str) -> IngestOutcome:
        """What the blob trigger delivers (the app's own work: no caller, no access row)."""
        return await self._ingestor.encrypt(name)

    # --- reads ---------------------------------------------------------------------------------

    async def download(self, caller: Caller, file_id_text: str, choose: Callable[[FileRecord], Span | None], *,
                       head: bool = False) -> Download:
        """The file's record, the span ``choose`` picks for it, and (not for ``head``) the verified body,
        checked before it starts; the access is recorded before anything is sent, a cut one again."""
        operation = "head" if head else "download"
        async with self.guard.read(operation, caller, file_id=file_id_or_none(file_id_text)) as receipt:
            record = await self.encrypted_file(file_id_text)
            assert record.size is not None
            span = choose(record)
            if head:
                return Download(record, span, None)
            body = await self.open(record, span)
            receipt.span = _served_span(span, record.size)
            receipt.bytes_sent = span.length if span else record.size
        return Download(record, span, self.guard.streamed(body, operation, caller, receipt, record_end=False))

    async def describe(self, caller: Caller, file_id_text: str) -> dict[str, Any]:
        async with self.guard.read("metadata", caller, file_id=file_id_or_none(file_id_text)):
            return await self._view(await self._record(parse_file_id(file_id_text)))

    async def find_by_name(self, caller: Caller, name: str | None) -> dict[str, Any]:
        async with self.guard.read("lookup", caller) as receipt:
            if not name:
                raise InvalidRequestError("query parameter 'name' is required", operation="find_file")
            check_name(name, "find_file")
            async with self._db.connection("find_file") as conn:
                record = await FileRepository(conn).by_source_name(name)
            if record is None:
                raise UnknownFileError("no file was uploaded under this name", operation="find_file")
            receipt.file_id = record.file_id
            return await self._view(record)

    async def list_files(self, caller: Caller, *, prefix: str = "", status: str | None = None,
                         limit: int | str | None = None,
                         cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of files by upload name; the cursor of the next page, or None at the end."""
        async with self.guard.read("list", caller):
            if status not in (None, "pending", "encrypted", "deleted"):
                raise InvalidRequestError("status must be pending, encrypted or deleted", operation="list_files")
            count = _bounded(limit, 100, 1000, "list_files")
            check_prefix(prefix, "list_files")
            async with self._db.connection("list_files") as conn:
                page = await FileRepository(conn).listed(prefix=prefix, status=status, after=_cursor(cursor),
                                                         limit=count + 1)
            views = [file_view(record, expires) for record, expires in page[:count]]
            last = page[count - 1][0] if len(page) > count else None
            return views, (_next_cursor(last.source_name, last.file_id) if last else None)

    async def access_log(self, caller: Caller, *, file_id: str | None = None, since: str | datetime | None = None,
                         who: str | None = None, limit: int | str | None = None) -> list[LoggedRow]:
        """The access log (the ``audit`` role), newest first; reading it is itself recorded."""
        async with self.guard.read("audit_log", caller, "audit", file_id=file_id_or_none(file_id or "")):
            wanted = parse_file_id(file_id) if file_id is not None else None
            count = _bounded(limit, 1000, 10_000, "audit_log")
            return await self.guard.audit.query(file_id=wanted, since=_moment(since), caller=who, limit=count)

    # --- changes ---------------------------------------------------------------------------------

    async def upload(self, caller: Caller, body: AsyncIterator[bytes], *, name: str, content_type: str | None = None,
                     declared_size: int | str | None = None, idempotency_key: str | None = None) -> Uploaded:
        """A new file from ``body`` (the ``write`` role), encrypted as it arrives. With ``idempotency_key`` (the
        client's ``Idempotency-Key``, validated by the caller) a retry of the same request gets the first answer
        (``replayed``) and the same file; see ``shared.upload``."""
        async with self.guard.change("upload", caller, "write") as receipt:
            if not name:
                raise InvalidRequestError("the upload needs a name (X-File-Name)", operation="upload")
            check_name(name, "upload")
            size = None if declared_size in (None, "") else _bounded(declared_size, 0, None, "upload",
                                                                      "Content-Length")
            spec = UploadSpec(name=name, content_type=guess_type(content_type, name), declared_size=size)
            if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
                raise InvalidRequestError("Idempotency-Key must be 1 to 255 visible ASCII characters",
                                          operation="upload")
            key = IdempotencyKey(caller.name, idempotency_key) if idempotency_key is not None else None
            uploaded = await self._uploader.upload(spec, body, idempotency=key)
            receipt.file_id, receipt.bytes_sent = uploaded.file_id, uploaded.size
            if uploaded.replayed:
                receipt.outcome = "ok: the first answer again (Idempotency-Key)"
            return uploaded

    async def delete(self, caller: Caller, file_id_text: str, *,
                     precondition: Callable[[FileRecord], None] | None = None) -> dict[str, Any]:
        """Erase a file (``shared.erase``): its plaintext in ingest, its blobs and every key go; the row stays
        as a tombstone (who, when). Idempotent: a deletion that stopped half way is finished by calling it
        again (or by the reconciler), and a deleted file deleted again answers the same tombstone. After it no
        key exists that could open any copy of the file. ``precondition`` sees the file's record first and may
        refuse (HTTP ``If-Match``)."""
        file_id = file_id_or_none(file_id_text)
        async with self.guard.change("delete", caller, "erase", file_id=file_id):
            file_id = parse_file_id(file_id_text)
            current = await self._record(file_id)
            if precondition is not None and current.status != "deleted":
                precondition(current)
            record = await self._eraser.delete(file_id, by=caller.name)
            return file_view(record, None)

    async def decrypt_file(self, caller: Caller, file_id_text: str) -> Download:
        """A whole file's plaintext for an operator (recovery): intent before, outcome (bytes) after it was read."""
        file_id = file_id_or_none(file_id_text)
        async with self.guard.change("decrypt_file", caller, "operate", file_id=file_id) as receipt:
            record = await self.encrypted_file(file_id_text)
            body = await self.open(record, None)
            receipt.deferred = True  # the outcome is written when the body has been read (or cut)
        return Download(record, None, self.guard.streamed(body, "decrypt_file", caller, receipt, record_end=True))

    # --- the steps the use cases share (and tests use to look at what is stored) ------------------

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

    async def _record(self, file_id: uuid.UUID) -> FileRecord:
        async with self._db.connection("get_file") as conn:
            record = await FileRepository(conn).get(file_id)
        if record is None:
            raise UnknownFileError("no such file", operation="get_file", details={"file_id": str(file_id)})
        return record

    async def _view(self, record: FileRecord) -> dict[str, Any]:
        key = await self._keys.active_key(record.file_id) if record.status == "encrypted" else None
        return file_view(record, key.expires_at if key else None) | {"key_custody": key.custody if key else None}


def file_id_or_none(text: str) -> uuid.UUID | None:
    """The file id for the access row, if the text is one (a malformed id is refused inside, and recorded)."""
    try:
        return parse_file_id(text)
    except InvalidRequestError:
        return None


def _bounded(value: int | str | None, default: int | None, most: int | None, operation: str,
             what: str = "limit") -> int:
    """A count from a query or header: digits only, from 1 (0 for a size) to ``most``."""
    if value is None:
        assert default is not None
        return default
    text = str(value)
    if not text.isdigit() or len(text) > 19:
        raise InvalidRequestError(f"{what} must be a whole number", operation=operation)
    number, least = int(text), (0 if most is None else 1)
    if number < least or (most is not None and number > most):
        raise InvalidRequestError(f"{what} must be from {least} to {most}", operation=operation)
    return number


def _moment(value: str | datetime | None) -> datetime | None:
    """An ISO 8601 time (UTC when it names no zone)."""
    if value is None or isinstance(value, datetime):
        return value
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError("since must be an ISO 8601 time", operation="audit_log") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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


def _served_span(span: Span | None, size: int) -> tuple[int, int] | None:
    """The bytes a download sends, first and last; None for an empty file (no byte to name)."""
    if span is not None:
        return span.start, span.end
    return (0, size - 1) if size else None
