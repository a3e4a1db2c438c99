"""A TCP proxy for fault injection: cut connections, refuse new ones, or stall traffic."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator


class TCPProxy:
    """Forwards 127.0.0.1:<port> to a target, in a thread of its own."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._accepting = True
        self.connections = 0  # forwarded since the start
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> TCPProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def _call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._accepting:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _cut(self, accept: bool) -> None:
        self._accepting = accept
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        """Drop every connection and refuse new ones until :meth:`restore`."""
        self._call(self._cut(False))

    def stall(self) -> None:
        """Keep connections open but forward nothing (a hung peer)."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def restore(self) -> None:
        async def _restore() -> None:
            self._accepting = True
            self._flowing.set()

        self._call(_restore())

    def close(self) -> None:
        async def _close() -> None:
            await self._cut(False)
            if self._server is not None:
                self._server.close()

        self._call(_close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextlib.contextmanager
def proxy(host: str, port: int) -> Iterator[TCPProxy]:
    p = TCPProxy(host, port).start()
    try:
        yield p
    finally:
        p.close()
