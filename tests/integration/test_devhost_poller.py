"""The local host's blob polling against a real Azurite: what it lists, when, and what it runs."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from azure.storage.blob import BlobClient
from azure.storage.blob.aio import ContainerClient

from devhost.functions import FunctionSpec
from devhost.triggers import BlobPoller
from localinfra.azurite import Azurite

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

    async def handler(client: BlobClient) -> None:
        await release.wait()
        ran.append(client.blob_name)
        if len(ran) == 8:
            all_ran.set()

    monkeypatch.setattr(ContainerClient, "list_blobs", counted_list)
    spec = FunctionSpec("encrypt", "blobTrigger", {}, handler)
    poller = BlobPoller(spec, name, azurite.connection_string, poll_seconds=0.05, concurrency=2)
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
