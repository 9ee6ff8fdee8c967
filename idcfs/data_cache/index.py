"""What the disk cache holds, file by file: least recently used first, and which blocks each
file of an object has. Plain dictionaries, no locking and no I/O: DiskBlocks holds its lock
for the few microseconds each call takes."""

from __future__ import annotations

import collections
import os

from .blockfile import RUN_BLOCKS, parse


class DiskIndex:
    def __init__(self) -> None:
        self.lru: collections.OrderedDict[str, int] = collections.OrderedDict()  # path: bytes
        self.files: dict[str, dict[int, int]] = {}  # digest: {first block: blocks}
        self.blocks = 0
        self.size = 0

    def __contains__(self, path: str) -> bool:
        return path in self.lru

    def __len__(self) -> int:
        return len(self.lru)

    def add(self, path: str, size: int) -> None:
        """Track a block file (most recently used), replacing what was known of it."""
        self.remove(path)
        digest, first, count = parse(os.path.basename(path))
        self.lru[path] = size
        self.size += size
        self.files.setdefault(digest, {})[first] = count
        self.blocks += count

    def remove(self, path: str) -> int:
        """Forget a block file; its size (0 if it was not tracked)."""
        size = self.lru.pop(path, None)
        if size is None:
            return 0
        digest, first, _ = parse(os.path.basename(path))
        files = self.files.get(digest, {})
        self.blocks -= files.pop(first, 0)
        if not files:
            self.files.pop(digest, None)
        self.size -= size
        return size

    def touch(self, path: str) -> None:
        if path in self.lru:
            self.lru.move_to_end(path)

    def oldest(self) -> str | None:
        return next(iter(self.lru), None)

    def has_file(self, digest: str, first: int) -> bool:
        return first in self.files.get(digest, ())

    def holding(self, digest: str, index: int) -> tuple[int, int] | None:
        """The (first block, blocks) of the file of the object that holds block index."""
        return holding(self.files.get(digest), index)


def holding(files: dict[int, int] | None, index: int) -> tuple[int, int] | None:
    """The (first block, blocks) of the file among files ({first: blocks}) holding block index."""
    if files:
        for first in range(index, index - RUN_BLOCKS, -1):
            if index < first + files.get(first, 0):
                return first, files[first]
    return None
