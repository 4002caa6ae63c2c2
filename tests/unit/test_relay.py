"""The host's hop to the runtime's server (devhost.relay) against a scripted HTTP/1.1 peer on loopback:
each response framing passes through byte-exact, request bodies are framed, and a kept-alive connection
the peer closed is replaced for a body-less request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

from devhost.relay import Relay

RESPONSES = {
    b"/length": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
    b"/chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
    b"/close": b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end",
    b"/head": b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n",
}


class Peer:
    """Answers each request with RESPONSES[path]; records what it received; closes after /close."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while head := await _head(reader):
            body = b""
            if b"content-length: " in head:
                body = await reader.readexactly(int(head.split(b"content-length: ")[1].split(b"\r\n")[0]))
            elif b"transfer-encoding: chunked" in head:
                body = await reader.readuntil(b"0\r\n\r\n")
            self.requests.append(head + body)
            path = head.split(b" ")[1]
            writer.write(RESPONSES[path])
            await writer.drain()
            if path == b"/close":
                break
        writer.close()


async def _head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""


async def relayed(relay: Relay, method: str, path: str, body: AsyncIterator[bytes] | None = None,
                  headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, dict[bytes, bytes], bytes]:
    messages: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    await relay.forward(method, path, headers or [(b"host", b"x")], body, send)
    start, *bodies = messages
    assert bodies[-1] == {"type": "http.response.body", "body": b""}
    return start["status"], dict(start["headers"]), b"".join(m["body"] for m in bodies)


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_every_framing_passes_through_and_connections_are_reused() -> None:
    peer = Peer()
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    relay = Relay(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        assert await relayed(relay, "GET", "/length") == (200, {b"content-length": b"5", b"x-a": b"1"}, b"hello")
        assert await relayed(relay, "GET", "/chunked") == (200, {}, b"abcde")  # de-chunked, no transfer-encoding
        assert await relayed(relay, "HEAD", "/head") == (200, {b"content-length": b"99"}, b"")
        assert peer.connections == 1  # one kept-alive connection so far
        assert (await relayed(relay, "GET", "/close"))[2] == b"until the end"
        await relayed(relay, "POST", "/length", pieces(b"ab", b"c"))  # no length given: re-chunked
        await relayed(relay, "POST", "/length", pieces(b"xyz"), [(b"content-length", b"3")])
        assert peer.requests[-2].endswith(b"transfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")
        assert peer.requests[-1].endswith(b"content-length: 3\r\n\r\nxyz")
        assert peer.connections == 2  # the server closed after /close: a new connection
    finally:
        await relay.close()
        server.close()


async def test_a_kept_alive_connection_found_closed_is_replaced() -> None:
    peer = Peer()
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    relay = Relay(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        await relayed(relay, "GET", "/length")
        [(_, writer)] = relay._idle
        writer.transport.abort()  # closed while idle: the next request must take a new one, not fail
        assert (await relayed(relay, "GET", "/length"))[2] == b"hello"
        assert peer.connections == 2
    finally:
        await relay.close()
        server.close()
