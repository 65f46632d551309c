"""A TCP proxy on 127.0.0.1 that can be cut or made to stall: a store outage without touching the
real (shared) Redis server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``. ``cut()``: refuse and drop every connection;
    ``stall()``: accept and hold connections but forward nothing (a hung server); ``restore()``:
    drop what was held and forward again on the same port. ``hold_replies()``: requests still reach the
    server, its replies wait (an answer on its way back) until ``pass_replies()``. ``slow(rate)``: what clients
    send reaches the server at ``rate`` bytes a second at most (a thin or congested link), ``None`` at full speed."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode = "forward"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._replies = asyncio.Event()  # set: the server's replies are forwarded
        self._replies.set()
        self._budget: int | None = None  # bytes from clients still forwarded before every link drops
        self._losing = False  # the replies held are dropped with their links, not forwarded
        self.accepted = 0  # connections clients opened so far (a pooled client's high-water mark)
        self.rate: float | None = None  # bytes a second from clients (``slow``)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        try:
            if self.mode != "forward":
                await self._wake.wait()  # held until restore()/cut() drops it
                return
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._writers.add(upstream)
            await asyncio.gather(self._pipe(reader, upstream, outbound=True), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    outbound: bool = False) -> None:
        try:
            while data := await reader.read(65536):
                if self.mode != "forward":
                    await self._wake.wait()
                    return
                if outbound and self._budget is not None and len(data) >= self._budget:
                    writer.write(data[: self._budget])  # the server gets this much of the request, then the link dies
                    await writer.drain()
                    self._budget = None
                    for w in list(self._writers):
                        w.close()
                    return
                if outbound and self._budget is not None:
                    self._budget -= len(data)
                if not outbound:
                    await self._replies.wait()
                    if self._losing:
                        return
                if outbound and self.rate:
                    await self._trickle(writer, data)
                    continue
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def _trickle(self, writer: asyncio.StreamWriter, data: bytes, piece: int = 4096) -> None:
        """``data`` at ``rate`` bytes a second, a piece at a time."""
        for start in range(0, len(data), piece):
            writer.write(data[start:start + piece])
            await writer.drain()
            await asyncio.sleep(len(data[start:start + piece]) / (self.rate or float("inf")))

    def slow(self, rate: float | None) -> None:
        """Clients' bytes reach the server at ``rate`` bytes a second from now (``None``: full speed)."""
        self.rate = rate

    def hold_replies(self) -> None:
        """From now on the server's replies wait here; what clients send still reaches it."""
        self._replies.clear()

    def pass_replies(self) -> None:
        """The replies held, and those after them, forwarded."""
        self._replies.set()

    async def lose_held_replies(self) -> None:
        """Every link closed with the replies held on it lost (the server ran the commands; their clients read a
        closed connection), then replies forwarded again, on the same port, for the connections opened after."""
        self._losing = True
        try:
            for w in list(self._writers):
                w.close()
            self._writers.clear()
            self._replies.set()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        finally:
            self._losing = False

    def cut_after(self, n_bytes: int) -> None:
        """Forward ``n_bytes`` more from clients, then drop every connection: a link lost part way
        through a request. New connections are forwarded as before."""
        self._budget = n_bytes

    async def _drop_all(self) -> None:
        """Close every connection and let every handler finish on its own (no cancellation)."""
        for w in list(self._writers):
            w.close()
        self._writers.clear()
        self._wake.set()
        tasks = list(self._tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._wake = asyncio.Event()

    async def cut(self) -> None:
        """Connection refused from now on; open connections are closed."""
        self.mode = "cut"
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._drop_all()

    async def stall(self) -> None:
        """Connections are accepted and held; bytes go nowhere (a hung server or a black hole)."""
        await self._drop_all()
        self.mode = "stall"
        if self._server is None:
            await self.start()

    async def restore(self) -> None:
        self.mode = "cut"
        await self._drop_all()
        self.mode = "forward"
        if self._server is None:
            await self.start()


@contextlib.asynccontextmanager
async def tcp_proxy(host: str, port: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.cut()
