"""The host's hop to the runtime's HTTP server: one request out, its response streamed back (HTTP/1.1).

What YARP does in the Functions host, for one local peer (the runtime's uvicorn): the request line and
headers as received (plus what the caller adds), the body as it arrives (``Content-Length`` kept, else
re-chunked), then the response's status and headers, and its body piece by piece as the runtime's server
sends it (``Content-Length``, chunked, or until the server closes). Connections are kept alive and
reused; one found closed by the server before a body-less request is retried once on a new one.
Hop-by-hop headers are the caller's to drop; ``Transfer-Encoding`` of a chunked response is dropped here
(the body is passed on de-chunked).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Relay"]

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
PIECE = 1024 * 1024  # read buffer and largest piece passed on: fewer, larger writes to the client
NO_BODY = frozenset({204, 304})


class Relay:
    def __init__(self, uri: str) -> None:
        parts = urlsplit(uri)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()

    async def forward(self, method: str, target: str, headers: Headers, body: AsyncIterator[bytes] | None,
                      send: Send) -> None:
        """Send the request; pass the response to ``send`` as ASGI messages while it arrives."""
        reused, (reader, writer) = await self._connection()
        try:
            await _write_request(writer, method, target, headers, body)
            try:
                status, response_headers = await _read_head(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                if not reused or body is not None:
                    raise
                writer.close()  # the server closed the kept-alive connection first: once more, on a new one
                reused, (reader, writer) = False, await self._open()
                await _write_request(writer, method, target, headers, None)
                status, response_headers = await _read_head(reader)
            await send({"type": "http.response.start", "status": status,
                        "headers": [(k, v) for k, v in response_headers if k != b"transfer-encoding"]})
            reusable = await _relay_body(reader, method, status, response_headers, send)
        except BaseException:
            writer.close()
            raise
        if reusable:
            self._idle.append((reader, writer))
        else:
            writer.close()

    async def _connection(self) -> tuple[bool, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return True, (reader, writer)
            writer.close()
        return False, await self._open()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, limit=PIECE)


async def _write_request(writer: asyncio.StreamWriter, method: str, target: str, headers: Headers,
                         body: AsyncIterator[bytes] | None) -> None:
    chunked = body is not None and not any(k.lower() == b"content-length" for k, _ in headers)
    lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
    lines += [k + b": " + v + b"\r\n" for k, v in headers]
    if chunked:
        lines.append(b"transfer-encoding: chunked\r\n")
    writer.write(b"".join(lines) + b"\r\n")
    if body is not None:
        async for piece in body:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
    await writer.drain()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, Headers]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head[:-4].split(b"\r\n")
    headers = [(name.strip().lower(), value.strip()) for name, _, value in (line.partition(b":") for line in lines)]
    return int(status_line.split(b" ", 2)[1]), headers


async def _relay_body(reader: asyncio.StreamReader, method: str, status: int, headers: Headers, send: Send) -> bool:
    """The response body to ``send``; whether the connection can carry another request."""
    fields = dict(headers)
    keep = fields.get(b"connection", b"").lower() != b"close"
    if method == "HEAD" or status in NO_BODY or 100 <= status < 200:
        pieces: AsyncIterator[bytes] = _nothing()
    elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        pieces = _chunks(reader)
    elif (length := fields.get(b"content-length")) is not None:
        pieces = _exactly(reader, int(length))
    else:
        pieces, keep = _until_closed(reader), False
    async for piece in pieces:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
    return keep


async def _nothing() -> AsyncIterator[bytes]:
    empty: tuple[bytes, ...] = ()
    for piece in empty:  # an async generator that yields nothing
        yield piece


async def _exactly(reader: asyncio.StreamReader, remaining: int) -> AsyncIterator[bytes]:
    while remaining:
        piece = await reader.read(min(PIECE, remaining))
        if not piece:
            raise asyncio.IncompleteReadError(b"", remaining)
        remaining -= len(piece)
        yield piece


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16):
        async for piece in _exactly(reader, size):
            yield piece
        await reader.readexactly(2)
    with contextlib.suppress(asyncio.IncompleteReadError):  # trailers (none from uvicorn), then the blank line
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass


async def _until_closed(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while piece := await reader.read(PIECE):
        yield piece
