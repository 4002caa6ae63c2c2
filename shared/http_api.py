"""HTTP mapping: FastAPI requests in, service calls, JSON or streamed responses out.

Used by the HTTP functions in ``function_app.py`` (under the Functions FastAPI extension) and
by the local host (under uvicorn): both hand over a FastAPI/Starlette ``Request``. Errors
become ``{"error": ..., "message": ...}`` with a status from ``STATUS``; never a stack
trace, a key, a SAS token or a connection string.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared import bootstrap
from shared.errors import (
    BlobsealError,
    ConfigError,
    DatabaseUnavailableError,
    FileNotReadyError,
    InvalidRequestError,
    RangeNotSatisfiableError,
    StorageUnavailableError,
    UnknownFileError,
    VaultUnavailableError,
)
from shared.metrics import ERRORS, REGISTRY
from shared.service import FileService

__all__ = ["download", "find_file", "health", "metadata", "metrics"]

log = logging.getLogger(__name__)

# Clients get these words for server-side failures; the details (hosts, URLs) go to the log only.
UNAVAILABLE = {
    DatabaseUnavailableError: "the database is unavailable; retry later",
    VaultUnavailableError: "the key vault is unavailable; retry later",
    StorageUnavailableError: "blob storage is unavailable; retry later",
}

STATUS: tuple[tuple[type[BlobsealError], int], ...] = (
    (InvalidRequestError, 400),
    (UnknownFileError, 404),
    (FileNotReadyError, 409),
    (RangeNotSatisfiableError, 416),
    (DatabaseUnavailableError, 503),
    (VaultUnavailableError, 503),
    (StorageUnavailableError, 503),
)


async def download(req: Request) -> Response:
    async def run(service: FileService) -> Response:
        result = await service.open_download(req.path_params.get("file_id", ""), req.headers.get("range"),
                                             head=req.method == "HEAD")
        if result.body is None:
            return Response(status_code=result.status, headers=result.headers)
        return StreamingResponse(result.body, status_code=result.status, headers=result.headers)

    return await _answer("download", run)


async def metadata(req: Request) -> Response:
    return await _answer("metadata", lambda s: _json(s.describe(req.path_params.get("file_id", ""))))


async def find_file(req: Request) -> Response:
    return await _answer("find_file", lambda s: _json(s.find_by_name(req.query_params.get("name"))))


async def health(req: Request) -> Response:
    async def run(service: FileService) -> Response:
        checks = await service.health()
        healthy = all(v == "ok" for v in checks.values())
        body = {"status": "ok" if healthy else "unavailable", "dependencies": checks}
        return JSONResponse(body, status_code=200 if healthy else 503)

    return await _answer("health", run)


async def metrics(req: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def _json(result: Awaitable[dict[str, Any]]) -> Response:
    return JSONResponse(await result)


async def _answer(operation: str, run: Callable[[FileService], Awaitable[Response]]) -> Response:
    try:
        service = (await bootstrap.services()).files
        return await run(service)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return _error(500, "ConfigError", "the service is misconfigured; see the logs")
    except BlobsealError as exc:
        return _from_error(operation, exc)


def _from_error(operation: str, exc: BlobsealError) -> Response:
    status = next((code for kind, code in STATUS if isinstance(exc, kind)), 500)
    ERRORS.labels(operation, type(exc).__name__).inc()
    message = exc.message
    if status >= 500:
        log.error("%s failed: %s", operation, exc)
        message = next((text for kind, text in UNAVAILABLE.items() if isinstance(exc, kind)), "internal error")
    response = _error(status, type(exc).__name__, message)
    if isinstance(exc, RangeNotSatisfiableError):
        response.headers["Content-Range"] = f"bytes */{exc.details.get('size', 0)}"
    return response


def _error(status: int, error: str, message: str) -> Response:
    return JSONResponse({"error": error, "message": message}, status_code=status)
