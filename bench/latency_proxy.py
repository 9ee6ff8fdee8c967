"""A TCP proxy that delays every request by a fixed time, as a network round trip would.

Kernel netem is not available here, so latency is injected in user space: bytes from the client
are held for DELAY before they are passed to the server, and the server's answer comes straight
back. Every request (on a new or a kept-alive connection) thus waits DELAY before the server sees
it, and throughput is unchanged.

    python bench/latency_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS
"""

from __future__ import annotations

import asyncio
import sys


async def _delayed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def forward() -> None:
        while (item := await queue.get()) is not None:
            due, data = item
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()
        writer.write_eof() if writer.can_write_eof() else None

    task = asyncio.create_task(forward())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    finally:
        queue.put_nowait(None)
        await task


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 20):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def _serve(target: int, delay: float, client_r, client_w) -> None:
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(_delayed(client_r, server_w, delay), _pipe(server_r, client_w))
    except (ConnectionError, OSError):
        pass
    finally:
        client_w.close()
        server_w.close()


async def main(listen: int, target: int, delay_ms: float) -> None:
    # asyncio keeps only weak references to tasks: a connection whose client stopped reading
    # (rclone drops the rest of a 128 MiB range when it seeks) left a task that nothing else
    # referenced, which was collected while pending, with a warning on stderr.
    connections: set[asyncio.Task] = set()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(_serve(target, delay_ms / 1000, reader, writer))
        connections.add(task)
        task.add_done_callback(connections.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
