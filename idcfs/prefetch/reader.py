"""Demand reads through the block cache, with readahead and series prefetch in the background.

A small object is fetched whole on its first read: one GET, however the kernel splits the reads
(most DICOM instances are under 1 MB). A large one is read by the block, with readahead while
its reads form a stream (readahead.py). The files of a series opened one after another are
fetched ahead of the reader (series.py). Each series gets the policy of its modality
(policy.py): a slide's files are read by the block and never prefetched because a viewer opened
them all.

All background fetches go through the same single-flight block cache as demand reads, so nothing
is fetched twice, and the blocks in flight are bounded per mount, not per open file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import cachetools
import trio

from ..data_cache import BlockCache
from ..errors import SourceError
from ..objects import ObjectRef
from . import readahead
from .inflight import InFlight
from .policy import Policy
from .series import SeriesState
from .stream import Stream

log = logging.getLogger(__name__)


class Reader:
    def __init__(self, cache: BlockCache, concurrency: int = 32, policy: Policy = Policy()) -> None:
        self.cache = cache
        self.concurrency = concurrency
        self.policy = policy
        self._in_flight = InFlight(max(1, policy.in_flight_bytes // cache.block_size))
        self._series: cachetools.LRUCache = cachetools.LRUCache(maxsize=256)
        self._send, self._receive = trio.open_memory_channel(math.inf)
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Start the fetch workers in nursery; without them, the Reader only reads on demand.

        Background fetches go through one FIFO queue served by a fixed set of workers, so they
        happen in the order they were asked for (the order the reader will want them): trio
        schedules runnable tasks in a deliberately random order, and a task per fetch would
        fetch a series' files in random order.
        """
        self._nursery = nursery
        for _ in range(self.concurrency):
            nursery.start_soon(self._worker)

    def stream(self, obj: ObjectRef, modality: str = "") -> Stream:
        """A new open file of obj, in a series of this modality."""
        return Stream(obj, self.policy.for_modality(modality))

    def read_now(self, stream: Stream, offset: int, size: int) -> bytes | None:
        """The bytes if memory has them all now (readahead told of the read), else None."""
        data = self.cache.read_cached(stream.obj, offset, size)
        if data is not None and not stream.whole:
            self._read_ahead(stream, offset, size)
        return data

    async def read(self, stream: Stream, offset: int, size: int) -> bytes:
        obj = stream.obj
        if stream.whole:
            bs = self.cache.block_size
            needed = range(offset // bs, (min(obj.size, offset + size) - 1) // bs + 1)
            if not all(self.cache.cached_in_memory(obj, i) for i in needed):
                await self.cache.blocks(obj, 0, obj.blocks(bs) - 1)
        else:
            self._read_ahead(stream, offset, size)
        return await self.cache.read(obj, offset, size)

    def _read_ahead(self, stream: Stream, offset: int, size: int) -> None:
        if self._nursery is None or stream.direct:
            return
        for first, last in readahead.plan(stream, offset, size, self.cache.block_size):
            self._prefetch(stream.obj, first, last)

    def opened(self, series: object, position: int, sizes: Sequence[int], modality: str,
               object_at: Callable[[int], ObjectRef]) -> None:
        """A file of a series was opened: fetch the files after it, if that looks worthwhile."""
        if self._nursery is None:
            return
        policy = self.policy.for_modality(modality)
        state = self._series.get(series)
        if state is None:
            state = self._series[series] = SeriesState()
        for i in state.opened_file(position, sizes, policy):
            if sizes[i] <= policy.whole_object_limit:
                obj = object_at(i)
                self._prefetch(obj, 0, obj.blocks(self.cache.block_size) - 1, claim_now=False)

    def _prefetch(self, obj: ObjectRef, first: int, last: int, claim_now: bool = True) -> None:
        """Queue a background fetch. Readahead claims its blocks at once, so that a reader who
        arrives first waits for it instead of fetching a fragment alone; series prefetch claims
        when a worker gets to it, so a file queued far back never holds up its reader."""
        claimed = self.cache.claim(obj, first, last) if claim_now else None
        if claimed != []:
            self._send.send_nowait((obj, first, last, claimed))

    async def _worker(self) -> None:
        async for obj, first, last, claimed in self._receive:
            if claimed is None:
                claimed = self.cache.claim(obj, first, last)
            if not claimed:
                continue
            try:
                async with self._in_flight.take(len(claimed)):
                    # Checked while holding a share of the in-flight bound, so that everything
                    # in flight has room in the write queue when it lands.
                    await self.cache.pace_to_disk(self.policy.in_flight_bytes)
                    await self.cache.fill(obj, claimed)
                self.cache.stats["prefetched_blocks"] += len(claimed)
            except SourceError as exc:
                log.debug("prefetch failed (a reader will retry): %s", exc)
            except Exception:  # noqa: BLE001 - a worker that died would stop all prefetching
                self.cache.stats["prefetch_errors"] += 1
                log.exception("prefetch of s3://%s/%s failed unexpectedly (a reader will retry)",
                              obj.bucket, obj.key)
