"""The S3 process: a mount's object source, serving the daemon from a process of its own.

The daemon (fs, cache, prefetch, on trio) starts this process once its mount is ready and sends
it every listing and every ranged read (source_process.py). It answers each with the listing, or
with the sizes and MD5 of the blocks it wrote into the memory the two processes share, or with
why it failed. In its own process, the S3 client (aiobotocore, aiohttp, TLS, the MD5 of every
object) has a GIL of its own and runs on another core beside the FUSE loop; as a thread of the
daemon, the two took turns on one GIL and a series copy at 20 ms took twice as long as the S3
side alone (doc/DESIGN.md).

Run as `python -m idcfs.s3.serve SETTINGS` (JSON) with the socket and the shared memory as
inherited file descriptors. It ends when the daemon closes its end of the socket (an unmount, or
the daemon's death). It ignores SIGINT and SIGTERM, which a terminal and systemd send to the
whole process group: the daemon decides when it ends, after the requests in flight.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import mmap
import signal
import socket
import sys

from ..errors import SourceError
from ..logs import setup_logging
from ..wire import CANCEL, FAILED, GET, HEADER, OK, READY, frame, unframe
from .endpoint import Health
from .source import ObjectSource

log = logging.getLogger("idcfs.s3")


class _Server:
    """The requests of one daemon, answered as they complete, in any order."""

    def __init__(self, source: ObjectSource, memory: memoryview,
                 writer: asyncio.StreamWriter) -> None:
        self._source = source
        self._memory = memory
        self._writer = writer
        self._tasks: dict[int, asyncio.Task] = {}

    def status(self) -> tuple[dict, int]:
        return self._source.health.as_dict(), self._source.hedging.hedged

    def send(self, message: tuple) -> None:
        self._writer.write(frame(message))

    async def serve(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    header = await reader.readexactly(HEADER.size)
                    message = unframe(await reader.readexactly(HEADER.unpack(header)[0]))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the daemon closed its end
                ident, kind = message[0], message[1]
                if kind == CANCEL:
                    task = self._tasks.get(ident)
                    if task is not None:
                        task.cancel()
                    continue
                task = asyncio.create_task(self._answer(ident, kind, message[2:]))
                self._tasks[ident] = task
                task.add_done_callback(lambda _, ident=ident: self._tasks.pop(ident, None))
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _answer(self, ident: int, kind: str, args: tuple) -> None:
        try:
            if kind == GET:
                value = await self._get(*args)
            else:
                value = await self._source.list_series(*args)
            answer = (ident, OK, value, self.status())
        except asyncio.CancelledError:
            answer = (ident, FAILED, "cancelled", self.status())
        except SourceError as exc:
            answer = (ident, FAILED, str(exc), self.status())
        except Exception as exc:  # noqa: BLE001 - a bug: the daemon gets an error, the log its cause
            log.exception("answering %s %s failed", kind, args[:2])
            answer = (ident, FAILED, f"the S3 process failed: {type(exc).__name__}: {exc}",
                      self.status())
        self.send(answer)

    async def _get(self, bucket: str, key: str, start: int, length: int, block_size: int,
                   offsets: list[int]) -> tuple[list[int], str | None]:
        """The range's blocks, each written where the daemon said; their sizes and MD5."""
        if len(offsets) * block_size < length:
            raise SourceError(f"reading s3://{bucket}/{key}: {len(offsets)} places for "
                              f"{length} bytes")
        into = [self._memory[at:at + block_size] for at in offsets]
        blocks = await self._source.get_blocks(bucket, key, start, length, block_size, into)
        return [len(block) for block in blocks], blocks.md5


async def serve(settings: dict) -> int:
    sock = socket.socket(fileno=settings["socket"])
    memory = memoryview(mmap.mmap(settings["memory"], settings["memory_size"]))
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    source = ObjectSource(settings["endpoint_url"], settings["max_connections"],
                          settings["ca_bundle"], Health())
    try:
        await source.start()
    except Exception as exc:  # noqa: BLE001 - said to the daemon, which logs it
        writer.write(frame((0, FAILED, f"the S3 client could not be made: {exc}", None)))
        await writer.drain()
        await source.close()
        return 1
    gc.freeze()  # botocore's service models live as long as the process (daemon.py)
    server = _Server(source, memory, writer)
    server.send((0, READY, None, server.status()))
    try:
        await server.serve(reader)
    finally:
        await source.close()
        writer.close()
    return 0


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = json.loads(sys.argv[1])
    setup_logging(settings["log_level"])
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
