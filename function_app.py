"""The Azure Functions app (Python v2 programming model): bindings, and nothing heavy.

Each function reads its binding, makes one call into ``shared``, and maps errors. This module is
the composition root: it alone asks ``shared.bootstrap`` for the services (built lazily on
first use, reused by every invocation) and hands them to ``shared.http_api``.
Annotations stay real objects (no ``from __future__ import annotations``): the worker reads
them to pick the SDK-type blob binding and the streaming HTTP types.

- ``encrypt_ingest_blob``: blob trigger on ``%INGEST_CONTAINER%/{name}``; SDK-type binding,
  so the host hands over a client (names only) and never loads the blob into memory.
- ``download_file``, ``delete_file``, ``file_metadata``, ``find_file`` (lookup and listing),
  ``upload_file`` (encrypts a request body on the fly), ``access_log``, ``status``, ``metrics``: HTTP.
  Each checks its caller's role (``shared.identity``): in Azure the caller comes from App Service
  Authentication (Entra app roles; the functions are then ``anonymous`` to the host, keys off);
  with ``FUNCTION_KEYS_ENABLED`` (locally, by default) the host checks a function key first.
- ``health``: HTTP, anonymous: up or down only. ``openapi``: the API's contract (``shared.openapi``).
- ``not_found``: every other path and method, as JSON 404 or 405 (the host's own answers are plain text).
- ``rotate_keys``: timer on ``%ROTATION_SCHEDULE%``.
- ``reconcile``: timer on ``%RECONCILE_SCHEDULE%``: repairs what faults and races left behind.
"""

import logging

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob
from azurefunctions.extensions.http.fastapi import Request, Response

from shared import bootstrap, http_api
from shared.errors import ConfigError

log = logging.getLogger("blobseal.functions")

app = func.FunctionApp(http_auth_level=func.AuthLevel(bootstrap.http_auth_level()))


@app.blob_trigger(arg_name="client", path="%INGEST_CONTAINER%/{name}", connection="DataStorage",
                  source=func.BlobSource(bootstrap.trigger_source()))
async def encrypt_ingest_blob(client: blob.BlobClient) -> None:
    service = (await bootstrap.services()).files
    # Transient failures are retried inside (minutes of backoff); what still fails is recorded with its
    # reason and raised: the host retries, then poisons; the reconciler takes the upload up again.
    await service.encrypt_ingest_blob(client.blob_name)


async def _http(handler: http_api.Handler, req: Request) -> Response:
    """The one place HTTP functions get the services (built once per worker by the bootstrap)."""
    try:
        services = await bootstrap.services()
    except ConfigError as exc:
        return http_api.misconfigured(exc)
    return await handler(req, services)


@app.route(route="files/{file_id}", methods=["GET", "HEAD"])
async def download_file(req: Request) -> Response:
    return await _http(http_api.download, req)


@app.route(route="files/{file_id}", methods=["DELETE"])
async def delete_file(req: Request) -> Response:
    return await _http(http_api.delete, req)


@app.route(route="files/{file_id}/metadata", methods=["GET"])
async def file_metadata(req: Request) -> Response:
    return await _http(http_api.metadata, req)


@app.route(route="files", methods=["GET"])
async def find_file(req: Request) -> Response:
    return await _http(http_api.find_file, req)


@app.route(route="files", methods=["POST"])
async def upload_file(req: Request) -> Response:
    return await _http(http_api.upload, req)


@app.route(route="audit", methods=["GET"])
async def access_log(req: Request) -> Response:
    return await _http(http_api.access_log, req)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: Request) -> Response:
    return await _http(http_api.health, req)


@app.route(route="status", methods=["GET"])
async def status(req: Request) -> Response:
    return await _http(http_api.status, req)


@app.route(route="metrics", methods=["GET"])
async def metrics(req: Request) -> Response:
    return await _http(http_api.metrics, req)


@app.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def openapi(req: Request) -> Response:
    return await _http(http_api.openapi, req)


# Last in the host's route order (a catch-all ranks below every literal and parameter): JSON 404 and 405.
@app.route(route="{*path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
           auth_level=func.AuthLevel.ANONYMOUS)
async def not_found(req: Request) -> Response:
    return await _http(http_api.not_found, req)


@app.timer_trigger(arg_name="timer", schedule="%ROTATION_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def rotate_keys(timer: func.TimerRequest) -> None:
    report = await (await bootstrap.services()).maintenance.rotate_due()
    log.info("rotation run (past due: %s): %s", timer.past_due, report.as_dict())


@app.timer_trigger(arg_name="timer", schedule="%RECONCILE_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def reconcile(timer: func.TimerRequest) -> None:
    report = await (await bootstrap.services()).maintenance.reconcile()
    log.info("reconcile run (past due: %s): %s", timer.past_due, report.as_dict())
