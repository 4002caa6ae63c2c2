"""Requests through the HTTP face (``shared.http_api``) as the Functions host hands them over, without a server:
a Starlette request with its headers, the peer address, and the body as ASGI messages (a client that goes away
mid-body is an ``http.disconnect``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

PEER = "198.51.100.7"  # the address the platform saw (the socket's peer here; X-Forwarded-For in Azure)


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


async def call(app: Any, handler: Callable[[Request, Any], Awaitable[Response]], method: str, path: str, *,
               headers: dict[str, str] | None = None, query: dict[str, str] | None = None,
               path_params: dict[str, str] | None = None, body: list[bytes] | None = None,
               cut: bool = False, peer: str = PEER) -> Answer:
    """One request through ``shared.http_api``; ``cut``: the client goes away after ``body``."""
    scope = {"type": "http", "method": method, "path": path, "path_params": path_params or {},
             "query_string": urlencode(query or {}).encode(), "client": (peer, 50_000),
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]}
    pieces = list(body or [])

    async def receive() -> dict[str, Any]:
        if pieces:
            piece = pieces.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(pieces) or cut}
        if cut:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"", "more_body": False}

    response = await handler(Request(scope, receive), app)
    if isinstance(response, StreamingResponse):
        content = b"".join([bytes(p) async for p in response.body_iterator])  # type: ignore[arg-type]
    else:
        content = bytes(response.body)
    return Answer(response.status_code, content, dict(response.headers))


