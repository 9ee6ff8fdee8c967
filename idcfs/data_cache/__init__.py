"""The block cache: object bytes in fixed blocks, in memory and on disk, fetched once.

    memory.py     BlockCache: the memory LRU over the disk, single-flight fetches, pacing
    fetch.py      one checked fetch of a run of blocks (sizes, ETag)
    disk.py       DiskBlocks: the bounded, crash-safe disk cache and its start-up scan
    index.py      DiskIndex: the packs on disk in LRU order, and where each block is
    blockfile.py  the on-disk format: packs, slots, trailers, directories
    direct.py     O_DIRECT reads and writes, aligned buffers
    writeback.py  WriteBehind: the bounded queue of blocks going to disk, a pack at a time
"""

from .disk import DiskBlocks, clear
from .memory import BlockCache, Pacing

__all__ = ["BlockCache", "DiskBlocks", "Pacing", "clear"]
