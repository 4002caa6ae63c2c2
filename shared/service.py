"""The file service: what the functions and the CLI call (one method per use case).

It validates what users send (file ids, Range headers), maps the database row to the
metadata view, and delegates the work: ``Ingestor`` (encrypt an upload), ``open_body``
(verified streaming download), ``Rotator`` (lazy rotation). Health checks every dependency.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from shared.db.files import FileRecord, FileRepository
from shared.deps import Deps
from shared.download import Download, open_body, response_headers
from shared.errors import FileNotReadyError, InvalidRequestError, UnknownFileError
from shared.http_range import parse_range
from shared.ingest import Ingestor, IngestOutcome
from shared.rotation import RotationReport, Rotator

__all__ = ["FileService", "parse_file_id"]

HEALTH_TIMEOUT_SECONDS = 5.0


def parse_file_id(text: str) -> uuid.UUID:
    try:
        value = uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        raise InvalidRequestError("file id must be a UUID", operation="parse_file_id") from None
    if str(value) != text.lower():
        raise InvalidRequestError("file id must be a UUID in canonical form", operation="parse_file_id")
    return value


class FileService:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self._ingestor = Ingestor(deps)
        self.rotator = Rotator(deps)

    async def encrypt_ingest_blob(self, name: str) -> IngestOutcome:
        return await self._ingestor.encrypt(name)

    async def describe(self, file_id_text: str) -> dict[str, Any]:
        return await self._view(await self._record(parse_file_id(file_id_text)))

    async def find_by_name(self, name: str | None) -> dict[str, Any]:
        if not name:
            raise InvalidRequestError("query parameter 'name' is required", operation="find_file")
        async with self.deps.db.connection("find_file") as conn:
            record = await FileRepository(conn).by_source_name(name)
        if record is None:
            raise UnknownFileError("no file was uploaded under this name", operation="find_file")
        return await self._view(record)

    async def open_download(self, file_id_text: str, range_header: str | None, *, head: bool = False) -> Download:
        record = await self._record(parse_file_id(file_id_text))
        if record.status != "encrypted" or record.size is None or record.key_reference is None:
            raise FileNotReadyError("file is not encrypted yet", operation="download",
                                    details={"file_id": str(record.file_id)})
        byte_range = parse_range(range_header, record.size)
        headers = response_headers(record, byte_range)
        status = 206 if byte_range else 200
        if head:
            return Download(status, headers, None)
        key = await self.deps.keys.get_key(record.key_reference)
        body = await open_body(self.deps.blobs, self.deps.settings.protected_container, record, key, byte_range)
        return Download(status, headers, body)

    async def rotate_file(self, file_id_text: str) -> str:
        reference = await self.rotator.rotate_file(parse_file_id(file_id_text))
        assert reference is not None  # unconditional rotation always yields a new key
        return reference

    async def rotate_due(self, *, limit: int | None = None, budget_seconds: float | None = None) -> RotationReport:
        return await self.rotator.rotate_due(limit=limit, budget_seconds=budget_seconds)

    async def health(self) -> dict[str, str]:
        """``ok`` or the failing error type, per dependency (never a message with secrets)."""
        d = self.deps
        checks = {"storage": d.blobs.ping(d.settings.protected_container), "database": d.db.ping(),
                  "vault": d.vault.ping()}
        results = await asyncio.gather(*(asyncio.wait_for(c, HEALTH_TIMEOUT_SECONDS) for c in checks.values()),
                                       return_exceptions=True)
        return {name: "ok" if not isinstance(r, BaseException) else type(r).__name__
                for name, r in zip(checks, results, strict=True)}

    async def _record(self, file_id: uuid.UUID) -> FileRecord:
        async with self.deps.db.connection("get_file") as conn:
            record = await FileRepository(conn).get(file_id)
        if record is None:
            raise UnknownFileError("no such file", operation="get_file", details={"file_id": str(file_id)})
        return record

    async def _view(self, record: FileRecord) -> dict[str, Any]:
        """The metadata a client may see: never key material."""
        expires = None
        if record.status == "encrypted":
            expires = (await self.deps.keys.active_key(record.file_id)).expires_at
        return {
            "file_id": str(record.file_id),
            "name": record.name,
            "source_name": record.source_name,
            "size": record.size,
            "content_type": record.content_type,
            "status": record.status,
            "created_at": record.created_at.isoformat(),
            "encrypted_at": record.encrypted_at.isoformat() if record.encrypted_at else None,
            "key_reference": record.key_reference,
            "key_expires_at": expires.isoformat() if expires else None,
        }
