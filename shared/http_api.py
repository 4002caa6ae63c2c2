"""The HTTP face: every HTTP concern of blobseal, and nothing else.

Requests come in as FastAPI/Starlette ``Request`` objects (the Functions FastAPI extension in
Azure, uvicorn in the local host) together with the ``FileService`` that ``function_app.py``
hands over. This module parses what HTTP sends (the ``Range`` header, RFC 9110 section 14:
one range, ``bytes=a-b``, ``a-`` or ``-n``), chooses the status (200, 206, 416, errors),
writes the response headers (``Content-Range``, ``Content-Disposition``, ``ETag``) and maps
errors to ``{"error": ..., "message": ...}`` with a status from ``STATUS``: never a stack
trace, a key, a SAS token or a connection string. The service below it answers in neutral
terms: a file record, a byte span, a verified body.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.audit import Access
from shared.db.files import FileRecord
from shared.download import Span
from shared.errors import (
    AuditUnavailableError,
    BlobsealError,
    ConfigError,
    DatabaseUnavailableError,
    FileNotReadyError,
    IntegrityError,
    InvalidRequestError,
    KeyIntegrityError,
    KeyMissingError,
    KeyVaultError,
    RangeNotSatisfiableError,
    StorageUnavailableError,
    UnknownFileError,
    UploadTooLargeError,
)
from shared.ingest import guess_type
from shared.metrics import ERRORS, REGISTRY
from shared.service import FileService
from shared.upload import UploadRequest

__all__ = [
    "access_of",
    "content_disposition",
    "delete",
    "download",
    "find_file",
    "health",
    "metadata",
    "metrics",
    "misconfigured",
    "parse_range",
    "response_headers",
    "upload",
]

log = logging.getLogger(__name__)

# Clients get these words for server-side failures; the details (hosts, URLs) go to the log only.
SERVER_MESSAGES: tuple[tuple[type[BlobsealError], str], ...] = (
    (DatabaseUnavailableError, "the database is unavailable; retry later"),
    (AuditUnavailableError, "the access log cannot be written; retry later"),
    (KeyMissingError, "the file's key is missing from the vault; an operator must restore it"),
    (KeyVaultError, "the key vault is unavailable; retry later"),
    (StorageUnavailableError, "blob storage is unavailable; retry later"),
    (IntegrityError, "the stored file failed its integrity check; nothing of it was served"),
    (KeyIntegrityError, "the file's key record failed its integrity check; nothing of it was served"),
)

# The first match wins. A vault problem answers 503 ("vault"), as health does for the same cause.
STATUS: tuple[tuple[type[BlobsealError], int], ...] = (
    (UploadTooLargeError, 413),
    (InvalidRequestError, 400),
    (UnknownFileError, 404),
    (FileNotReadyError, 409),
    (RangeNotSatisfiableError, 416),
    (DatabaseUnavailableError, 503),
    (AuditUnavailableError, 503),
    (KeyVaultError, 503),
    (StorageUnavailableError, 503),
)

Handler = Callable[[Request, FileService], Awaitable[Response]]


# --- the routes ---------------------------------------------------------------------------


async def download(req: Request, files: FileService) -> Response:
    async def run(access: Access) -> Response:
        record = await files.encrypted_file(req.path_params.get("file_id", ""))
        assert record.size is not None
        span = parse_range(req.headers.get("range"), record.size)
        status, headers = (206 if span else 200), response_headers(record, span)
        if req.method == "HEAD":
            await files.audit.record("head", access, file_id=record.file_id, required=False)
            return Response(status_code=status, headers=headers)
        body = await files.open(record, span)
        planned = (span.start, span.end) if span else (0, record.size - 1)
        await files.audit.record("download", access, file_id=record.file_id, span=planned,
                                 bytes_sent=span.length if span else record.size)  # refused if it cannot be recorded
        return StreamingResponse(_counted(body, files, access, record, planned), status_code=status, headers=headers)

    return await _answer("download", req, files, run)


async def metadata(req: Request, files: FileService) -> Response:
    async def run(access: Access) -> Response:
        view = await files.describe(req.path_params.get("file_id", ""))
        await files.audit.record("metadata", access, file_id=uuid.UUID(view["file_id"]))
        return JSONResponse(view)

    return await _answer("metadata", req, files, run)


async def find_file(req: Request, files: FileService) -> Response:
    """``?name=``: the file uploaded under that name; else a page of files (``prefix``, ``status``,
    ``limit``, ``cursor``)."""
    async def run(access: Access) -> Response:
        query = req.query_params
        if "name" in query:
            view = await files.find_by_name(query.get("name"))
            await files.audit.record("lookup", access, file_id=uuid.UUID(view["file_id"]))
            return JSONResponse(view)
        page, cursor = await files.list_files(prefix=query.get("prefix", ""), status=query.get("status") or None,
                                              limit=_integer(query.get("limit"), 100), cursor=query.get("cursor"))
        await files.audit.record("list", access)
        return JSONResponse({"files": page, "next_cursor": cursor})

    return await _answer("find_file", req, files, run)


async def upload(req: Request, files: FileService) -> Response:
    """``POST /api/files``: the body is the file; ``X-File-Name`` names it (percent-encoded UTF-8)."""
    async def run(access: Access) -> Response:
        name = unquote(req.headers.get("x-file-name", ""))
        if not name:
            raise InvalidRequestError("the X-File-Name header names the file", operation="upload")
        length = req.headers.get("content-length")
        request = UploadRequest(name=name, content_type=guess_type(req.headers.get("content-type"), name),
                                declared_size=_integer(length, 0) if length else None)
        view = await files.upload(request, req.stream(), access)
        return JSONResponse(view, status_code=201, headers={"Location": f"/api/files/{view['file_id']}"})

    return await _answer("upload", req, files, run)


async def delete(req: Request, files: FileService) -> Response:
    return await _answer("delete", req, files,
                         lambda access: _json(files.delete(req.path_params.get("file_id", ""), access)))


async def health(req: Request, files: FileService) -> Response:
    async def run(access: Access) -> Response:
        report = await files.health()
        healthy = all(v == "ok" for v in report["dependencies"].values())
        status = "unavailable" if not healthy else "degraded" if report.get("degraded") else "ok"
        return JSONResponse({"status": status, **report}, status_code=200 if healthy else 503)

    return await _answer("health", req, files, run, audited=False)


async def metrics(req: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def misconfigured(exc: ConfigError) -> Response:
    """The answer while the settings are invalid (the problems go to the log, not to clients)."""
    log.error("configuration error: %s", exc)
    return _error(500, "ConfigError", "the service is misconfigured; see the logs")


# --- Range and response headers -----------------------------------------------------------

_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def parse_range(header: str | None, size: int) -> Span | None:
    """The requested span of a ``size``-byte file, or None for the whole file.

    Malformed headers, other units and multiple ranges are refused (400); a well-formed range
    outside the file is unsatisfiable (416).
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None or match.group(1) == match.group(2) == "":
        raise InvalidRequestError("malformed Range header (one range: bytes=a-b, a- or -n)",
                                  operation="parse_range")
    first, last = match.group(1), match.group(2)
    if first == "":
        return _suffix(int(last), size)
    start = int(first)
    end = size - 1 if last == "" else int(last)
    if last != "" and end < start:
        raise InvalidRequestError("malformed Range header (last byte before first)", operation="parse_range")
    if start >= size:
        raise _unsatisfiable(size)
    return Span(start, min(end, size - 1) - start + 1)


