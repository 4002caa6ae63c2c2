"""The bundled local host: Microsoft's Python runtime runs the functions; this plays the Functions host.

``serve`` starts the runtime (``devhost.worker``: init, metadata, load), then does what the .NET host
does around it: the HTTP port (``devhost.frontdoor``: routes, function keys, forwarding to the
runtime's HTTP server), blob polling with receipts, retries and the poison queue (``host.json``'s
``extensions.blobs``) and the NCRONTAB timers (``devhost.triggers``). Every function runs through the
runtime; this host has no other way to call one.

Logging: the host's own lines at INFO; the runtime's and its HTTP server's (system logs, which Core
Tools shows only with ``--verbose``) and the Azure SDK's HTTP logging at WARNING unless ``verbose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from devhost.frontdoor import FrontDoor
from devhost.functions import Function, resolve
from devhost.ncrontab import Schedule
from devhost.triggers import BlobPoller, TimerRunner
from devhost.worker import RUNTIME_VERSION, Worker
from shared import bootstrap
from shared.config import LOCAL_STORAGE

__all__ = ["end_runtime_server_quietly", "quiet_system_logs", "serve", "start_worker"]

log = logging.getLogger("devhost")
ROOT = Path(__file__).resolve().parents[1]
# The runtime's, its server's, and the Azure SDK's (a request/response dump for every blob poll: ~600 lines a
# minute of an idle host otherwise, until the runtime's first invocation reconfigured logging).
SYSTEM_LOGGERS = ("azure.functions", "uvicorn", "uvicorn.access", "uvicorn.error", "azure.core", "azure.storage",
                  "azure.identity", "azure.keyvault")


def host_json() -> dict[str, Any]:
    return dict(json.loads((ROOT / "host.json").read_text()))


def host_blob_options() -> tuple[int, int]:
    """(concurrency, poison threshold) from host.json, as the Functions host reads them."""
    blobs = host_json().get("extensions", {}).get("blobs", {})
    return int(blobs.get("maxDegreeOfParallelism", 4)), int(blobs.get("poisonBlobThreshold", 5))


def function_timeout() -> float:
    """host.json's functionTimeout (``hh:mm:ss``) in seconds (Flex Consumption's default: 30 minutes)."""
    hours, minutes, seconds = (float(part) for part in str(host_json().get("functionTimeout", "00:30:00")).split(":"))
    return hours * 3600 + minutes * 60 + seconds


def background_tasks(worker: Worker, settings: Mapping[str, str],
                     poll_seconds: float) -> list[BlobPoller | TimerRunner]:
    runners: list[BlobPoller | TimerRunner] = []
    for function in worker.functions:
        trigger = function.trigger
        if function.trigger_type == "blobTrigger":
            container = resolve(str(trigger["path"]), settings).split("/", 1)[0]
            connection = settings.get(str(trigger["connection"]), LOCAL_STORAGE)
            concurrency, threshold = host_blob_options()
            runners.append(BlobPoller(worker, function, container, connection, poll_seconds=poll_seconds,
                                      concurrency=concurrency, poison_threshold=threshold))
        elif function.trigger_type == "timerTrigger":
            runners.append(TimerRunner(worker, function, Schedule.parse(resolve(str(trigger["schedule"]), settings))))
    return runners


def quiet_system_logs(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    for name in SYSTEM_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # The runtime starts its server with uvicorn's default logging config, which sets INFO again as it
    # starts: that default (a module-level dict) says the same level.
    for name, config in uvicorn.config.LOGGING_CONFIG.get("loggers", {}).items():
        config["level"] = logging.getLevelName(level) if name in SYSTEM_LOGGERS else config.get("level")


def end_runtime_server_quietly() -> None:
    """The runtime's HTTP server has no stop call (in Azure the worker process just ends): the loop
    cancels its task on the way out, which its lifespan handler would report as an error."""
    logging.getLogger("uvicorn.error").disabled = True


async def start_worker(*, verbose: bool = False) -> Worker:
    """The runtime, initialised on this loop, its functions indexed and loaded, its HTTP server up."""
    quiet_system_logs(verbose)
    worker = Worker(ROOT)
    await worker.start()
    if worker.http_uri:
        await _listening(worker.http_uri)
    return worker


async def _listening(uri: str, within: float = 30) -> None:
    """Wait until the runtime's HTTP server accepts connections (its task starts it after init)."""
    parts = urlsplit(uri)
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            _, writer = await asyncio.open_connection(parts.hostname, parts.port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return


def describe(functions: Collection[Function]) -> str:
    return ", ".join(f"{f.name} ({f.trigger_type})" for f in functions)


async def serve(*, port: int, poll_seconds: float, settings: Mapping[str, str], verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = await start_worker(verbose=verbose)
    front = FrontDoor(worker, function_keys=list(bootstrap.load_settings().local_keys.values()),
                      function_timeout=function_timeout())
    # The host's port is the edge: the caller's X-Forwarded-For is not trusted (uvicorn would, from loopback).
    server = uvicorn.Server(uvicorn.Config(front, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           server_header=False, date_header=False, proxy_headers=False))
    tasks = [asyncio.create_task(r.run()) for r in background_tasks(worker, settings, poll_seconds)]
    log.info("azure-functions-runtime %s serves %d functions: %s (its HTTP server: %s)", RUNTIME_VERSION,
             len(worker.functions), describe(worker.functions), worker.http_uri)
    try:
        await server.serve()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await front.close()
        worker.stop()
        await bootstrap.close_services()
        end_runtime_server_quietly()
