"""Blob polling and the timer, as the Functions host runs them (source LogsAndContainerScan).

Blob trigger: every ``poll_seconds`` the container is listed, unless every slot is busy (a
backlog already found is being worked through: listing it again would cost more than the
uploads, as a real host's receipts or Event Grid do not); each blob version (name and ETag)
not yet handled is passed to the function as a plain ``azure.storage.blob.BlobClient``,
the object the SDK-type binding builds. A version that succeeded gets a receipt (it is not
run again); one that fails is retried on the next polls, and after ``poison_threshold``
failures a message goes to the ``webjobs-blobtrigger-poison`` queue and the host stops
retrying it, as the real host does.

Timer: fires on the NCRONTAB schedule with an ``azure.functions.TimerRequest``
(``past_due`` when the host was late); one run at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure.functions.timer import TimerRequest
from azure.storage.blob import BlobClient
from azure.storage.blob.aio import ContainerClient
from azure.storage.queue.aio import QueueClient

from devhost.functions import FunctionSpec
from devhost.ncrontab import Schedule

__all__ = ["BlobPoller", "TimerRunner"]

log = logging.getLogger("devhost")
POISON_QUEUE = "webjobs-blobtrigger-poison"


@dataclass
class BlobPoller:
    spec: FunctionSpec
    container: str
    connection_string: str
    poll_seconds: float = 2.0
    poison_threshold: int = 5
    concurrency: int = 4
    receipts: set[tuple[str, str]] = field(default_factory=set)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)

    async def run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        running: dict[tuple[str, str], asyncio.Task[None]] = {}
        async with ContainerClient.from_connection_string(self.connection_string, self.container) as client:
            while True:
                if len(running) >= self.concurrency:  # every slot busy and a backlog queued: nothing to list for
                    await asyncio.sleep(self.poll_seconds)
                    continue
                try:
                    async for item in client.list_blobs():
                        version = (item.name, str(item.etag))
                        if version not in self.receipts and version not in running:
                            running[version] = asyncio.create_task(self._invoke(version, slots))
                            running[version].add_done_callback(_forget(running, version))
                except Exception as exc:  # storage down: keep polling, say so once per round
                    log.warning("listing %s failed: %s", self.container, type(exc).__name__)
                await asyncio.sleep(self.poll_seconds)

    async def _invoke(self, version: tuple[str, str], slots: asyncio.Semaphore) -> None:
        name = version[0]
        async with slots:
            client = BlobClient.from_connection_string(self.connection_string, self.container, name)
            try:
                await self.spec.handler(client)
            except Exception as exc:
                await self._failed(version, exc)
                return
            finally:
                client.close()
        self.receipts.add(version)
        self.failures.pop(version, None)

    async def _failed(self, version: tuple[str, str], exc: BaseException) -> None:
        count = self.failures.get(version, 0) + 1
        self.failures[version] = count
        log.error("%s failed for blob %s (attempt %d of %d): %s", self.spec.name, version[0], count,
                  self.poison_threshold, type(exc).__name__)
        if count >= self.poison_threshold:
            await self._poison(version)

    async def _poison(self, version: tuple[str, str]) -> None:
        message = {"Type": "BlobTrigger", "FunctionId": f"Host.Functions.{self.spec.name}", "BlobType": "BlockBlob",
                   "ContainerName": self.container, "BlobName": version[0], "ETag": version[1]}
        async with QueueClient.from_connection_string(self.connection_string, POISON_QUEUE) as queue:
            try:
                await queue.create_queue()
            except Exception:  # already exists
                log.debug("poison queue exists")
            await queue.send_message(json.dumps(message))
        log.error("blob %s moved to the %s queue after %d failures", version[0], POISON_QUEUE, self.poison_threshold)
        self.receipts.add(version)


def _forget(running: dict[tuple[str, str], asyncio.Task[None]],
            version: tuple[str, str]) -> Callable[[asyncio.Task[None]], None]:
    def done(_task: asyncio.Task[None]) -> None:
        running.pop(version, None)

    return done


@dataclass
class TimerRunner:
    spec: FunctionSpec
    schedule: Schedule
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    async def run(self) -> None:
        due = self.schedule.next_after(self.clock())
        while True:
            await asyncio.sleep(max(0.0, (due - self.clock()).total_seconds()))
            past_due = (self.clock() - due).total_seconds() > 1.0
            await self.fire(past_due=past_due)
            due = self.schedule.next_after(max(self.clock(), due))

    async def fire(self, *, past_due: bool = False) -> Any:
        try:
            return await self.spec.handler(TimerRequest(past_due=past_due))
        except Exception as exc:  # the real host logs and waits for the next occurrence; so do we
            log.error("%s failed: %s", self.spec.name, type(exc).__name__)
            return None
