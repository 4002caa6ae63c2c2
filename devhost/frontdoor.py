"""The host's HTTP front: ``/api/<route>`` to the function, function keys, then the runtime's own server.

What the Functions host does with an HTTP request to a Python 3.13 app that streams (FastAPI extension):
it matches the route template and method of each HTTP function, checks the function key where the
auth level asks for one, gives the invocation an id, forwards the request as it arrived to the HTTP
server the runtime reported at init (``HttpUri``), adding that id as ``x-ms-invocation-id``, and
sends the ``InvocationRequest`` (the route parameters in an otherwise empty ``RpcHttp``) with the same
id. The runtime's server pairs the two and answers with the function's response, which is streamed
back as it comes: status, headers and body are the runtime's.

A function-level route needs ``?code=`` or ``x-functions-key``: ``LOCAL_FUNCTION_KEY`` or one of
``LOCAL_FUNCTION_KEYS`` (Core Tools ignores auth levels locally; this host checks them, as Azure does).
A path that no route matches, method included, is 404 (the host's routes carry their methods).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from devhost import protocol
from devhost.functions import Function
from devhost.relay import Relay
from devhost.worker import Worker, WorkerError

__all__ = ["FrontDoor", "Route", "routes_of"]

log = logging.getLogger("devhost")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
INVOCATION_HEADER = b"x-ms-invocation-id"
FORWARDED_FOR = b"x-forwarded-for"
# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the message's: never forwarded.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade", INVOCATION_HEADER})
_PARAMETER = re.compile(r"\{\*?([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\??\}")


@dataclass(frozen=True)
class Route:
    function: Function
    pattern: re.Pattern[str]
    literal_segments: int

    def match(self, method: str, path: str) -> dict[str, str] | None:
        found = self.pattern.fullmatch(path) if method in self.function.methods else None
        return found.groupdict() if found else None


def _route(function: Function) -> Route:
    template = function.route.strip("/")
    pieces, literal = [], 0
    for segment in template.split("/"):
        if _PARAMETER.fullmatch(segment):
            name = _PARAMETER.fullmatch(segment).group(1)  # type: ignore[union-attr]
            pieces.append(f"(?P<{name}>.+)" if segment.startswith("{*") else f"(?P<{name}>[^/]+)")
        else:
            pieces.append(re.escape(segment))
            literal += 1
    return Route(function, re.compile("/".join(pieces), re.IGNORECASE), literal)


def routes_of(functions: Collection[Function]) -> list[Route]:
    """The HTTP functions' routes, literal segments before parameters (as the host's router ranks them)."""
    routes = [_route(f) for f in functions if f.trigger_type == "httpTrigger"]
    return sorted(routes, key=lambda r: -r.literal_segments)


def _authorised(scope: Scope, keys: Collection[str]) -> bool:
    query: bytes = scope.get("query_string", b"")
    code = parse_qs(query.decode("latin-1")).get("code", [""])[0] if b"code=" in query else ""
    given = code.encode() or next((v for k, v in scope["headers"] if k == b"x-functions-key"), b"")
    return any(key and hmac.compare_digest(given, key.encode()) for key in keys)


async def _answer(send: Send, status: int, body: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class ClientGone(ConnectionError):
    """The client went away before its request body ended: the forwarded request is aborted too."""


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client disconnected in the middle of its request body")
        if body := message.get("body", b""):
            yield body
        if not message.get("more_body", False):
            return


class FrontDoor:
    """The ASGI app of the host's HTTP port (served by uvicorn)."""

    def __init__(self, worker: Worker, function_keys: Collection[str], *, function_timeout: float = 600) -> None:
        if worker.http_uri is None:
            raise WorkerError("worker init", "the runtime started no HTTP server (function_app.py must use the "
                              "FastAPI streaming extension)")
        self.worker, self.function_keys = worker, function_keys
        self.function_timeout = function_timeout
        self.routes = routes_of(worker.functions)
        self.relay = Relay(worker.http_uri)
        self._pending: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        await self.relay.close()

    def find(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            params = route.match(method, path)
            if params is not None:
                return route, params
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        found = self.find(scope["method"], path[len("/api/"):]) if path.startswith("/api/") else None
        if found is None:
            await _answer(send, 404, {"error": "NotFound", "message": "no function has this route and method"})
            return
        route, params = found
        if not route.function.anonymous and not _authorised(scope, self.function_keys):
            await _answer(send, 401, {"error": "Unauthorized", "message": "a valid function key is required"})
            return
        await self._forward(route.function, params, scope, receive, send)

    async def _forward(self, function: Function, params: dict[str, str], scope: Scope, receive: Receive,
                       send: Send) -> None:
        invocation_id = str(uuid.uuid4())
        http = protocol.TypedData(http=protocol.RpcHttp(params=params))
        invocation = asyncio.create_task(
            self.worker.invoke(function, {function.trigger["name"]: http}, invocation_id=invocation_id))
        try:
            await self._relay(scope, receive, send, invocation_id)
        except BaseException:
            # As the host on a client abort: the invocation runs on (the function sees the disconnect),
            # bounded by functionTimeout; nobody waits for it here.
            self._pending.add(asyncio.create_task(_settled(invocation, function.name, self.function_timeout)))
            self._pending = {task for task in self._pending if not task.done()}
            raise
        await _settled(invocation, function.name, self.function_timeout)

    async def _relay(self, scope: Scope, receive: Receive, send: Send, invocation_id: str) -> None:
        # ASGI names are lowercase. The caller's own X-Forwarded-For is replaced by its address, as the host
        # does for the worker (shared.identity takes the client's address from it).
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP and k != FORWARDED_FOR]
        headers.append((INVOCATION_HEADER, invocation_id.encode()))
        if client := scope.get("client"):
            headers.append((FORWARDED_FOR, str(client[0]).encode()))
        target = scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
        await self.relay.forward(scope["method"], target, headers, _request_body(receive) if has_body else None,
                                 send)


async def _settled(invocation: asyncio.Task[Any], name: str, limit: float) -> None:
    """The invocation's outcome is logged (its response went back over the runtime's HTTP server);
    one still running after ``limit`` seconds (host.json's functionTimeout) is cancelled, as the host does."""
    try:
        if not invocation.done():  # a streamed response: the function returned before its body went out
            await asyncio.wait_for(invocation, limit)
        invocation.result()
    except WorkerError as exc:
        log.error("%s failed: %s", name, exc.kind)
    except TimeoutError:
        log.error("%s ran past functionTimeout (%.0f s) and was cancelled", name, limit)
