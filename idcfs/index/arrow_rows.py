"""The tree's rows read with Arrow alone, for the selections that need no SQL.

duckdb's query of the full index, its sort and its hand-over to Arrow took 1.5-1.8 s of a first
mount; reading the parquet file with Arrow, naming the levels and sorting took 0.6-0.7 s. This
gives the table build.py's query gives, for a selection of current rows only (no release for
which series have prior rows, no --filter, no --manifest) whose layout and per-row columns are
text; for any other it answers None and the query runs. The tests build trees both ways and
compare every file (tests/test_tree_build.py).
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .selection import GCS_BUCKETS, Selection, needs_prior

_OUT_TEXT = pa.string()  # what duckdb hands over for VARCHAR


def rows(parquet: Path, sel: Selection, levels: list[list[tuple[str, str]]],
         row_columns: list[str]) -> pa.Table | None:
    """level_1..n, the row columns, crdc_series_uuid, bucket, source_DOI, license_short_name,
    instance_count and size_mb of the selected rows, sorted by path; None where the query must
    answer."""
    schema = pq.read_schema(parquet)
    if sel.filter or sel.manifest or "gcs_bucket" in schema.names or (
            (sel.licenses or sel.exclude_licenses) and "license_short_name" not in schema.names):
        return None
    if needs_prior(parquet.parent, sel.idc_version):
        return None
    named = {text for parts in levels for kind, text in parts if kind == "column"}
    if not all(_is_text(schema.field(c).type) for c in named | set(row_columns)):
        return None
    wanted = named | set(row_columns) | {"crdc_series_uuid", "aws_bucket"} | (
        {"source_DOI", "license_short_name", "instanceCount", "series_size_MB",
         "series_revised_idc_version", "collection_id"} & set(schema.names))
    table = _selected(pq.read_table(parquet, columns=sorted(wanted)), sel)

    texts: dict[str, pa.ChunkedArray] = {}

    def text(column: str) -> pa.ChunkedArray:
        """A column as text, an empty value as '' (once: a level's column is often a row's)."""
        if column not in texts:
            texts[column] = pc.cast(pc.fill_null(table.column(column), ""), _OUT_TEXT)
        return texts[column]

    out = {f"level_{d}": _level(parts, text) for d, parts in enumerate(levels, 1)}
    out.update({c: text(c) for c in row_columns})
    out["crdc_series_uuid"] = pc.cast(table.column("crdc_series_uuid"), _OUT_TEXT)
    out["bucket"] = pc.cast(_bucket(table.column("aws_bucket"), sel.source), _OUT_TEXT)
    for column in ("source_DOI", "license_short_name"):
        out[column] = (pc.cast(table.column(column), _OUT_TEXT) if column in table.column_names
                       else pa.nulls(table.num_rows, _OUT_TEXT))
    out["instance_count"] = _number(table, "instanceCount", pa.int64())
    out["size_mb"] = _number(table, "series_size_MB", pa.float64())
    order = [f"level_{d}" for d in range(1, len(levels) + 1)] + ["crdc_series_uuid"]
    indices = pc.sort_indices(pa.table({c: out[c] for c in order}),
                              sort_keys=[(c, "ascending") for c in order])
    return _take(out, indices)


def _take(columns: dict[str, pa.ChunkedArray], indices: pa.Array) -> pa.Table:
    """The table of columns in the order of indices. Each column is taken once (in the default
    layout a level is also a row column: it is the same array), and all of them at once in
    threads (Arrow lets go of the GIL): the full index's ~350 MB taken column after column costs
    half a second, most of it faulting in fresh memory; in threads, 0.2-0.3 s."""
    distinct = {id(column): column for column in columns.values()}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        taken = dict(zip(distinct, pool.map(lambda column: column.take(indices),
                                            distinct.values())))
    return pa.table({name: taken[id(column)] for name, column in columns.items()})


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _selected(table: pa.Table, sel: Selection) -> pa.Table:
    """The rows the release, collections and licenses keep (selection.rows's conditions: a null
    value is never in a list, and never kept by --exclude-license)."""
    keep = []
    if sel.idc_version is not None and "series_revised_idc_version" in table.column_names:
        keep.append(pc.less_equal(table.column("series_revised_idc_version"), sel.idc_version))
    if sel.collections:
        keep.append(_is_in(table.column("collection_id"), sel.collections))
    if sel.licenses:
        keep.append(_is_in(table.column("license_short_name"), sel.licenses))
    if sel.exclude_licenses:
        licenses = table.column("license_short_name")
        keep.append(pc.and_(pc.is_valid(licenses),
                            pc.invert(_is_in(licenses, sel.exclude_licenses))))
    for condition in keep:
        table = table.filter(condition)  # a null condition drops the row, as WHERE does
    return table


def _is_in(column: pa.ChunkedArray, values: tuple[str, ...]) -> pa.ChunkedArray:
    return pc.is_in(column, value_set=pa.array(values, column.type))


def _level(parts: list[tuple[str, str]], text) -> pa.ChunkedArray:
    """One level's names: its columns (an empty value as '') and literals, joined."""
    pieces = [text(value) if kind == "column" else pa.scalar(value, _OUT_TEXT)
              for kind, value in parts]
    if len(pieces) == 1:
        return pieces[0]
    return pc.binary_join_element_wise(*pieces, pa.scalar("", _OUT_TEXT))


def _bucket(aws: pa.ChunkedArray, source: str) -> pa.ChunkedArray:
    """The row's bucket on its source: on GCS, IDC's mapping of the AWS bucket."""
    if source == "aws":
        return aws
    mapped = aws
    for from_aws, on_gcs in GCS_BUCKETS.items():
        mapped = pc.if_else(pc.equal(aws, from_aws), pa.scalar(on_gcs, aws.type), mapped)
    return mapped


def _number(table: pa.Table, column: str, kind: pa.DataType) -> pa.ChunkedArray:
    """A count or a size, 0 where absent (as the query's coalesce)."""
    if column not in table.column_names:
        return pa.chunked_array([pa.repeat(pa.scalar(0, kind), table.num_rows)])
    return pc.fill_null(pc.cast(table.column(column), kind), 0)
