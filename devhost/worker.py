"""The host's side of the worker protocol, spoken to Microsoft's Python runtime (``azure_functions_runtime``).

In Azure the .NET host streams protobuf messages over gRPC to a thin proxy worker, which hands each to
one of the runtime's coroutines as a ``WorkerRequest`` (the message, plus ``properties`` with the
protobuf module and the host address). Here the host and that proxy are one process and the messages
are passed as objects, in the order the host sends them:

1. ``WorkerInitRequest`` (app directory, host capabilities): the runtime imports and indexes
   ``function_app.py``, starts its own HTTP server when the app uses the FastAPI streaming extension
   and answers with capabilities, the server's address among them (``HttpUri``);
2. ``FunctionsMetadataRequest``: the functions and their bindings, as the runtime indexed them;
3. ``FunctionLoadRequest`` per function;
4. ``InvocationRequest`` per trigger: input bindings as ``TypedData`` and trigger metadata.

Not sent: ``FunctionEnvironmentReloadRequest``. Azure sends it only to specialise a placeholder worker,
after the proxy worker has swapped in the app's own packages (a fresh ``azure_functions_runtime``
among them); ``func start`` never sends it. Replayed in one process after a placeholder init it fails
(the runtime keeps what it concluded about HTTP streaming while no app was loaded), so it would test
this host, not the app. A response with a failure status raises ``WorkerError`` carrying the
runtime's own message.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure_functions_runtime as runtime
import azure_functions_runtime.version

from devhost import protocol
from devhost.functions import Function, from_metadata

__all__ = ["RUNTIME_VERSION", "Worker", "WorkerError"]

log = logging.getLogger("devhost")
RUNTIME_VERSION: str = azure_functions_runtime.version.VERSION
HOST_VERSION = "4.0-devhost"  # what WorkerInitRequest.host_version says: the Functions host 4.x protocol
HTTP_URI = "HttpUri"  # the worker capability naming the runtime's HTTP server


class WorkerError(RuntimeError):
    """The runtime answered a request with a failure status. The text ends with the runtime's message
    (``<exception type>: <text>``); ``kind`` is the exception type alone, what invocation logs show."""

    def __init__(self, what: str, message: str = "") -> None:
        super().__init__(f"{what} failed in azure-functions-runtime {RUNTIME_VERSION}: {message or 'no message'}")
        self.kind = message.split(":", 1)[0] if message else "unknown"


@dataclass(frozen=True)
class WorkerRequest:
    """What the proxy worker hands the runtime: the streamed message and the request's properties."""

    name: str
    request: protocol.StreamingMessage
    properties: dict[str, Any] = field(default_factory=dict)


def _checked(response: Any, what: str) -> Any:
    if response.result.status != protocol.StatusResult.Success:
        raise WorkerError(what, response.result.exception.message)
    return response


@dataclass
class Worker:
    """One runtime, initialised once; ``functions`` and ``http_uri`` are known after ``start``."""

    app_directory: Path
    host: str = "127.0.0.1"
    functions: list[Function] = field(default_factory=list)
    capabilities: dict[str, str] = field(default_factory=dict)

    @property
    def http_uri(self) -> str | None:
        return self.capabilities.get(HTTP_URI)

    def _properties(self) -> dict[str, Any]:
        return {"protos": protocol, "host": self.host}

    async def start(self) -> None:
        runtime.start_threadpool_executor()
        init = protocol.WorkerInitRequest(host_version=HOST_VERSION, function_app_directory=str(self.app_directory))
        message = protocol.StreamingMessage(request_id=_request_id(), worker_init_request=init)
        response = _checked(await runtime.worker_init_request(
            WorkerRequest("WorkerInitRequest", message, self._properties())), "worker init")
        self.capabilities = dict(response.capabilities)
        await self._index_and_load()

    async def _index_and_load(self) -> None:
        request = protocol.FunctionsMetadataRequest(function_app_directory=str(self.app_directory))
        message = protocol.StreamingMessage(request_id=_request_id(), functions_metadata_request=request)
        response = _checked(await runtime.functions_metadata_request(
            WorkerRequest("FunctionsMetadataRequest", message)), "function metadata")
        self.functions = [from_metadata(metadata) for metadata in response.function_metadata_results]
        for metadata in response.function_metadata_results:
            load = protocol.FunctionLoadRequest(function_id=metadata.function_id, metadata=metadata)
            message = protocol.StreamingMessage(request_id=_request_id(), function_load_request=load)
            _checked(await runtime.function_load_request(WorkerRequest("FunctionLoadRequest", message)),
                     f"loading {metadata.name}")

    async def invoke(self, function: Function, inputs: Mapping[str, protocol.TypedData], *,
                     trigger_metadata: Mapping[str, protocol.TypedData] | None = None,
                     invocation_id: str | None = None) -> protocol.InvocationResponse:
        """Run one invocation; ``WorkerError`` when the function raised (the runtime's message)."""
        request = protocol.InvocationRequest(
            invocation_id=invocation_id or str(uuid.uuid4()), function_id=function.function_id,
            input_data=[protocol.ParameterBinding(name=name, data=data) for name, data in inputs.items()],
            trigger_metadata=dict(trigger_metadata or {}))
        message = protocol.StreamingMessage(request_id=_request_id(), invocation_request=request)
        response = await runtime.invocation_request(WorkerRequest("InvocationRequest", message))
        result: protocol.InvocationResponse = _checked(response, function.name)
        return result

    def stop(self) -> None:
        runtime.stop_threadpool_executor()


def _request_id() -> str:
    return uuid.uuid4().hex
