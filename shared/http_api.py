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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import quote, unquote

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect

from shared.db.files import FileRecord
from shared.download import Span
from shared.errors import (
    AccessDeniedError,
    AuditUnavailableError,
    BlobsealError,
    ClientGoneError,
    ConfigError,
    DatabaseUnavailableError,
    FileNotReadyError,
    IdempotencyKeyReusedError,
    IntegrityError,
    InvalidRequestError,
    KeyIntegrityError,
    KeyMissingError,
    KeyVaultError,
    NotModified,
    PreconditionFailedError,
    RangeNotSatisfiableError,
    RequestInProgressError,
    StorageUnavailableError,
    UnknownFileError,
    UploadTooLargeError,
)
from shared.health import Health
from shared.identity import Caller, IdentityPolicy
from shared.metrics import ERRORS, REGISTRY
from shared.openapi import allowed_methods, document
from shared.service import FileService

__all__ = [
    "App",
    "access_log",
    "caller_of",
    "content_disposition",
    "delete",
    "download",
    "find_file",
    "health",
    "idempotency_key",
    "metadata",
    "metrics",
    "misconfigured",
    "not_found",
    "openapi",
    "parse_range",
    "response_headers",
    "status",
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
    (RequestInProgressError, 409),
    (IdempotencyKeyReusedError, 422),
    (InvalidRequestError, 400),
    (AccessDeniedError, 403),
    (ClientGoneError, 400),
    (UnknownFileError, 404),
    (FileNotReadyError, 409),
    (RangeNotSatisfiableError, 416),
    (PreconditionFailedError, 412),
    (DatabaseUnavailableError, 503),
    (AuditUnavailableError, 503),
    (KeyVaultError, 503),
    (StorageUnavailableError, 503),
)

class App(Protocol):
    """What the routes use of the bootstrap's services."""

    files: FileService
    health: Health
    identity: IdentityPolicy


Handler = Callable[[Request, App], Awaitable[Response]]


# --- the routes ---------------------------------------------------------------------------


async def download(req: Request, app: App) -> Response:
    """GET or HEAD ``/api/files/{id}`` (``read``): RFC 9110 preconditions, then one ``Range`` (``plan``)."""
    async def run(caller: Caller) -> Response:
        try:
            got = await app.files.download(caller, req.path_params.get("file_id", ""),
                                           lambda record: plan(req.headers, record), head=req.method == "HEAD")
        except NotModified as exc:
            return Response(status_code=304, headers=_validators(str(exc.details.get("etag", ""))))
        status, headers = (206 if got.span else 200), response_headers(got.record, got.span)
        if got.body is None:
            return Response(status_code=status, headers=headers)
        return StreamingResponse(got.body, status_code=status, headers=headers)

    return await _answer("download", req, app, run)


async def metadata(req: Request, app: App) -> Response:
    return await _answer("metadata", req, app,
                         lambda caller: _json(app.files.describe(caller, req.path_params.get("file_id", ""))))


async def find_file(req: Request, app: App) -> Response:
    """``?name=``: the file uploaded under that name; else a page of files (``prefix``, ``status``,
    ``limit``, ``cursor``)."""
    async def run(caller: Caller) -> Response:
        query = req.query_params
        if "name" in query:
            return JSONResponse(await app.files.find_by_name(caller, query.get("name")))
        page, cursor = await app.files.list_files(caller, prefix=query.get("prefix", ""),
                                                  status=query.get("status"), limit=query.get("limit"),
                                                  cursor=query.get("cursor"))
        return JSONResponse({"files": page, "next_cursor": cursor})

    return await _answer("find_file", req, app, run)


