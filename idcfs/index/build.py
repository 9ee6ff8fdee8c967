"""Building the tree of one index release and selection: in a child process, once.

A child sorts the selected rows by their path (with Arrow alone where the selection needs no SQL,
arrow_rows.py; else with duckdb) and writes each level of the layout
(collections, patients, studies... as a column of names and a column of the row where each run
starts) and the per-row columns as Arrow IPC files, renamed into place all at once. Its peak
memory (sorting a million rows) goes back to the system when it exits instead of staying
in the long-lived daemon.

    python -m idcfs.index.build PARQUET DEST SELECTION_KEY
"""

from __future__ import annotations

import calendar
import concurrent.futures
import fcntl
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from . import arrow_rows, layout, selection
from .files import FORMAT_VERSION, ROW_COLUMNS, TEXT_COLUMNS, BadIndex
from .naming import NAME_MAX
from .selection import Selection

log = logging.getLogger(__name__)


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
    selected = row_columns + [c for c in ("collection_id",) if c not in row_columns]  # citations
    table = arrow_rows.rows(parquet, sel, levels, selected)
    if table is None:  # a selection that needs SQL
        con = selection.connect(parquet.parent)
        selection.rows(con, parquet.parent, sel).create_view("selected")
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
                    "bucket": pc.dictionary_encode(table.column("bucket")),
                    "instance_count": pc.cast(table.column("instance_count"), pa.int32())}
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
                # Each series' size in bytes, then their sum: the same in any order of rows.
                "bytes": int(pc.sum(pc.cast(pc.round(pc.multiply(table.column("size_mb"),
                                                                 1_000_000)), pa.int64()))
                             .as_py() or 0),
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
            "collections": sorted(r["collection_id_distinct"]),
            "series": r["crdc_series_uuid_count"]}
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


def _build_once(parquet: Path, dest: Path, sel: Selection) -> None:
    """Build unless another process did while this one waited: two mounts starting at once with
    one cache directory build the tree once."""
    with open(f"{dest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / "meta.json").is_file():
            build(parquet, dest, sel)


def _use_jemalloc() -> None:
    """Allocate with jemalloc (else the C library's malloc), not pyarrow's default mimalloc.

    Sorting a million rows allocates and frees about a gigabyte. mimalloc hands freed memory
    back to the kernel in huge pages and faults it in again, zeroing 2 MB at a time: on the
    full index the build's system time went from ~1 s to 1-2.6 s with it, and a first mount
    from 2.1-2.3 s to 3.4-3.9 s. A user's own choice (ARROW_DEFAULT_MEMORY_POOL) is kept."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow built without jemalloc
        pa.set_memory_pool(pa.system_memory_pool())


if __name__ == "__main__":
    _use_jemalloc()
    try:
        _build_once(Path(sys.argv[1]), Path(sys.argv[2]), Selection.from_key(sys.argv[3]))
    except BadIndex as exc:  # the mount reports the last line of this child's stderr
        print(exc, file=sys.stderr)
        sys.exit(1)
    # The tree is on disk (renamed into place). Tearing down the interpreter would only free
    # duckdb's and Arrow's memory, ~0.1 s that the waiting mount would spend doing nothing.
    sys.stderr.flush()
    os._exit(0)
