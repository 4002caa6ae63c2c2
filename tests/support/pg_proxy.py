"""A TCP proxy in front of PostgreSQL that a test can cut, stall, restore, and make lose acknowledgements.

It stands in for a database restart without touching the shared server: ``cut()`` aborts
every proxied connection (both sides, so the server rolls back their transactions) and stops
listening, so new connections are refused; ``restore()`` listens again on the same port.
``stall()`` keeps accepting connections but forwards nothing (a black hole, for timeouts).
``drop_ack(containing)`` loses the answer to a commit: it reads the protocol of every connection
(messages, not bytes: the statements each transaction runs, prepared or not), and when a
transaction that ran a statement containing ``containing`` sends its ``COMMIT``, the proxy forwards
it, lets the server commit, and cuts the connection (both sides) when the server's
``CommandComplete`` for it arrives, before the client sees it. A statement outside a transaction
(autocommit) commits at its ``Sync``: its answer is withheld up to the ``ReadyForQuery`` that
follows, and the connection cut there. ``forward=False`` cuts instead of forwarding the COMMIT (the
server rolls back: a commit that surely failed), ``then_cut=True`` also cuts the whole proxy at that
moment (the client cannot even ask what happened until ``restore()``). Reading the protocol is on with
``read_protocol`` (``for_url``'s default: a proxy made for a database URL); a proxy of any other TCP
(Azurite's blob endpoint) forwards bytes only. To read the protocol the proxy answers a client's
SSLRequest with ``N`` itself (the plain proxy never carries TLS: the suite's server does not offer it).
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
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["AckDrop", "PgProxy"]

_CHUNK = 64 * 1024


@dataclass
class AckDrop:
    """One ``drop_ack`` rule: the statement text it waits for, how many more commits to lose, how many it lost."""

    containing: str
    times: int = 1
    forward: bool = True  # False: the COMMIT is not sent at all (the server rolls back)
    then_cut: bool = False  # also cut the whole proxy (new connections refused until ``restore``)
    dropped: int = 0
    fired: asyncio.Event = field(default_factory=asyncio.Event)

    def _lose(self) -> None:
        self.dropped += 1
        self.fired.set()


@dataclass
class _Session:
    """What the proxy reads of one connection's protocol."""

    started: bool = False  # the startup message went by: every message is typed from now on
    prepared: dict[bytes, str] = field(default_factory=dict)  # statement name -> its text
    in_transaction: bool = False
    ran: list[str] = field(default_factory=list)  # what the open transaction ran
    armed: AckDrop | None = None
    at: Literal["commit", "ready"] = "commit"  # where its answer is lost: the COMMIT's, or the next ReadyForQuery


class _Cut(Exception):
    """The connection is to be cut here (both sides)."""