async def upload(req: Request, app: App) -> Response:
    """``POST /api/files`` (``write``): the body is the file; ``X-File-Name`` names it (percent-encoded UTF-8).

    ``Idempotency-Key`` (optional, draft-ietf-httpapi-idempotency-key-header): a retry with the same key and
    request gets the first answer again (201, the same file, ``Idempotency-Replayed: true``); with another
    request 422; while the first is still running 409 with ``Retry-After``."""
    async def run(caller: Caller) -> Response:
        uploaded = await app.files.upload(caller, _body(req), name=unquote(req.headers.get("x-file-name", "")),
                                          content_type=req.headers.get("content-type"),
                                          declared_size=req.headers.get("content-length"),
                                          idempotency_key=idempotency_key(req.headers.get("idempotency-key")))
        headers = {"Location": f"/api/files/{uploaded.file_id}"}
        if uploaded.replayed:
            headers["Idempotency-Replayed"] = "true"
        return JSONResponse(uploaded.view, status_code=201, headers=headers)

    return await _answer("upload", req, app, run)


def idempotency_key(header: str | None) -> str | None:
    """The ``Idempotency-Key`` header's value: a structured-field string (``"..."``, unescaped) or, as many
    clients send it, the bare value (the service checks what it may be). None when absent."""
    if header is None:
        return None
    value = header.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = re.sub(r'\\(["\\])', r"\1", value[1:-1])
    return value


async def delete(req: Request, app: App) -> Response:
    """``DELETE /api/files/{id}`` (``erase``); with ``If-Match``, only while the file is that version (else 412)."""
    def precondition(record: FileRecord) -> None:
        if_match(req.headers.get("if-match"), record)

    return await _answer("delete", req, app, lambda caller: _json(
        app.files.delete(caller, req.path_params.get("file_id", ""), precondition=precondition)))


async def access_log(req: Request, app: App) -> Response:
    """``GET /api/audit`` (``audit``): rows by ``file_id``, ``since`` (ISO 8601), ``caller``, ``limit``."""
    async def run(caller: Caller) -> Response:
        query = req.query_params
        rows = await app.files.access_log(caller, file_id=query.get("file_id"), since=query.get("since"),
                                          who=query.get("caller"), limit=query.get("limit"))
        return JSONResponse({"rows": [row.as_dict() for row in rows]})

    return await _answer("audit_log", req, app, run)


async def health(req: Request, app: App) -> Response:
    """Anonymous: ``up`` or ``down`` from the cached probes, nothing else."""
    up = await app.health.summary()
    return JSONResponse({"status": "up" if up else "down"}, status_code=200 if up else 503)


async def status(req: Request, app: App) -> Response:
    """``GET /api/status`` (``operate``): the status, each dependency and capability with the causes of what
    fails, the oldest plaintext, the last reconciler run; 503 while something fails (uploads refused too)."""
    async def run(caller: Caller) -> Response:
        report = await app.health.details(caller)
        failing = report["status"] == "unavailable" or bool(report["causes"])  # a dependency, or uploads refused
        return JSONResponse(report, status_code=503 if failing else 200)

    return await _answer("status", req, app, run)


async def metrics(req: Request, app: App) -> Response:
    """Prometheus exposition (``operate``)."""
    async def run(caller: Caller) -> Response:
        await app.files.guard.authorize("metrics", caller, "operate")
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return await _answer("metrics", req, app, run)


async def openapi(req: Request, app: App) -> Response:
    """``GET /api/openapi.json`` (anyone): the API's contract (``shared.openapi``)."""
    return JSONResponse(document())


async def not_found(req: Request, app: App) -> Response:
    """Any other path or method: 405 (with ``Allow``) for a known path, else 404; the same JSON as every error."""
    allowed = allowed_methods(req.url.path)
    if allowed:
        response = _error(405, "MethodNotAllowed", f"{req.method} is not allowed here; allowed: {', '.join(allowed)}")
        response.headers["Allow"] = ", ".join(allowed)
        return response
    return _error(404, "NotFound", "no such route (GET /api/openapi.json lists them)")


def misconfigured(exc: ConfigError) -> Response:
    """The answer while the settings are invalid (the problems go to the log, not to clients)."""
    log.error("configuration error: %s", exc)
    return _error(500, "ConfigError", "the service is misconfigured; see the logs")


def caller_of(req: Request, app: App) -> Caller:
    """Who asks, from what the platform validated only (``shared.identity``)."""
    return app.identity.caller(req.headers, req.query_params, req.client.host if req.client else None)


