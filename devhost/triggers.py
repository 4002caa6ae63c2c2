"""Blob polling and the timer, as the Functions host runs them (source LogsAndContainerScan); the
invocations go to the runtime (``devhost.worker``), carrying what the host sends.

Blob trigger: every ``poll_seconds`` the container is listed, unless every slot is busy (a
backlog already found is being worked through: listing it again would cost more than the
uploads, as a real host's receipts or Event Grid do not). Each blob version (name and ETag)
not yet handled is invoked with the model binding data the Blob extension sends for SDK-type
bindings (``AzureStorageBlobs``: connection setting name, container, blob name) and the trigger
metadata (``BlobTrigger``, ``Uri``, the ``{name}`` of the path); the runtime's blob extension turns
it into the ``BlobClient``. A version that succeeded gets a receipt (it is not run again); one
that fails is retried on the next polls, and after ``poison_threshold`` failures a message goes
to the ``webjobs-blobtrigger-poison`` queue and the host stops retrying it, as the real host does.

Timer: fires on the NCRONTAB schedule with the timer's JSON (``Schedule``, ``ScheduleStatus``,
``IsPastDue`` when the host was late), as the host sends it; one run at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from azure.storage.blob.aio import ContainerClient
from azure.storage.queue.aio import QueueClient

from devhost import protocol
from devhost.functions import Function
from devhost.ncrontab import Schedule
from devhost.worker import Worker, WorkerError

__all__ = ["BlobPoller", "TimerRunner", "blob_inputs", "timer_input"]

log = logging.getLogger("devhost")
POISON_QUEUE = "webjobs-blobtrigger-poison"


def _kind(exc: BaseException) -> str:
    """What a failed invocation's log line names: the exception's type (its text may name a blob)."""
    return exc.kind if isinstance(exc, WorkerError) else type(exc).__name__


def blob_inputs(function: Function, container: str, name: str, url: str) -> tuple[
        dict[str, protocol.TypedData], dict[str, protocol.TypedData]]:
    """The trigger's input (model binding data for the SDK-type binding) and its trigger metadata."""
    trigger = function.trigger
    content = {"Connection": trigger["connection"], "ContainerName": container, "BlobName": name}
    data = protocol.ModelBindingData(version="1.0", source="AzureStorageBlobs", content_type="application/json",
                                     content=json.dumps(content).encode())
    metadata = {"BlobTrigger": protocol.TypedData(string=f"{container}/{name}"), "Uri": protocol.TypedData(string=url),
                "name": protocol.TypedData(string=name)}
    return {trigger["name"]: protocol.TypedData(model_binding_data=data)}, metadata


def timer_input(function: Function, *, past_due: bool, last: datetime | None, due: datetime,
                following: datetime) -> dict[str, protocol.TypedData]:
    status = {"Last": (last or datetime.min.replace(tzinfo=UTC)).isoformat(), "Next": following.isoformat(),
              "LastUpdated": due.isoformat()}
    info = {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": status, "IsPastDue": past_due}
    return {function.trigger["name"]: protocol.TypedData(json=json.dumps(info))}


@dataclass
class BlobPoller:
    worker: Worker
    function: Function
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
                            url = client.get_blob_client(item.name).url
                            running[version] = asyncio.create_task(self._invoke(version, slots, url))
                            running[version].add_done_callback(_forget(running, version))
                except Exception as exc:  # storage down: keep polling, say so once per round
                    log.warning("listing %s failed: %s", self.container, type(exc).__name__)
                await asyncio.sleep(self.poll_seconds)

    async def _invoke(self, version: tuple[str, str], slots: asyncio.Semaphore, url: str) -> None:
        inputs, metadata = blob_inputs(self.function, self.container, version[0], url)
        async with slots:
            try:
                await self.worker.invoke(self.function, inputs, trigger_metadata=metadata)
            except Exception as exc:
                await self._failed(version, exc)
                return
        self.receipts.add(version)
        self.failures.pop(version, None)

    async def _failed(self, version: tuple[str, str], exc: BaseException) -> None:
        count = self.failures.get(version, 0) + 1
        self.failures[version] = count
        log.error("%s failed for blob %s (attempt %d of %d): %s", self.function.name, version[0], count,
                  self.poison_threshold, _kind(exc))
        if count >= self.poison_threshold:
            await self._poison(version)

    async def _poison(self, version: tuple[str, str]) -> None:
        message = {"Type": "BlobTrigger", "FunctionId": f"Host.Functions.{self.function.name}", "BlobType": "BlockBlob",
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
    worker: Worker
    function: Function
    schedule: Schedule
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    last: datetime | None = None

    async def run(self) -> None:
        due = self.schedule.next_after(self.clock())
        while True:
            await asyncio.sleep(max(0.0, (due - self.clock()).total_seconds()))
            past_due = (self.clock() - due).total_seconds() > 1.0
            await self.fire(due, past_due=past_due)
            due = self.schedule.next_after(max(self.clock(), due))

    async def fire(self, due: datetime, *, past_due: bool = False) -> bool:
        """One run; False when it failed (the real host logs it and waits for the next occurrence)."""
        inputs = timer_input(self.function, past_due=past_due, last=self.last, due=due,
                             following=self.schedule.next_after(due))
        self.last = due
        try:
            await self.worker.invoke(self.function, inputs)
        except Exception as exc:
            log.error("%s failed: %s", self.function.name, _kind(exc))
            return False
        return True
