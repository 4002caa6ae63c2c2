"""The bundled local host: the functions of ``function_app.py`` under uvicorn, polling and a timer."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import uvicorn

from devhost.functions import FunctionSpec, discover, resolve
from devhost.http import build_http_app
from devhost.ncrontab import Schedule
from devhost.triggers import BlobPoller, TimerRunner
from shared import bootstrap
from shared.config import LOCAL_STORAGE

__all__ = ["serve"]

log = logging.getLogger("devhost")
ROOT = Path(__file__).resolve().parents[1]


def host_blob_options() -> tuple[int, int]:
    """(concurrency, poison threshold) from host.json, as the Functions host reads them."""
    blobs = json.loads((ROOT / "host.json").read_text()).get("extensions", {}).get("blobs", {})
    return int(blobs.get("maxDegreeOfParallelism", 4)), int(blobs.get("poisonBlobThreshold", 5))


def background_tasks(specs: list[FunctionSpec], settings: Mapping[str, str],
                     poll_seconds: float) -> list[BlobPoller | TimerRunner]:
    runners: list[BlobPoller | TimerRunner] = []
    for spec in specs:
        if spec.trigger == "blobTrigger":
            container = resolve(str(spec.value("path")), settings).split("/", 1)[0]
            connection = settings.get(str(spec.value("connection")), LOCAL_STORAGE)
            concurrency, threshold = host_blob_options()
            runners.append(BlobPoller(spec, container, connection, poll_seconds=poll_seconds, concurrency=concurrency,
                                      poison_threshold=threshold))
        elif spec.trigger == "timerTrigger":
            runners.append(TimerRunner(spec, Schedule.parse(resolve(str(spec.value("schedule")), settings))))
    return runners


async def serve(*, port: int, poll_seconds: float, settings: Mapping[str, str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app_module = importlib.import_module("function_app")
    specs = discover(app_module.app)
    http_app = build_http_app(specs, function_keys=list(bootstrap.load_settings().local_keys.values()))
    server = uvicorn.Server(uvicorn.Config(http_app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    tasks = [asyncio.create_task(r.run()) for r in background_tasks(specs, settings, poll_seconds)]
    log.info("serving %d functions: %s", len(specs), ", ".join(s.name for s in specs))
    try:
        await server.serve()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await bootstrap.close_services()
