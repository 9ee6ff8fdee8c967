"""A real HTTP proxy for the tests, as HTTPS_PROXY names one: CONNECT tunnels (how HTTPS goes
through a proxy) and absolute-URI requests (plain HTTP), each recorded by the host it reached.

It runs in a thread of the test process, so a test reads what went through it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator


class Proxy:
    """A forwarding proxy on 127.0.0.1; `seen` lists the "host:port" of every request, `carried`
    counts the bytes it brought back from them."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.carried = 0
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                upstream_r, upstream_w = await asyncio.open_connection(host, int(port))
                self.seen.append(target)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:  # http://host:port/path: forwarded as it is, the proxy's own headers dropped
                hostport = target.split("://", 1)[1].split("/", 1)[0]
                host, _, port = hostport.rpartition(":")
                upstream_r, upstream_w = await asyncio.open_connection(host, int(port or 80))
                self.seen.append(hostport)
                upstream_w.write(head)
            await asyncio.gather(_pipe(reader, upstream_w), _pipe(upstream_r, writer, self._carry))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    def _carry(self, n: int) -> None:
        self.carried += n

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                count=lambda n: None) -> None:
    try:
        while data := await reader.read(1 << 16):
            count(len(data))
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


@contextlib.contextmanager
def running() -> Iterator[Proxy]:
    proxy = Proxy()
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
