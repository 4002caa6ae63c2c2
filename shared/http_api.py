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

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.db.files import FileRecord
from shared.download import Span
from shared.errors import (
    BlobsealError,
    ConfigError,
    DatabaseUnavailableError,
    FileNotReadyError,
    IntegrityError,
    InvalidRequestError,
    KeyMissingError,
    KeyVaultError,
    RangeNotSatisfiableError,
    StorageUnavailableError,
    UnknownFileError,
)
from shared.metrics import ERRORS, REGISTRY
from shared.service import FileService

__all__ = [
    "content_disposition",
    "download",
    "find_file",
    "health",
    "metadata",
    "metrics",
    "misconfigured",
    "parse_range",
    "response_headers",
]

log = logging.getLogger(__name__)

# Clients get these words for server-side failures; the details (hosts, URLs) go to the log only.
SERVER_MESSAGES: tuple[tuple[type[BlobsealError], str], ...] = (
    (DatabaseUnavailableError, "the database is unavailable; retry later"),
    (KeyMissingError, "the file's key is missing from the vault; an operator must restore it"),
    (KeyVaultError, "the key vault is unavailable; retry later"),
    (StorageUnavailableError, "blob storage is unavailable; retry later"),
    (IntegrityError, "the stored file failed its integrity check; nothing of it was served"),
)

# The first match wins. A vault problem answers 503 ("vault"), as health does for the same cause.
STATUS: tuple[tuple[type[BlobsealError], int], ...] = (
    (InvalidRequestError, 400),
    (UnknownFileError, 404),
    (FileNotReadyError, 409),
    (RangeNotSatisfiableError, 416),
    (DatabaseUnavailableError, 503),
    (KeyVaultError, 503),
    (StorageUnavailableError, 503),
)

Handler = Callable[[Request, FileService], Awaitable[Response]]


# --- the routes ---------------------------------------------------------------------------


async def download(req: Request, files: FileService) -> Response:
    async def run() -> Response:
        record = await files.encrypted_file(req.path_params.get("file_id", ""))
        assert record.size is not None
        span = parse_range(req.headers.get("range"), record.size)
        status, headers = (206 if span else 200), response_headers(record, span)
        if req.method == "HEAD":
            return Response(status_code=status, headers=headers)
        return StreamingResponse(await files.open(record, span), status_code=status, headers=headers)

    return await _answer("download", run)


async def metadata(req: Request, files: FileService) -> Response:
    return await _answer("metadata", lambda: _json(files.describe(req.path_params.get("file_id", ""))))


async def find_file(req: Request, files: FileService) -> Response:
    return await _answer("find_file", lambda: _json(files.find_by_name(req.query_params.get("name"))))


async def health(req: Request, files: FileService) -> Response:
    async def run() -> Response:
        report = await files.health()
        healthy = all(v == "ok" for v in report["dependencies"].values())
        status = "unavailable" if not healthy else "degraded" if report.get("degraded") else "ok"
        return JSONResponse({"status": status, **report}, status_code=200 if healthy else 503)

    return await _answer("health", run)


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


async def _answer(operation: str, run: Callable[[], Awaitable[Response]]) -> Response:
    try:
        return await run()
    except BlobsealError as exc:
        return _from_error(operation, exc)


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