def _suffix(count: int, size: int) -> Span:
    if count == 0 or size == 0:
        raise _unsatisfiable(size)
    count = min(count, size)
    return Span(size - count, count)


def _unsatisfiable(size: int) -> RangeNotSatisfiableError:
    return RangeNotSatisfiableError("range not satisfiable", operation="parse_range", details={"size": size})


def response_headers(record: FileRecord, span: Span | None) -> dict[str, str]:
    size = record.size or 0
    headers = {
        "Content-Type": record.content_type,
        "Content-Disposition": content_disposition(record.name),
        "Content-Length": str(span.length if span else size),
        "ETag": etag(record),
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if span:
        headers["Content-Range"] = f"bytes {span.start}-{span.end}/{size}"
    return headers


def etag(record: FileRecord) -> str:
    """Names the content: the same across rotations (only the ciphertext changes), new for a new version."""
    return f'"{record.file_id}.{hashlib.sha256(record.source_etag.encode()).hexdigest()[:16]}"'


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII fallback and the exact UTF-8 name (RFC 6266 / 8187)."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


# --- errors -----------------------------------------------------------------------------------


async def _json(result: Awaitable[dict[str, Any]]) -> Response:
    return JSONResponse(await result)


def access_of(req: Request, files: FileService) -> Access:
    """Who asks: the Entra principal App Service authentication passes, else the function key used."""
    principal = req.headers.get("x-ms-client-principal-name")
    key = req.headers.get("x-functions-key") or req.query_params.get("code")
    forwarded = req.headers.get("x-forwarded-for", "").split(",")[0].strip()
    address = forwarded or (req.client.host if req.client else None)
    return Access(files.audit.caller(principal=principal, key=key), address)


async def _answer(operation: str, req: Request, files: FileService, run: Callable[[Access], Awaitable[Response]],
                  *, audited: bool = True) -> Response:
    access = access_of(req, files)
    try:
        return await run(access)
    except BlobsealError as exc:
        if audited:  # a failed access is recorded too (best effort: the answer is an error anyway)
            await files.audit.record(operation, access, file_id=_file_id_in(req), outcome=type(exc).__name__,
                                     required=False)
        return _from_error(operation, exc)


async def _counted(body: AsyncIterator[memoryview], files: FileService, access: Access, record: FileRecord,
                   planned: tuple[int, int]) -> AsyncIterator[memoryview]:
    """The body; a download cut short (client gone, integrity failure) is recorded with what was sent."""
    sent = 0
    try:
        async for piece in body:
            sent += len(piece)
            yield piece
    except BaseException as exc:
        outcome = "aborted" if isinstance(exc, GeneratorExit | asyncio.CancelledError) else type(exc).__name__
        await asyncio.shield(files.audit.record("download", access, file_id=record.file_id, span=planned,
                                                bytes_sent=sent, outcome=outcome, required=False))
        raise


def _file_id_in(req: Request) -> uuid.UUID | None:
    try:
        return uuid.UUID(req.path_params.get("file_id", ""))
    except ValueError:
        return None


def _integer(text: str | None, default: int) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit():
        raise InvalidRequestError("a number was expected", operation="parse_query")
    return int(text)


def _from_error(operation: str, exc: BlobsealError) -> Response:
    status = next((code for kind, code in STATUS if isinstance(exc, kind)), 500)
    ERRORS.labels(operation, type(exc).__name__).inc()
    message = exc.message
    if status >= 500:
        log.error("%s failed: %s", operation, exc, extra={"blobseal_error": exc.to_dict()})
        message = next((text for kind, text in SERVER_MESSAGES if isinstance(exc, kind)), "internal error")
    response = _error(status, type(exc).__name__, message)
    if isinstance(exc, RangeNotSatisfiableError):
        response.headers["Content-Range"] = f"bytes */{exc.details.get('size', 0)}"
    return response


def _error(status: int, error: str, message: str) -> Response:
    return JSONResponse({"error": error, "message": message}, status_code=status)
