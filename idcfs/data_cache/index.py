"""What the disk cache holds: its packs, least recently used first, and where each block is.
Plain dictionaries, no locking and no I/O: DiskBlocks holds its lock for the few microseconds
each call takes."""

from __future__ import annotations

import collections
from collections.abc import Iterable

from .blockfile import Entry


class DiskIndex:
    def __init__(self) -> None:
        # pack path: (bytes, the entries of its blocks)
        self.lru: collections.OrderedDict[str, tuple[int, list[Entry]]] = collections.OrderedDict()
        self.where: dict[str, dict[int, tuple[str, Entry]]] = {}  # digest: {index: (pack, entry)}
        self.blocks = 0
        self.size = 0

    def __contains__(self, path: str) -> bool:
        return path in self.lru

    def __len__(self) -> int:
        return len(self.lru)

    def add(self, path: str, size: int, entries: Iterable[Entry]) -> None:
        """Track a pack (most recently used). A block it holds that another pack holds too is
        found in this one from now on; the other keeps its bytes until it is evicted."""
        self.remove(path)
        entries = list(entries)
        for e in entries:
            found = self.where.setdefault(e.digest, {})
            self.blocks += e.index not in found
            found[e.index] = (path, e)
        self.lru[path] = (size, entries)
        self.size += size

    def remove(self, path: str) -> int:
        """Forget a pack and the blocks found in it; its size (0 if it was not tracked)."""
        known = self.lru.pop(path, None)
        if known is None:
            return 0
        size, entries = known
        for e in entries:
            found = self.where.get(e.digest)
            if found and e.index in found and found[e.index][0] == path:
                del found[e.index]
                self.blocks -= 1
                if not found:
                    del self.where[e.digest]
        self.size -= size
        return size

    def touch(self, path: str) -> None:
        if path in self.lru:
            self.lru.move_to_end(path)

    def oldest(self) -> str | None:
        return next(iter(self.lru), None)

    def locate(self, digest: str, index: int) -> tuple[str, Entry] | None:
        """The pack holding the block and its entry there."""
        found = self.where.get(digest)
        return found.get(index) if found else None
