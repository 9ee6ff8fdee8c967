"""The idc-index parquet files as a compact, memory-mapped tree: checked, built once (build.py,
in a child), then mapped.

Loading the full index (one row per series, ~1M rows) into Python objects costs ~10 s and over a
gigabyte; even as Arrow it peaks at several hundred MB. So the daemon never loads it: it
memory-maps the tree files the child wrote under the cache directory. A collection, a patient, a
study is a contiguous run of sorted rows: each level is a column of names and a column of the row
where each run starts, nothing per series is a Python object, and a remount reuses the files.

The built tree is keyed by the index file's identity (path, size, mtime) and the builder's
format, so a new idc-index-data release builds a new tree and an old one is never misread.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ..checks import UsageError
from . import selection
from .selection import Selection

log = logging.getLogger(__name__)

FORMAT_VERSION = 6
INDEX_FILE = "idc_index.parquet"
REQUIRED_COLUMNS = (
    "collection_id",
    "PatientID",
    "StudyInstanceUID",
    "Modality",
    "SeriesInstanceUID",
    "crdc_series_uuid",
    "aws_bucket",
)
PRIOR_FILE = selection.PRIOR_FILE
# Kept per series row, for extended attributes: the identifiers, then the citation columns.
ROW_COLUMNS = ["collection_id", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"]
TEXT_COLUMNS = ["source_DOI", "license_short_name"]


class BadIndex(UsageError):
    """The index directory cannot be used; the message says why, for a person."""


def default_index_dir() -> Path:
    """The directory of the installed idc-index-data package, the index users already have.

    Found without importing the package where its files sit in it (a normal install): its
    import looks each of its files up in the installed distribution's records, a tenth of a
    second of every mount."""
    spec = importlib.util.find_spec("idc_index_data")
    if spec is not None and spec.origin and (Path(spec.origin).parent / INDEX_FILE).is_file():
        return Path(spec.origin).parent
    try:
        import idc_index_data
    except ImportError as exc:
        raise BadIndex(
            "no index: the idc-index-data package is not installed; give --index DIR"
        ) from exc
    return Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH).parent


def check_index_dir(index_dir: Path) -> Path:
    """Return the index parquet file in index_dir, or raise BadIndex naming what is wrong."""
    if not index_dir.exists():
        raise BadIndex(f"index directory {index_dir} does not exist")
    if not index_dir.is_dir():
        raise BadIndex(f"index directory {index_dir} is not a directory")
    path = index_dir / INDEX_FILE
    if not path.is_file():
        raise BadIndex(f"index directory {index_dir} has no {INDEX_FILE}")
    try:
        schema = pq.read_schema(path)
    except PermissionError as exc:
        raise BadIndex(f"cannot read {path}: permission denied") from exc
    except (OSError, pa.ArrowException) as exc:
        raise BadIndex(f"{path} is not a readable parquet file ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise BadIndex(f"{path} lacks required column(s): {', '.join(missing)}")
    return path


def _tree_key(parquet: Path, sel: Selection) -> str:
    files = [parquet, parquet.parent / PRIOR_FILE]
    stamps = [f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
              for f in files if f.exists()]
    ident = f"{FORMAT_VERSION}|{'|'.join(stamps)}|{sel.key()}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Level:
    """One level of directories: their names (sorted) and the first row of each."""

    names: pa.StringArray | pa.LargeStringArray
    starts: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


@dataclass(frozen=True)
class TreeFiles:
    """The memory-mapped tree: the directory levels of the layout above the series rows."""

    levels: tuple[Level, ...]
    crdc_series_uuids: pa.Array
    buckets: pa.DictionaryArray
    instance_counts: np.ndarray  # 0 where the index does not say (prior versions)
    columns: dict[str, pa.Array]
    meta: dict


def _read(path: Path) -> pa.RecordBatch:
    reader = ipc.open_file(pa.memory_map(str(path), "r"))
    if reader.num_record_batches != 1:
        raise BadIndex(f"{path} is damaged; delete {path.parent} and mount again")
    return reader.get_batch(0)


def open_tree(path: Path) -> TreeFiles:
    """Memory-map built tree files; costs milliseconds and no memory per series."""
    meta = json.loads((path / "meta.json").read_text())
    levels = []
    for d in range(1, len(meta["level_columns"]) + 1):
        t = _read(path / f"level_{d}.arrow")
        levels.append(Level(t.column("name"), t.column("start").to_numpy(zero_copy_only=True)))
    rows = _read(path / "rows.arrow")
    return TreeFiles(
        levels=tuple(levels),
        crdc_series_uuids=rows.column("crdc_series_uuid"),
        buckets=rows.column("bucket"),
        instance_counts=rows.column("instance_count").to_numpy(zero_copy_only=False),
        columns={name: rows.column(name) for name in rows.schema.names
                 if name in ROW_COLUMNS + TEXT_COLUMNS},
        meta=meta,
    )


def _tree_dir(parquet: Path, cache_dir: Path, sel: Selection) -> Path:
    return cache_dir / "index" / _tree_key(parquet, sel)


def start_build(index_dir: Path, cache_dir: Path,
                sel: Selection = Selection()) -> subprocess.Popen | None:
    """Start building the tree for index_dir in a child process, unless it is built already.

    The build runs in a child so that its peak memory (duckdb sorting a million rows) goes back
    to the system when it exits instead of staying in the long-lived daemon; starting it early
    lets the daemon import its libraries while the child sorts.
    """
    parquet = check_index_dir(index_dir)
    dest = _tree_dir(parquet, cache_dir, sel)
    if (dest / "meta.json").is_file():
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("indexing %s (once per index release; a few seconds)", parquet)
    return subprocess.Popen(
        [sys.executable, "-m", "idcfs.index.build", str(parquet), str(dest), sel.key()],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def load(index_dir: Path, cache_dir: Path, sel: Selection = Selection(),
         build: subprocess.Popen | None = None) -> TreeFiles:
    """Open the tree for index_dir, waiting for (or starting) its build if needed."""
    if build is None:
        build = start_build(index_dir, cache_dir, sel)
    parquet = check_index_dir(index_dir)
    if build is not None:
        _, stderr = build.communicate()
        if build.returncode != 0:
            last = (stderr.strip().splitlines() or ["unknown error"])[-1]
            raise BadIndex(f"could not index {parquet}: {last}")
    return open_tree(_tree_dir(parquet, cache_dir, sel))


