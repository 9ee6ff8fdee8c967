"""The directory tree over the memory-mapped index: lookups and listings, no FUSE, no I/O.

Every directory is a run of sorted index rows, so its inode number is derived from its position
(level and run number) instead of being allocated: nothing is stored per directory, an inode
means the same thing for the life of the mount, and `forget` has nothing to free. Files are
numbered by their series row and their position in the series listing.

Inode layout (64 bits): the top byte is the kind; directories keep their run number below it;
files keep the series row in bits 24-55 and the file's position in the low 24 bits (the largest
IDC series has ~92k instances).
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import naming
from .index import Level, TreeFiles

ROOT_INODE = 1
_KIND_SHIFT = 56
_ROW_SHIFT = 24
_LOW_MASK = (1 << _ROW_SHIFT) - 1
_IDX_MASK = (1 << _KIND_SHIFT) - 1


class Kind(enum.IntEnum):
    ROOT = 0
    COLLECTION = 1
    PATIENT = 2
    STUDY = 3
    SERIES = 4
    FILE = 5


@dataclass(frozen=True, slots=True)
class Node:
    """A directory (kind, run number) or a file (FILE, series row, position in the listing)."""

    kind: Kind
    index: int
    file: int = 0

    @property
    def inode(self) -> int:
        if self.kind is Kind.ROOT:
            return ROOT_INODE
        if self.kind is Kind.FILE:
            return (Kind.FILE << _KIND_SHIFT) | (self.index << _ROW_SHIFT) | self.file
        return (self.kind << _KIND_SHIFT) | self.index

    @property
    def is_dir(self) -> bool:
        return self.kind is not Kind.FILE


ROOT = Node(Kind.ROOT, 0)


@dataclass(frozen=True, slots=True)
class SeriesRef:
    """Where a series folder's objects live: `<bucket>/<crdc_series_uuid>/`."""

    bucket: str
    uuid: str

    @property
    def prefix(self) -> str:
        return f"{self.uuid}/"


@dataclass(frozen=True, slots=True)
class Listing:
    """The objects of one series folder, sorted by name (immutable, like the objects)."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    def find(self, name: str) -> int | None:
        i = bisect.bisect_left(self.names, name)
        return i if i < len(self.names) and self.names[i] == name else None


class Tree:
    """Lookup and listing over the levels collection/patient/study/series of the index."""

    def __init__(self, files: TreeFiles) -> None:
        self.files = files
        self.levels: tuple[Level, ...] = (files.collections, files.patients, files.studies)
        self.rows = len(files.series_names)
        self.timestamp_ns: int = int(files.meta.get("timestamp_ns", 0))

    def node(self, inode: int) -> Node | None:
        """The node an inode number stands for, or None if it stands for nothing."""
        if inode == ROOT_INODE:
            return ROOT
        kind_value = inode >> _KIND_SHIFT
        if kind_value == Kind.FILE:
            row = (inode >> _ROW_SHIFT) & ((1 << (_KIND_SHIFT - _ROW_SHIFT)) - 1)
            return Node(Kind.FILE, row, inode & _LOW_MASK) if row < self.rows else None
        if not Kind.COLLECTION <= kind_value <= Kind.SERIES:
            return None
        kind, index = Kind(kind_value), inode & _IDX_MASK
        limit = self.rows if kind is Kind.SERIES else len(self.levels[kind - 1])
        return Node(kind, index) if index < limit else None

    def _child_range(self, node: Node) -> tuple[int, int]:
        """The run numbers (or rows, below a study) of a directory's children."""
        if node.kind is Kind.ROOT:
            return 0, len(self.levels[0])
        level = self.levels[node.kind - 1]
        lo_row = int(level.starts[node.index])
        hi_row = int(level.starts[node.index + 1]) if node.index + 1 < len(level) else self.rows
        if node.kind is Kind.STUDY:
            return lo_row, hi_row
        below = self.levels[node.kind].starts
        return (
            int(np.searchsorted(below, lo_row, side="left")),
            int(np.searchsorted(below, hi_row, side="left")),
        )

    def _child_names(self, node: Node):
        return self.files.series_names if node.kind is Kind.STUDY else self.levels[node.kind].names

    def child_count(self, node: Node) -> int:
        """Number of subdirectories of a directory above the series level."""
        lo, hi = self._child_range(node)
        return hi - lo

    def lookup(self, parent: Node, name: str | bytes) -> Node | None:
        """The child directory called name, for parents above the series level."""
        value = naming.decode(name)
        if value is None or parent.kind >= Kind.SERIES:
            return None
        lo, end = self._child_range(parent)
        hi = end
        names = self._child_names(parent)
        while lo < hi:
            mid = (lo + hi) // 2
            if names[mid].as_py() < value:
                lo = mid + 1
            else:
                hi = mid
        if lo < end and names[lo].as_py() == value:
            return Node(Kind(parent.kind + 1), lo)
        return None

    def children(self, parent: Node, start: int = 0) -> Iterator[tuple[str, Node]]:
        """(name, node) of a directory's subdirectories, from position start, in a fixed order."""
        lo, hi = self._child_range(parent)
        first = lo + start
        if first >= hi:
            return
        values = self._child_names(parent).slice(first, hi - first).to_pylist()
        kind = Kind(parent.kind + 1)
        for i, value in enumerate(values):
            yield naming.encode(value), Node(kind, first + i)

    def name(self, node: Node) -> str:
        """The raw index value naming a directory (its series folder name for a series)."""
        if node.kind is Kind.SERIES:
            return self.files.series_names[node.index].as_py()
        return self.levels[node.kind - 1].names[node.index].as_py()

    def _parent(self, kind: Kind, first_row: int) -> int:
        """The run of the level `kind` that holds row first_row."""
        return int(np.searchsorted(self.levels[kind - 1].starts, first_row, side="right")) - 1

    def metadata(self, node: Node, file_name: str | None = None) -> dict[str, str]:
        """The index's values for a node and the levels above it (for extended attributes)."""
        values: dict[str, str] = {}
        if node.kind is Kind.ROOT:
            first_row = None
        elif node.kind in (Kind.SERIES, Kind.FILE):
            first_row = node.index
        else:
            first_row = int(self.levels[node.kind - 1].starts[node.index])
        if first_row is not None:
            for kind, key in ((Kind.COLLECTION, "collection_id"), (Kind.PATIENT, "PatientID"),
                              (Kind.STUDY, "StudyInstanceUID")):
                if kind <= node.kind:
                    values[key] = self.name(Node(kind, self._parent(kind, first_row)))
        if node.kind in (Kind.SERIES, Kind.FILE):
            for key, column in self.files.columns.items():
                value = column[node.index].as_py()
                if value is not None:
                    values[key] = value
            ref = self.series(node.index)
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
        return SeriesRef(
            bucket=self.files.buckets[row].as_py(),
            uuid=self.files.crdc_series_uuids[row].as_py(),
        )
