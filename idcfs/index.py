"""The idc-index parquet files, turned once into a compact, memory-mapped tree.

Loading the full index (one row per series, ~1M rows) into Python objects costs ~10 s and over a
gigabyte; even as Arrow it peaks at several hundred MB. So the daemon never loads it: a child
process sorts the rows by their path with duckdb and writes the levels of the tree as Arrow IPC
files under the cache directory, and the daemon memory-maps them. A collection, a patient, a study
is then a contiguous run of sorted rows: each level is a column of names and a column of the row
where each run starts, nothing per series is a Python object, and a remount reuses the files.

The built tree is keyed by the index file's identity (path, size, mtime) and the builder's
format, so a new idc-index-data release builds a new tree and an old one is never misread.
"""

from __future__ import annotations

import calendar
import concurrent.futures
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from . import layout, selection
from .naming import NAME_MAX
from .selection import Selection

log = logging.getLogger(__name__)

FORMAT_VERSION = 5
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


class BadIndex(Exception):
    """The index directory cannot be used; the message says why, for a person."""


def default_index_dir() -> Path:
    """The directory of the installed idc-index-data package, the index users already have."""
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
    stamps = [f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.exists()]
    ident = f"{FORMAT_VERSION}|{'|'.join(stamps)}|{sel.key()}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def _build_sql(parquet: Path, level_sql: list[str], row_columns: list[str]) -> str:
    """The tree's rows from the view `selected` (see selection.rows), named and sorted by path."""
    names = pq.read_schema(parquet).names
    levels = "".join(f"{sql} AS level_{d}, " for d, sql in enumerate(level_sql, 1))
    order = ", ".join([f"level_{d}" for d in range(1, len(level_sql) + 1)] + ["crdc_series_uuid"])
    per_row = "".join(f"coalesce({c}, '') AS {c}, " for c in row_columns)
    return f"""
        SELECT {levels}{per_row}crdc_series_uuid, bucket,
               {_optional_text(names, 'source_DOI')} AS source_DOI,
               {_optional_text(names, 'license_short_name')} AS license_short_name,
               {_optional(names, 'instanceCount', 'BIGINT')} AS instance_count,
               {_optional(names, 'series_size_MB', 'DOUBLE')} AS size_mb
        FROM selected
        ORDER BY {order}
    """


def _optional_text(names: list[str], column: str) -> str:
    return column if column in names else "CAST(NULL AS VARCHAR)"


def _optional(names: list[str], column: str, sql_type: str) -> str:
    return f"coalesce({column}, 0)" if column in names else f"CAST(0 AS {sql_type})"


def _differs(column: pa.ChunkedArray) -> np.ndarray:
    """For each row, whether its value differs from the row before (the first row always does)."""
    arr = column.combine_chunks()
    n = len(arr)
    new = np.ones(n, dtype=bool)
    if n > 1:
        new[1:] = pc.not_equal(arr.slice(1), arr.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return new


def _write(path: Path, table: pa.Table) -> None:
    """One record batch per file, so that the reader can map each column without copying it."""
    batch = pa.record_batch([c.combine_chunks() for c in table.columns], names=table.column_names)
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)


