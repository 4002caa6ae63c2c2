"""The API's contract: every operation of ``function_app.py`` with its role, parameters and answers (pure).

``OPERATIONS`` is the one description of the HTTP API: ``document()`` renders it as OpenAPI 3.1 (served at
``GET /api/openapi.json``), ``allowed_methods`` answers 405 for a known path and a method it does not take,
and tests/unit/test_openapi.py checks it against the functions ``function_app.py`` registers (route,
methods, auth level), so neither can change without the other. Schemathesis runs the document against
the local host in ``make test`` (tests/e2e/test_contract.py): no 5xx, no answer outside the document.

The schemas say what ``shared.service`` answers (``_view``, the access log's ``as_dict``) and what
``shared.http_api`` sends on errors: ``{"error": <type>, "message": <text>}`` for every status from 400 up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OPERATIONS", "Operation", "allowed_methods", "document"]

VERSION = "1.0.0"
_ID = {"type": "string", "format": "uuid"}
_TIME = {"type": "string", "format": "date-time"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {"type": "object", "required": ["error", "message"], "additionalProperties": False,
              "properties": {"error": {"type": "string", "description": "the error's type, e.g. UnknownFileError"},
                             "message": {"type": "string"}}},
    "File": {
        "type": "object", "required": ["file_id", "name", "source_name", "size", "content_type", "status", "created_at",
                                       "encrypted_at", "key_reference", "key_expires_at"],
        "additionalProperties": False,
        "properties": {
            "file_id": _ID, "name": {"type": "string", "description": "the display name (the upload name's last "
                                                                      "segment)"},
            "source_name": {"type": "string", "description": "the upload's name (X-File-Name or the ingest blob)"},
            "size": _nullable({"type": "integer", "minimum": 0}), "content_type": {"type": "string"},
            "status": {"enum": ["pending", "encrypted", "deleted"]}, "created_at": _TIME,
            "encrypted_at": _nullable(_TIME), "key_reference": _nullable({"type": "string"}),
            "key_expires_at": _nullable(_TIME), "key_custody": _nullable({"enum": ["secret", "envelope"]}),
            "deleted_at": _nullable(_TIME), "deleted_by": _nullable({"type": "string"})}},
    "FilePage": {"type": "object", "required": ["files", "next_cursor"], "additionalProperties": False,
                 "properties": {"files": {"type": "array", "items": {"$ref": "#/components/schemas/File"}},
                                "next_cursor": _nullable({"type": "string"})}},
    "AccessRow": {
        "type": "object", "additionalProperties": False,
        "required": ["at", "operation", "file_id", "caller", "client_address", "range", "bytes_sent", "outcome"],
        "properties": {"at": _TIME, "operation": {"type": "string"}, "file_id": _nullable(_ID),
                       "caller": {"type": "string"}, "client_address": _nullable({"type": "string"}),
                       "range": _nullable({"type": "string", "pattern": "^[0-9]+-[0-9]+$"}),
                       "bytes_sent": _nullable({"type": "integer"}), "outcome": {"type": "string"}}},
    "AccessLog": {"type": "object", "required": ["rows"], "additionalProperties": False,
                  "properties": {"rows": {"type": "array", "items": {"$ref": "#/components/schemas/AccessRow"}}}},
    "Health": {"type": "object", "required": ["status"], "additionalProperties": False,
               "properties": {"status": {"enum": ["up", "down"]}}},
    "Status": {"type": "object", "required": ["status", "dependencies"],
               "properties": {"status": {"enum": ["ok", "degraded", "unavailable"]},
                              "dependencies": {"type": "object", "additionalProperties": {"type": "string"}},
                              "oldest_plaintext_seconds": {"type": "integer"},
                              "reconciled_at": _nullable({"type": "string"}), "degraded": {"type": "boolean"}}},
}


def _param(name: str, where: str, description: str, schema: dict[str, Any] | None = None, *,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "description": description,
            "schema": schema or {"type": "string"}}


FILE_ID = _param("file_id", "path", "the file's id (a UUID)", _ID)
IF_MATCH = _param("If-Match", "header", "only while the file is this version (an ETag, or *): else 412")
DOWNLOAD_HEADERS = (
    _param("Range", "header", "one range: bytes=a-b, a- or -n (206); another unit is ignored (200)"),
    _param("If-Range", "header", "the ETag of the version being resumed: another version gets 200 and all of it"),
    _param("If-None-Match", "header", "ETags the client holds: the current one gets 304"),
    IF_MATCH)
LIMIT = {"type": "integer", "minimum": 1}


@dataclass(frozen=True)
class Operation:
    """One operation: the function that serves it, its method and path (under ``/api``), and its contract."""

    function: str
    method: str
    path: str
    role: str | None  # None: anyone (the host then checks no key either)
    summary: str
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None
    answers: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # status -> (description, schema)
    links: dict[int, dict[str, Any]] = field(default_factory=dict)


_FILE_LINKS = {"download": {"operationId": "download_file_get", "parameters": {"file_id": "$response.body#/file_id"}},
               "metadata": {"operationId": "file_metadata_get", "parameters": {"file_id": "$response.body#/file_id"}},
               "delete": {"operationId": "delete_file_delete", "parameters": {"file_id": "$response.body#/file_id"}}}

OPERATIONS: tuple[Operation, ...] = (
    Operation("upload_file", "POST", "/files", "write", "Upload a file: encrypted as it arrives, never stored in "
              "plaintext",
              (_param("X-File-Name", "header", "the file's name, percent-encoded UTF-8 (the one name rule: README)",
                      {"type": "string", "minLength": 1}, required=True),
               _param("Content-Type", "header", "the file's type (else guessed from the name)"),
               _param("Idempotency-Key", "header", "retry safely (draft-ietf-httpapi-idempotency-key-header): the "
                      "same key and request get the first answer again, for 24 h",
                      {"type": "string", "minLength": 1, "maxLength": 257})),
              {"required": False, "description": "the file's bytes (none: an empty file)",
               "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
              {201: ("the file, encrypted (or, for a retry, the first answer again: Idempotency-Replayed: true)",
                     "File"),
               409: ("the first request with this Idempotency-Key is still running (Retry-After)", "Error"),
               413: ("larger than UPLOAD_MAX_MB", "Error"),
               422: ("this Idempotency-Key was used with another request", "Error")},
              links={201: _FILE_LINKS}),
    Operation("find_file", "GET", "/files", "read", "The file uploaded under a name (name=), else a page of files",
              (_param("name", "query", "an upload name: its latest file"),
               _param("prefix", "query", "upload names starting with this"),
               _param("status", "query", "only files in this state", {"enum": ["pending", "encrypted", "deleted"]}),
               _param("limit", "query", "files per page (1-1000, default 100)", {**LIMIT, "maximum": 1000}),
               _param("cursor", "query", "next_cursor of the page before")),
              answers={200: ("the file (name=), or a page of files", "FileOrPage"),
                       404: ("no file was uploaded under that name", "Error")}),
    Operation("download_file", "GET", "/files/{file_id}", "read", "The file, decrypted and streamed",
              (FILE_ID, *DOWNLOAD_HEADERS),
              answers={200: ("the whole file", None), 206: ("the range asked for", None),
                       304: ("the client's copy (If-None-Match) is current", None),
                       404: ("no such file, or deleted", "Error"), 409: ("not encrypted yet", "Error"),
                       412: ("not the version If-Match names", "Error"),
                       416: ("the range is outside the file", "Error")}),
    Operation("download_file", "HEAD", "/files/{file_id}", "read", "The download's headers, no body",
              (FILE_ID, *DOWNLOAD_HEADERS),
              answers={200: ("the whole file's headers", None), 206: ("the range's headers", None),
                       304: ("the client's copy is current", None), 404: ("no such file", None),
                       409: ("not encrypted yet", None), 412: ("another version", None), 416: ("outside", None)}),
    Operation("delete_file", "DELETE", "/files/{file_id}", "erase", "Erase the file: blobs and every key version; "
              "the record stays as a tombstone. Idempotent: again answers the tombstone", (FILE_ID, IF_MATCH),
              answers={200: ("the tombstone", "File"), 404: ("no such file", "Error"),
                       412: ("not the version If-Match names", "Error")}),
    Operation("file_metadata", "GET", "/files/{file_id}/metadata", "read", "The file's record", (FILE_ID,),
              answers={200: ("the file", "File"), 404: ("no such file", "Error")}),
    Operation("access_log", "GET", "/audit", "audit", "Access log rows, oldest first (reading it is itself a row)",
              (_param("file_id", "query", "only this file's rows", _ID),
               _param("since", "query", "rows at or after this time (ISO 8601)", _TIME),
               _param("caller", "query", "only this caller's rows, e.g. entra:someone@contoso.com"),
               _param("limit", "query", "rows (1-10000, default 1000)", {**LIMIT, "maximum": 10_000})),
              answers={200: ("the rows", "AccessLog")}),
    Operation("health", "GET", "/health", None, "Up or down, from probes at most HEALTH_PROBE_SECONDS old",
              answers={200: ("up", "Health"), 503: ("down", "Health")}),
    Operation("status", "GET", "/status", "operate", "Each dependency, the oldest plaintext, the last reconciler run",
              answers={200: ("every dependency answers", "Status"), 503: ("a dependency fails", "Status")}),
    Operation("metrics", "GET", "/metrics", "operate", "Prometheus text of this instance's counters",
              answers={200: ("Prometheus text exposition", "text")}),
    Operation("openapi", "GET", "/openapi.json", None, "This document", answers={200: ("OpenAPI 3.1", "json")}),
)

# What every operation may answer besides its own (HEAD: the same statuses, no body).
COMMON = {400: "malformed id, name, range, header or query", 401: "no valid credential (function keys on)",
          403: "the caller lacks the operation's role (X-Required-Role names it)",
          500: "the service failed (KeyMissingError, IntegrityError, ...: named, with what to do)",
          503: "a dependency (or the access log) is down; retry later"}


def _template(path: str) -> re.Pattern[str]:
    return re.compile("/api" + re.sub(r"\{[^}]+\}", "[^/]+", path))


def allowed_methods(path: str) -> list[str]:
    """The methods a request path takes (empty: no such path), for 404 against 405."""
    return sorted({op.method for op in OPERATIONS if _template(op.path).fullmatch(path)})


def document(server: str = "/") -> dict[str, Any]:
    """OpenAPI 3.1 of ``OPERATIONS``."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(f"/api{op.path}", {})[op.method.lower()] = _operation(op)
    schemas = {**SCHEMAS, "FileOrPage": {"oneOf": [{"$ref": "#/components/schemas/File"},
                                                   {"$ref": "#/components/schemas/FilePage"}]}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "blobseal", "version": VERSION,
                 "description": "Files encrypted at rest in Azure Blob Storage, one key per file. Every operation but "
                                "health and this document needs a caller with its role (README, Roles)."},
        "servers": [{"url": server}],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key",
                            "description": "a function key (where FUNCTION_KEYS_ENABLED)"},
            "entra": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                      "description": "an Entra access token for the app (App Service Authentication)"}}},
    }


def _operation(op: Operation) -> dict[str, Any]:
    body: dict[str, Any] = {
        "operationId": f"{op.function}_{op.method.lower()}", "summary": op.summary,
        "parameters": list(op.parameters),
        "responses": {str(status): _answer(op, status, text, schema)
                      for status, (text, schema) in {**{s: (t, "Error") for s, t in COMMON.items()},
                                                     **op.answers}.items()},
    }
    if op.role:
        body["description"] = f"Needs the `{op.role}` role."
        body["security"] = [{"functionKey": []}, {"entra": []}]
    else:
        body["security"] = [{}]
    if op.body:
        body["requestBody"] = op.body
    return body


def _answer(op: Operation, status: int, text: str, schema: str | None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": text}
    if op.method == "HEAD" or schema is None:
        if op.function == "download_file" and status in (200, 206) and op.method == "GET":
            answer["content"] = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
        return answer
    if schema == "text":
        answer["content"] = {"text/plain": {"schema": {"type": "string"}}}
    elif schema == "json":
        answer["content"] = {"application/json": {"schema": {"type": "object"}}}
    else:
        answer["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    if status in op.links:
        answer["links"] = op.links[status]
    return answer
