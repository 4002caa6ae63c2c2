"""A TCP proxy in front of PostgreSQL that a test can cut, stall and restore.

It stands in for a database restart without touching the shared server: ``cut()`` aborts
every proxied connection (both sides, so the server rolls back their transactions) and stops
listening, so new connections are refused; ``restore()`` listens again on the same port.
``stall()`` keeps accepting connections but forwards nothing (a black hole, for timeouts).
With ``delay`` it also adds that many seconds to every chunk in each direction, without
limiting throughput (a round trip over a network; the scale simulation uses it). With ``tls`` it
terminates TLS as a PostgreSQL server does (it answers the client's SSLRequest with ``S`` and takes the
handshake with that certificate, refusing clients that do not ask for TLS) and forwards the plaintext
protocol to the server: a database reached over verified TLS, made from the suite's own server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["PgProxy"]

_CHUNK = 64 * 1024


class PgProxy:
    """Forward 127.0.0.1:<port> to ``target_host:target_port`` until told otherwise."""

    def __init__(self, target_host: str, target_port: int, *, unix_socket: str | None = None,
                 delay: float = 0.0, tls: ssl.SSLContext | None = None) -> None:
        self._target = (target_host, target_port)
        self._delay, self._tls = delay, tls
        self._unix_socket = unix_socket  # an embedded PostgreSQL listens on a unix socket only
        self._server: asyncio.Server | None = None
        self._port = 0
        self._stalled = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections_accepted = 0

    @classmethod
    def for_url(cls, url: str, *, delay: float = 0.0, tls: ssl.SSLContext | None = None) -> PgProxy:
        parts = urlsplit(url)
        socket_dir = dict(parse_qsl(parts.query)).get("host", "")
        if socket_dir.startswith("/"):  # postgresql://user@/db?host=/run/dir: the socket file is in that folder
            return cls("", 0, unix_socket=f"{socket_dir}/.s.PGSQL.{parts.port or 5432}", delay=delay, tls=tls)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432, delay=delay, tls=tls)

    @property
    def port(self) -> int:
        return self._port

    def url(self, database_url: str, host: str = "127.0.0.1") -> str:
        """``database_url`` pointed at this proxy instead of the server (by ``host``: a name or an address)."""
        parts = urlsplit(database_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{host}:{self._port}" if userinfo else f"{host}:{self._port}"
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "host"])
        return urlunsplit(parts._replace(netloc=netloc, query=query))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self._port, reuse_address=True)
        self._port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Drop every connection at once and refuse new ones (the server "went down")."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._drop_all()
        if server is not None:  # from Python 3.12 on, this waits for the connections dropped above
            await server.wait_closed()

    async def restore(self) -> None:
        """Accept and forward connections again, on the same port."""
        self._stalled = False
        if self._server is None:
            await self.start()

    async def stall(self) -> None:
        """Accept new connections but never answer them; existing ones are dropped."""
        self._stalled = True
        await self._drop_all()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        self._writers.add(writer)
        if self._stalled:
            return  # held open, silent, until dropped
        if self._tls is not None and not await _terminate_tls(reader, writer, self._tls):
            writer.transport.abort()
            return
        try:
            if self._unix_socket:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix_socket)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        pump = _pump if self._delay <= 0 else functools.partial(_delayed_pump, delay=self._delay)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


async def _terminate_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: ssl.SSLContext) -> bool:
    """Answer the SSLRequest and take the TLS handshake, as the server would; False for anything else."""
    try:
        if await reader.readexactly(8) != _SSL_REQUEST:
            return False
        writer.write(b"S")
        await writer.drain()
        await writer.start_tls(tls)
    except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError):
        return False
    return True


async def _delayed_pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, delay: float) -> None:
    """Forward each chunk ``delay`` seconds after it arrived; chunks in flight overlap (latency, not a rate)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                return
            await asyncio.sleep(max(0.0, due - loop.time()))
            sink.write(data)
            await sink.drain()

    sender = asyncio.create_task(send())
    try:
        while data := await source.read(_CHUNK):
            queue.put_nowait((loop.time() + delay, data))
        queue.put_nowait((loop.time() + delay, b""))
        await sender
    except (ConnectionError, OSError):
        pass
    finally:
        sender.cancel()
        sink.transport.abort()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(_CHUNK):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        sink.transport.abort()
