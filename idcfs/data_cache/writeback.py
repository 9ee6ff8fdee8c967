"""Writing fetched blocks to disk off the read path, in a bounded queue.

A reader never waits for the disk: fetched blocks are served from memory at once and written by
background threads. Background fetches wait while what they may have in flight would not fit
in the bound (BlockCache.pace_to_disk). If a reader's own fetches still push them past the bound,
blocks are not written (counted as skipped): they are immutable, so the cost is a fetch later,
not a wrong byte, and memory stays bounded.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading

from ..objects import ObjectRef
from .disk import DiskBlocks

log = logging.getLogger(__name__)

QUEUE_BYTES = 128 << 20


class WriteBehind:
    def __init__(self, disk: DiskBlocks, limit: int = QUEUE_BYTES) -> None:
        self.disk = disk
        self.limit = limit
        self._queued = 0
        self._lock = threading.Condition()
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="idcfs-disk")
        self.skipped = 0
        self.failed = 0

    def submit(self, obj: ObjectRef, blocks: dict[int, bytes]) -> None:
        size = sum(map(len, blocks.values()))
        with self._lock:
            if self._queued + size > self.limit:
                self.skipped += len(blocks)
                return
            self._queued += size
        self._pool.submit(self._write, obj, blocks, size)

    def _write(self, obj: ObjectRef, blocks: dict[int, bytes], size: int) -> None:
        try:
            self.disk.put_blocks(obj, blocks)
        except Exception:  # noqa: BLE001 - nobody waits on this future: say it here
            self.failed += 1
            log.exception("writing blocks of s3://%s/%s to the disk cache failed", obj.bucket,
                          obj.key)
        finally:
            with self._lock:
                self._queued -= size
                self._lock.notify_all()

    def has_room(self, incoming: int) -> bool:
        return self._queued + incoming <= self.limit

    def wait_for_room(self, incoming: int, timeout: float) -> None:
        """Block this thread until incoming more bytes would fit in the bound, or timeout."""
        with self._lock:
            self._lock.wait_for(lambda: self.has_room(incoming), timeout)

    def drain(self) -> None:
        """Wait until every queued block is on disk (at unmount, so what was fetched is kept)."""
        with self._lock:
            self._lock.wait_for(lambda: self._queued == 0)