# --- preconditions, Range and response headers (RFC 9110 sections 13 and 14) -----------------------

_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def plan(headers: Mapping[str, str], record: FileRecord) -> Span | None:
    """What a GET or HEAD gets, in RFC 9110's order (13.2.2): ``If-Match`` (412 unless it names this
    version), ``If-None-Match`` (304 when it does), then ``Range`` unless ``If-Range`` names another
    version (or is a date: no ``Last-Modified`` is served, so a date never matches). ``If-Modified-Since``
    and ``If-Unmodified-Since`` are ignored, as the RFC says for a resource without a modification date."""
    if_match(headers.get("if-match"), record)
    current = etag(record)
    if (wanted := headers.get("if-none-match")) is not None and _matches(wanted, current, weak=True):
        raise NotModified("the client's copy is current", operation="download", details={"etag": current})
    if (validator := headers.get("if-range")) is not None and validator.strip() != current:
        return None  # a stale (or weak, or date) If-Range: the whole current version, 200
    return parse_range(headers.get("range"), record.size or 0)


def if_match(header: str | None, record: FileRecord) -> None:
    """``If-Match``: the request goes ahead only for the version it names (strong comparison), or ``*``."""
    if header is not None and not _matches(header, etag(record), weak=False):
        raise PreconditionFailedError("the file is no longer the version If-Match names", operation="if_match",
                                      details={"etag": etag(record)})


def _matches(header: str, current: str, *, weak: bool) -> bool:
    """Whether an entity-tag list (``*``, or ``"a", W/"b"``) names ``current``."""
    if header.strip() == "*":
        return True
    for tag in (t.strip() for t in header.split(",")):
        if tag.startswith("W/"):
            if weak and tag[2:] == current:
                return True
        elif tag == current:
            return True
    return False


def parse_range(header: str | None, size: int) -> Span | None:
    """The requested span of a ``size``-byte file, or None for the whole file.

    A unit other than ``bytes`` is ignored (the whole file, as RFC 9110 14.2 says); a malformed bytes
    range and several ranges are refused (400); a well-formed range outside the file is unsatisfiable (416).
    """
    if header is None or not header.strip().lower().startswith("bytes="):
        return None
    match = _RANGE.fullmatch("bytes=" + header.strip()[6:].replace(" ", ""))
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


def _validators(current: str) -> dict[str, str]:
    """What a 200, 206 and 304 share (RFC 9110 15.4.5: a 304 repeats the validator and caching fields)."""
    return {"ETag": current, "Cache-Control": "private, no-store", "Vary": "Authorization, x-functions-key"}


def response_headers(record: FileRecord, span: Span | None) -> dict[str, str]:
    size = record.size or 0
    headers = {
        "Content-Type": record.content_type,
        "Content-Disposition": content_disposition(record.name),
        "Content-Length": str(span.length if span else size),
        **_validators(etag(record)),
        "Accept-Ranges": "bytes",
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


# --- errors and bodies ---------------------------------------------------------------------------


async def _json(result: Awaitable[dict[str, Any]]) -> Response:
    return JSONResponse(await result)


async def _answer(operation: str, req: Request, app: App, run: Callable[[Caller], Awaitable[Response]]) -> Response:
    """Run a route for its caller; an error becomes its status and JSON body (the access log has its row)."""
    try:
        return await run(caller_of(req, app))
    except BlobsealError as exc:
        return _from_error(operation, exc)


async def _body(req: Request) -> AsyncIterator[bytes]:
    """The request body; a client that goes away mid-body is ``ClientGoneError`` (logged as aborted)."""
    try:
        async for chunk in req.stream():
            yield chunk
    except ClientDisconnect:
        raise ClientGoneError("the client went away before the body ended", operation="upload") from None


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
    if isinstance(exc, AccessDeniedError):
        response.headers["X-Required-Role"] = str(exc.details.get("role", ""))
    if isinstance(exc, RequestInProgressError):
        response.headers["Retry-After"] = "5"
    return response


def _error(status: int, error: str, message: str) -> Response:
    return JSONResponse({"error": error, "message": message}, status_code=status)