class PgProxy:
    """Forward 127.0.0.1:<port> to ``target_host:target_port`` until told otherwise."""

    def __init__(self, target_host: str, target_port: int, *, unix_socket: str | None = None,
                 delay: float = 0.0, tls: ssl.SSLContext | None = None, read_protocol: bool = False) -> None:
        self._target = (target_host, target_port)
        self._delay, self._tls, self._read_protocol = delay, tls, read_protocol
        self._unix_socket = unix_socket  # an embedded PostgreSQL listens on a unix socket only
        self._server: asyncio.Server | None = None
        self._port = 0
        self._stalled = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rules: list[AckDrop] = []
        self.connections_accepted = 0

    @classmethod
    def for_url(cls, url: str, *, delay: float = 0.0, tls: ssl.SSLContext | None = None,
                read_protocol: bool = True) -> PgProxy:
        parts = urlsplit(url)
        socket_dir = dict(parse_qsl(parts.query)).get("host", "")
        reading = read_protocol and delay <= 0
        if socket_dir.startswith("/"):  # postgresql://user@/db?host=/run/dir: the socket file is in that folder
            return cls("", 0, unix_socket=f"{socket_dir}/.s.PGSQL.{parts.port or 5432}", delay=delay, tls=tls,
                       read_protocol=reading)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432, delay=delay, tls=tls, read_protocol=reading)

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

    def drop_ack(self, containing: str, *, times: int = 1, forward: bool = True, then_cut: bool = False) -> AckDrop:
        """Lose the answer to the next ``times`` commits of a transaction (or autocommit statement) that ran a
        statement containing ``containing`` (see the module's doc); the rule counts what it lost."""
        if not self._read_protocol:
            raise ValueError("this proxy forwards bytes only: make it with read_protocol=True (for_url does)")
        rule = AckDrop(containing, times, forward, then_cut)
        self._rules.append(rule)
        return rule

    def _match(self, statements: list[str]) -> AckDrop | None:
        for rule in self._rules:
            if rule.times > 0 and any(rule.containing in text for text in statements):
                rule.times -= 1
                return rule
        return None

    def _cut_now(self, *writers: asyncio.StreamWriter, everything: bool) -> None:
        """Abort ``writers`` (one connection, both sides); with ``everything`` every connection, and stop listening."""
        if everything and self._server is not None:
            self._server.close()
            self._server = None
        for writer in (list(self._writers) if everything else writers):
            writer.transport.abort()

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
        if self._delay > 0:
            pump = functools.partial(_delayed_pump, delay=self._delay)
            pumps = [pump(reader, up_writer), pump(up_reader, writer)]
        elif not self._read_protocol:
            pumps = [_pump(reader, up_writer), _pump(up_reader, writer)]
        else:
            session = _Session()
            pumps = [self._from_client(reader, writer, up_writer, session),
                     self._from_server(up_reader, writer, up_writer, session)]
        for coroutine in pumps:
            task = asyncio.create_task(coroutine)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # --- reading the protocol (only to lose acknowledgements on purpose) ------------------------

    async def _from_client(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter,
                           server: asyncio.StreamWriter, session: _Session) -> None:
        buffer = bytearray()
        try:
            while data := await reader.read(_CHUNK):
                buffer += data
                out = bytearray()
                try:
                    while (message := _take(buffer, typed=session.started)) is not None:
                        if self._client_message(message, session, client):
                            out += message
                except _Cut as cut:
                    if out:
                        server.write(out)
                    self._cut_now(client, server, everything=bool(cut.args and cut.args[0]))
                    return
                if out:
                    server.write(out)
                    await server.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            server.transport.abort()

    def _client_message(self, message: bytes, session: _Session, client: asyncio.StreamWriter) -> bool:
        """Note what ``message`` does; whether to forward it (``_Cut`` to cut the connection instead)."""
        if not session.started:
            code = int.from_bytes(message[4:8], "big")
            if code in (_SSL_CODE, _GSSENC_CODE):  # no TLS through this proxy: it must read the messages
                client.write(b"N")
                return False
            session.started = code != _CANCEL_CODE
            return True
        kind, body = message[:1], message[5:]
        if kind == b"Q":
            return self._simple_query(_cstring(body).decode(errors="replace"), session)
        if kind == b"P":
            name, rest = body.split(b"\0", 1)
            session.prepared[name] = _cstring(rest).decode(errors="replace")
        elif kind == b"B":
            statement = body.split(b"\0", 2)[1]
            text = session.prepared.get(statement, "")
            if session.in_transaction:
                session.ran.append(text)
            elif (rule := self._match([text])) is not None:  # autocommit: it commits at its Sync
                return self._arm(rule, session, "ready")
        return True

    def _simple_query(self, text: str, session: _Session) -> bool:
        head = text.lstrip().upper()
        if head.startswith(("BEGIN", "START TRANSACTION")):
            session.in_transaction, session.ran = True, []
        elif head.startswith(("COMMIT", "END")):
            ran, session.in_transaction, session.ran = session.ran, False, []
            if (rule := self._match(ran)) is not None:
                return self._arm(rule, session, "commit")
        elif head.startswith(("ROLLBACK", "ABORT")) and not head.startswith("ROLLBACK TO"):
            session.in_transaction, session.ran = False, []
        elif session.in_transaction:
            session.ran.append(text)
        elif (rule := self._match([text])) is not None:
            return self._arm(rule, session, "ready")
        return True

    def _arm(self, rule: AckDrop, session: _Session, at: Literal["commit", "ready"]) -> bool:
        if not rule.forward:  # the commit never reaches the server: it rolls back when the connection goes
            rule._lose()
            raise _Cut(rule.then_cut)
        session.armed, session.at = rule, at
        return True

    async def _from_server(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter,
                           server: asyncio.StreamWriter, session: _Session) -> None:
        buffer, withheld = bytearray(), bytearray()
        try:
            while data := await reader.read(_CHUNK):
                buffer += data
                out = bytearray()
                while (message := _take(buffer, typed=True)) is not None:
                    rule = session.armed
                    if rule is None:
                        out += message
                        continue
                    kind = message[:1]
                    if kind == b"E":  # the statement or the commit failed: nothing was committed, nothing to lose
                        session.armed, rule.times = None, rule.times + 1
                        out += withheld + message
                        withheld.clear()
                    elif session.at == "commit" and kind == b"C":
                        if not _cstring(message[5:]).startswith(b"COMMIT"):  # ROLLBACK: it did not commit
                            session.armed, rule.times = None, rule.times + 1
                            out += message
                            continue
                        self._lose(rule, out, client, server)
                        return
                    elif session.at == "ready" and kind == b"Z":
                        self._lose(rule, out, client, server)
                        return
                    elif session.at == "ready":
                        withheld += message  # the statement's answer: withheld with its ReadyForQuery
                    else:
                        out += message
                if out:
                    client.write(out)
                    await client.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            client.transport.abort()

    def _lose(self, rule: AckDrop, before: bytearray, client: asyncio.StreamWriter,
              server: asyncio.StreamWriter) -> None:
        """The server committed; the client gets what came before, never the answer: the connection is cut."""
        if before:
            client.write(before)
        rule._lose()
        self._cut_now(client, server, everything=rule.then_cut)

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


_SSL_CODE, _GSSENC_CODE, _CANCEL_CODE = 80877103, 80877104, 80877102
_SSL_REQUEST = (8).to_bytes(4, "big") + _SSL_CODE.to_bytes(4, "big")


def _take(buffer: bytearray, *, typed: bool) -> bytes | None:
    """The first whole message of ``buffer`` (removed from it), or None until it has arrived whole."""
    start = 1 if typed else 0
    if len(buffer) < start + 4:
        return None
    total = start + int.from_bytes(buffer[start:start + 4], "big")
    if len(buffer) < total:
        return None
    message = bytes(buffer[:total])
    del buffer[:total]
    return message


def _cstring(data: bytes) -> bytes:
    return data.split(b"\0", 1)[0]


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
