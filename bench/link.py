"""A network link in user space (this kernel has no netem): a TCP proxy in front of the endpoint
where every request waits a fixed latency before the server sees it, and every byte of every
answer crosses one shared link of a fixed rate, first come first served, as on a real access
link where all of a tool's connections share the bandwidth.

    python bench/link.py LISTEN_PORT TARGET_PORT LATENCY_MS [RATE_MBIT_S]
"""

from __future__ import annotations

import asyncio
import sys

CHUNK = 64 << 10
# Sleeping for less than this costs more than it paces: later chunks make up for it.
SLACK = 0.002


class Link:
    """When the bytes of each chunk leave the shared link: after everything ahead of them. A
    link idle for a moment (the proxy was busy reading) lets the next bytes make up for up to
    SLACK of it, as a real link's queue would have held them."""

    def __init__(self, rate_bits: float | None) -> None:
        self.rate = rate_bits
        self.free_at = 0.0

    def departure(self, nbytes: int, now: float) -> float:
        if not self.rate:
            return now
        self.free_at = max(now - SLACK, self.free_at) + nbytes * 8 / self.rate
        return self.free_at


async def _requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    delay: float) -> None:
    """Client to server: each chunk is held for the latency, order kept."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def forward() -> None:
        while (item := await queue.get()) is not None:
            due, data = item
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    task = asyncio.create_task(forward())
    try:
        while data := await reader.read(CHUNK):
            queue.put_nowait((loop.time() + delay, data))
    finally:
        queue.put_nowait(None)
        await task


async def _answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   link: Link) -> None:
    """Server to client: through the shared link."""
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(4 * CHUNK if link.rate else 1 << 20):
            leave = link.departure(len(data), loop.time())
            if leave - loop.time() > SLACK:
                await asyncio.sleep(leave - loop.time())
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def _serve(target: int, delay: float, link: Link, client_r, client_w) -> None:
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(_requests(client_r, server_w, delay), _answers(server_r, client_w, link))
    except (ConnectionError, OSError):
        pass
    finally:
        client_w.close()
        server_w.close()


async def main(listen: int, target: int, delay_ms: float, rate_mbit: float | None) -> None:
    link = Link(rate_mbit * 1e6 if rate_mbit else None)
    # asyncio keeps only weak references to tasks: a connection whose client stopped reading
    # would be collected while pending, with a warning on stderr.
    connections: set[asyncio.Task] = set()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(_serve(target, delay_ms / 1000, link, reader, writer))
        connections.add(task)
        task.add_done_callback(connections.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    rate = float(sys.argv[4]) if len(sys.argv) > 4 and float(sys.argv[4]) > 0 else None
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), rate))