def build(parquet: Path, dest: Path, sel: Selection = Selection()) -> None:
    """Build the tree files of the selected rows into dest (atomically: all or nothing)."""
    started = time.monotonic()
    levels = layout.parse(sel.layout, pq.read_schema(parquet).names)
    # A column that is a whole level (collection, patient, study in the default layout) is read
    # from that level's names; only the others are kept per row.
    from_levels = {c: d for d, parts in enumerate(levels, 1) for kind, c in parts
                   if parts == [("column", c)] and c in ROW_COLUMNS}
    row_columns = [c for c in ROW_COLUMNS if c not in from_levels]
    con = selection.connect(parquet.parent)
    selection.rows(con, parquet.parent, sel).create_view("selected")
    selected = row_columns + [c for c in ("collection_id",) if c not in row_columns]  # citations
    table = con.execute(_build_sql(parquet, [layout.level_sql(p) for p in levels],
                                   selected)).to_arrow_table()
    con.close()
    # A run of a level starts where its name or the name of any level above it changes.
    names = [table.column(f"level_{d}") for d in range(1, len(levels) + 1)]
    resolved = layout.resolve(sel.layout)
    for column, level in zip(names, resolved.strip("/").split("/")):
        _check_name_length(column, level)
    new = np.logical_or.accumulate([_differs(c) for c in names], axis=0) if names else []
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=dest.parent))
    try:
        # Each file is written in a thread while the next is computed (Arrow lets go of the
        # GIL): writing ~150 MB of tree files was a quarter of a first mount.
        with concurrent.futures.ThreadPoolExecutor(4) as writers:
            written = []
            for d, column in enumerate(names, 1):
                s = np.flatnonzero(new[d - 1]).astype(np.int64)
                written.append(writers.submit(
                    _write, tmp / f"level_{d}.arrow",
                    pa.table({"name": column.take(pa.array(s)), "start": pa.array(s)})))
            rows = {"crdc_series_uuid": table.column("crdc_series_uuid"),
                    "bucket": pc.dictionary_encode(table.column("bucket"))}
            # Dictionary-encoded where values repeat (a million unique UIDs would only cost time).
            rows.update({c: table.column(c) if c == "SeriesInstanceUID"
                         else pc.dictionary_encode(table.column(c))
                         for c in row_columns + TEXT_COLUMNS})
            written.append(writers.submit(_write, tmp / "rows.arrow", pa.table(rows)))
            meta = {
                "format": FORMAT_VERSION,
                "index": str(parquet),
                "rows": table.num_rows,
                "files": int(pc.sum(table.column("instance_count")).as_py() or 0),
                "bytes": int((pc.sum(table.column("size_mb")).as_py() or 0) * 1_000_000),
                "timestamp_ns": _release_timestamp_ns(parquet, sel.idc_version),
                "idc_version": sel.idc_version,
                "source": sel.source,
                "selection": sel.key(),
                "layout": resolved,
                "level_columns": layout.columns_of(levels),
                "columns_from_levels": from_levels,
                "citations": _citations(table),
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
        for future in written:
            future.result()
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_dir():
            raise
    log.info("built the tree of %d series in %.1f s", table.num_rows, time.monotonic() - started)


def _check_name_length(values: pa.ChunkedArray, level: str) -> None:
    """A layout level whose names would be longer than a file name can be is refused before
    mounting: such a directory could be listed but never entered. Escaping at most triples a
    value, so escapes are only counted when the longest value is over a third of the limit (the
    default layout's levels never are: the check then costs ~20 ms on the full index)."""
    lengths = pc.binary_length(values)
    if len(values) == 0 or (pc.max(lengths).as_py() or 0) * 3 <= NAME_MAX:
        return
    escaped = pc.add(lengths, pc.multiply(pc.count_substring_regex(values, r"[%/\x00]"), 2))
    longest = pc.max(escaped).as_py() or 0
    if longest > NAME_MAX:
        example = values[pc.index(escaped, longest).as_py()].as_py()
        raise BadIndex(f"layout level {level!r} makes names of up to {longest} bytes (e.g. "
                       f"{example[:48]}...); a name can have at most {NAME_MAX}: use fewer or "
                       f"shorter columns in that level")


def _citations(table: pa.Table) -> list[dict]:
    """What a user of this mount must cite: each source DOI with its license and extent."""
    grouped = table.group_by(["source_DOI", "license_short_name"]).aggregate(
        [("collection_id", "distinct"), ("crdc_series_uuid", "count")])
    out = [{"source_DOI": r["source_DOI"], "license": r["license_short_name"],
            "collections": sorted(r["collection_id_distinct"]), "series": r["crdc_series_uuid_count"]}
           for r in grouped.to_pylist()]
    return sorted(out, key=lambda c: (c["collections"], c["source_DOI"] or ""))


def _release_timestamp_ns(parquet: Path, version: int | None) -> int:
    """A stable time for every entry: the date of the release shown, else the index's mtime.

    Using the release date means the same data shows the same times on every machine and every
    mount, which is what rsync and make compare.
    """
    versions = parquet.parent / "version_metadata_index.parquet"
    try:
        table = pq.read_table(versions, columns=["idc_version", "version_timestamp"]).to_pylist()
        dates = {r["idc_version"]: r["version_timestamp"] for r in table if r["version_timestamp"]}
        date = dates[version] if version in dates else dates[max(dates)]
        return int(calendar.timegm(time.strptime(date[:10], "%Y-%m-%d")) * 1e9)
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return parquet.stat().st_mtime_ns


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
        [sys.executable, "-m", "idcfs.index", str(parquet), str(dest), sel.key()],
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


def _build_once(parquet: Path, dest: Path, sel: Selection) -> None:
    """Build unless another process did while this one waited: two mounts starting at once with
    one cache directory build the tree once."""
    with open(f"{dest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / "meta.json").is_file():
            build(parquet, dest, sel)


if __name__ == "__main__":
    try:
        _build_once(Path(sys.argv[1]), Path(sys.argv[2]), Selection.from_key(sys.argv[3]))
    except BadIndex as exc:  # the mount reports the last line of this child's stderr
        print(exc, file=sys.stderr)
        sys.exit(1)
    # The tree is on disk (renamed into place). Tearing down the interpreter would only free
    # duckdb's and Arrow's memory, ~0.1 s that the waiting mount would spend doing nothing.
    sys.stderr.flush()
    os._exit(0)
