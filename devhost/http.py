"""HTTP functions under Starlette/uvicorn: same routes (``/api/<route>``), methods and auth levels.

A function-level route needs a function key, given as ``?code=`` or ``x-functions-key``:
``LOCAL_FUNCTION_KEY``, or one of the named ``LOCAL_FUNCTION_KEYS``. (Core Tools ignores auth
levels locally; this host checks them so the local setup behaves like Azure.) Anonymous routes
are open. Two functions may share a route with different methods, as in Azure.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Collection

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devhost.functions import FunctionSpec

__all__ = ["build_http_app"]

Endpoint = Callable[[Request], Awaitable[Response]]


def _authorised(request: Request, keys: Collection[str]) -> bool:
    given = (request.query_params.get("code") or request.headers.get("x-functions-key") or "").encode()
    return any(key and hmac.compare_digest(given, key.encode()) for key in keys)


def _endpoint(spec: FunctionSpec, function_keys: Collection[str]) -> Endpoint:
    needs_key = spec.value("authLevel") != "anonymous"

    async def endpoint(request: Request) -> Response:
        if needs_key and not _authorised(request, function_keys):
            return JSONResponse({"error": "Unauthorized", "message": "a valid function key is required"},
                                status_code=401)
        response: Response = await spec.handler(request)
        return response

    return endpoint


def build_http_app(specs: list[FunctionSpec], *, function_keys: Collection[str]) -> Starlette:
    routes = []
    for spec in specs:
        if spec.trigger != "httpTrigger":
            continue
        methods = [getattr(m, "value", m) for m in spec.binding.get("methods") or ["GET", "POST"]]
        routes.append(Route(f"/api/{spec.value('route') or spec.name}", _endpoint(spec, function_keys),
                            methods=methods, name=spec.name))
    return Starlette(routes=routes)
