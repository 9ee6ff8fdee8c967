"""The directory tree over the memory-mapped index: lookups and listings, no FUSE, no I/O.

The layout's levels (collection/patient/study/series by default) are runs of sorted index rows,
so a directory's inode number is derived from its position (depth and run number) instead of
being allocated: nothing is stored per directory, an inode means the same thing for the life of
the mount, and `forget` has nothing to free. The deepest level's directories ("leaves") hold
files: the objects of the series rows of their run (usually one series; several where the
layout merges them). A file is numbered by its series row and its position in that series'
listing.

Inode numbers are laid out in inodes.py.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

import cachetools
import numpy as np

from .. import inodes
from . import naming
from .files import TreeFiles

FILE = inodes.FILE


@dataclass(frozen=True, slots=True)
class Node:
    """A directory (depth, run number; the root is depth 0) or a file (FILE, row, position)."""

    depth: int
    index: int
    file: int = 0

    @property
    def inode(self) -> int:
        if self.depth == FILE:
            return inodes.file(self.index, self.file)
        return inodes.directory(self.depth, self.index)

    @property
    def is_dir(self) -> bool:
        return self.depth != FILE


ROOT = Node(0, 0)


@dataclass(frozen=True, slots=True)
class SeriesRef:
    """Where a series folder's objects live: `<bucket>/<crdc_series_uuid>/`; and what the
    index says of them: how many (0: it does not say) and their modality."""

    bucket: str
    uuid: str
    instances: int = field(default=0, compare=False)
    modality: str = field(default="", compare=False)

    @property
    def prefix(self) -> str:
        return f"{self.uuid}/"


@dataclass(frozen=True, slots=True)
class Listing:
    """The objects of one series folder, sorted by name (immutable, like the objects)."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    etags: tuple[str, ...] = ()

    def etag(self, i: int) -> str | None:
        return self.etags[i] if i < len(self.etags) and self.etags[i] else None

    def find(self, name: str) -> int | None:
        i = bisect.bisect_left(self.names, name)
        return i if i < len(self.names) and self.names[i] == name else None


class Tree:
    """Lookup and listing over the directory levels of the index."""

    def __init__(self, files: TreeFiles) -> None:
        self.files = files
        self.levels = files.levels
        self.depth = len(self.levels)
        self.rows = len(files.crdc_series_uuids)
        self.timestamp_ns: int = int(files.meta.get("timestamp_ns", 0))
        self._bucket_names = files.buckets.dictionary.to_pylist()
        self._series: cachetools.LRUCache = cachetools.LRUCache(maxsize=4096)

    def node(self, inode: int) -> Node | None:
        """The node an inode number stands for, or None if it stands for nothing."""
        kind = inodes.kind(inode)
        if kind == 0:
            return ROOT
        if kind == FILE:
            row, position = inodes.row_and_position(inode)
            return Node(FILE, row, position) if row < self.rows else None
        index = inodes.index(inode)
        if 1 <= kind <= self.depth and index < len(self.levels[kind - 1]):
            return Node(kind, index)
        return None

    def is_leaf(self, node: Node) -> bool:
        """Whether a directory holds files (the deepest level; the root in a flat layout)."""
        return node.depth == self.depth

    def rows_of(self, node: Node) -> tuple[int, int]:
        """The series rows [first, end) under a directory."""
        if node.depth == 0:
            return 0, self.rows
        level = self.levels[node.depth - 1]
        first = int(level.starts[node.index])
        end = int(level.starts[node.index + 1]) if node.index + 1 < len(level) else self.rows
        return first, end

    def _child_range(self, node: Node) -> tuple[int, int]:
        """The run numbers of a directory's subdirectories on the next level."""
        first, end = self.rows_of(node)
        below = self.levels[node.depth].starts
        return (int(np.searchsorted(below, first, side="left")),
                int(np.searchsorted(below, end, side="left")))

    def child_count(self, node: Node) -> int:
        """Number of subdirectories of a directory (none for a leaf)."""
        if self.is_leaf(node):
            return 0
        lo, hi = self._child_range(node)
        return hi - lo

    def lookup(self, parent: Node, name: str | bytes) -> Node | None:
        """The subdirectory called name, for parents that are not leaves."""
        value = naming.decode(name)
        if value is None or not parent.is_dir or self.is_leaf(parent):
            return None
        lo, end = self._child_range(parent)
        hi = end
        names = self.levels[parent.depth].names
        while lo < hi:
            mid = (lo + hi) // 2
            if names[mid].as_py() < value:
                lo = mid + 1
            else:
                hi = mid
        if lo < end and names[lo].as_py() == value:
            return Node(parent.depth + 1, lo)
        return None

    def children(self, parent: Node, start: int = 0) -> Iterator[tuple[str, Node]]:
        """(name, node) of a directory's subdirectories, from position start, in a fixed order."""
        if self.is_leaf(parent):
            return
        lo, hi = self._child_range(parent)
        first = lo + start
        if first >= hi:
            return
        values = self.levels[parent.depth].names.slice(first, hi - first).to_pylist()
        for i, value in enumerate(values):
            yield naming.encode(value), Node(parent.depth + 1, first + i)

    def name(self, node: Node) -> str:
        """The raw (unescaped) name of a directory."""
        return self.levels[node.depth - 1].names[node.index].as_py()

    def value(self, row: int, column: str) -> str:
        """A series row's value of a column kept for it (per row, or as a whole level)."""
        depth = self.files.meta.get("columns_from_levels", {}).get(column)
        if depth is not None:
            level = self.levels[depth - 1]
            return level.names[int(np.searchsorted(level.starts, row, "right")) - 1].as_py()
        found = self.files.columns.get(column)
        return found[row].as_py() or "" if found is not None else ""

    def metadata(self, node: Node, file_name: str | None = None) -> dict[str, str]:
        """The index's values for a node (for extended attributes): for a directory, the columns
        its layout levels name; for a leaf of one series and its files, the series' too."""
        values: dict[str, str] = {}
        first, end = self.rows_of(node) if node.depth != FILE else (node.index, node.index + 1)
        named = {c for cols in self.files.meta["level_columns"][:node.depth] for c in cols}
        single = end - first == 1 and (node.depth == FILE or self.is_leaf(node))
        for key in self.files.meta.get("columns_from_levels", {}):
            if (single or key in named) and first < self.rows:
                values[key] = self.value(first, key)
        for key in self.files.columns:
            if (single or key in named) and first < self.rows and (value := self.value(first, key)):
                values[key] = value
        if single:
            ref = self.series(first)
            scheme = "gs" if self.files.meta.get("source") == "gcs" else "s3"
            values["crdc_series_uuid"] = ref.uuid
            values["url"] = f"{scheme}://{ref.bucket}/{ref.prefix}"
            if file_name is not None:
                values["url"] += file_name
                values["crdc_instance_uuid"] = file_name.removesuffix(".dcm")
        if self.files.meta.get("idc_version") is not None:
            values["idc_version"] = str(self.files.meta["idc_version"])
        return values

    def series(self, row: int) -> SeriesRef:
        """Where a series row's objects are. Asked on every open and every lookup in a series
        folder: kept for the series in use (an Arrow scalar's as_py costs microseconds, and
        was 3 % of the daemon's CPU in a series copy)."""
        ref = self._series.get(row)
        if ref is None:
            ref = self._series[row] = SeriesRef(
                bucket=self._bucket_names[self.files.buckets.indices[row].as_py()],
                uuid=self.files.crdc_series_uuids[row].as_py(),
                instances=int(self.files.instance_counts[row]),
                modality=self.value(row, "Modality"))
        return ref
