"""The local host's blob polling against a real Azurite: what it lists, when, and what it sends the runtime.

The runtime is replaced here by a recorder at the one port the poller calls (``Worker.invoke``): this
test is about listing and receipts; the end-to-end tests run the same poller against the real runtime."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob.aio import ContainerClient

from devhost import protocol
from devhost.functions import Function
from devhost.triggers import BlobPoller
from devhost.worker import Worker
from localinfra.azurite import Azurite

TRIGGER = Function("encrypt", "id-1", ({"type": "blobTrigger", "direction": "IN", "name": "client",
                                        "path": "%INGEST_CONTAINER%/{name}", "connection": "DataStorage"},))

pytestmark = pytest.mark.azurite


async def test_a_queued_backlog_is_not_listed_again_and_every_blob_runs_once(
        azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"poll-{uuid.uuid4().hex[:8]}"
    async with ContainerClient.from_connection_string(azurite.connection_string, name) as container:
        await container.create_container()
        for i in range(8):
            await container.upload_blob(f"b{i}", b"x")
    listings, ran, release, all_ran = 0, [], asyncio.Event(), asyncio.Event()
    real_list = ContainerClient.list_blobs

    def counted_list(self: ContainerClient, *args: Any, **kwargs: Any) -> Any:
        nonlocal listings
        listings += 1
        return real_list(self, *args, **kwargs)

    async def invoke(function: Function, inputs: dict[str, protocol.TypedData], **metadata: Any) -> None:
        await release.wait()
        content = json.loads(inputs["client"].model_binding_data.content)
        assert content == {"Connection": "DataStorage", "ContainerName": name, "BlobName": content["BlobName"]}
        assert metadata["trigger_metadata"]["BlobTrigger"].string == f"{name}/{content['BlobName']}"
        ran.append(content["BlobName"])
        if len(ran) == 8:
            all_ran.set()

    monkeypatch.setattr(ContainerClient, "list_blobs", counted_list)
    worker = Worker(Path("."))
    monkeypatch.setattr(worker, "invoke", invoke)
    poller = BlobPoller(worker, TRIGGER, name, azurite.connection_string, poll_seconds=0.05, concurrency=2)
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(1.0)  # twenty polls while both slots are busy and six blobs wait
    assert listings == 1
    release.set()
    async with asyncio.timeout(10):
        await all_ran.wait()
    await asyncio.sleep(0.3)
    task.cancel()
    assert sorted(ran) == [f"b{i}" for i in range(8)]  # each once: receipts keep later listings from rerunning
    assert listings > 1  # slots free again: polling resumed
