"""A TCP proxy on 127.0.0.1 that can be cut or made to stall: a store outage without touching the
real (shared) Redis server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``. ``cut()``: refuse and drop every connection;
    ``stall()``: accept and hold connections but forward nothing (a hung server); ``restore()``:
    drop what was held and forward again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode = "forward"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if self.mode != "forward":
                await self._wake.wait()  # held until restore()/cut() drops it
                return
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._writers.add(upstream)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.mode != "forward":
                    await self._wake.wait()
                    return
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

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
