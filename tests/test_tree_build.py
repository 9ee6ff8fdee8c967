"""The tree build reads most selections with Arrow alone (arrow_rows.py) and the others with
duckdb's query: both must make the same tree, file for file."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import sample as sample_data
from idcfs.index import arrow_rows, build, layout
from idcfs.index.selection import Selection, known_versions

REAL = sample_data.REAL_INDEX
NEWEST = max(known_versions(REAL.parent))


def tree_files(folder) -> dict:
    """Every file of a built tree: the Arrow tables (schema and values) and the metadata."""
    out = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".arrow":
            with pa.memory_map(str(path)) as source:
                out[path.name] = ipc.open_file(source).read_all()
        else:
            out[path.name] = json.loads(path.read_text())
    return out


def both_ways(parquet, tmp_path, monkeypatch, sel: Selection) -> tuple[dict, dict]:
    levels = layout.parse(sel.layout, pq.read_schema(parquet).names)
    assert arrow_rows.rows(parquet, sel, levels, ["collection_id"]) is not None, \
        "this selection should be read with Arrow alone"
    build.build(parquet, tmp_path / "arrow", sel)
    with monkeypatch.context() as m:
        m.setattr(arrow_rows, "rows", lambda *args: None)
        build.build(parquet, tmp_path / "query", sel)
    return tree_files(tmp_path / "arrow"), tree_files(tmp_path / "query")


def assert_same(arrow: dict, query: dict) -> None:
    assert arrow.keys() == query.keys()
    for name, table in arrow.items():
        if isinstance(table, pa.Table):
            assert table.schema == query[name].schema, name
            assert table.equals(query[name]), name
        else:
            assert table == query[name], name


@pytest.mark.parametrize("options", [
    {"idc_version": NEWEST},
    {"idc_version": NEWEST, "source": "gcs", "layout": "described"},
], ids=["default", "gcs-described"])
def test_the_full_index_makes_the_same_tree_either_way(tmp_path, monkeypatch, options):
    arrow, query = both_ways(REAL, tmp_path, monkeypatch, Selection(**options))
    assert arrow["meta.json"]["rows"] > 900_000
    assert_same(arrow, query)


@pytest.fixture(scope="module")
def odd_index(tmp_path_factory):
    """Real rows with what a careless index could hold: empty and missing values in the levels
    and citations, names with escapes and non-ASCII bytes, a series of an older release."""
    rows = pq.read_table(REAL)
    rows = rows.take(list(range(0, rows.num_rows, rows.num_rows // 3000)))  # every collection
    n = rows.num_rows

    def edit(column: str, every: int, value) -> None:
        nonlocal rows
        values = rows.column(column).to_pylist()
        for i in range(0, n, every):
            values[i] = value
        rows = rows.set_column(rows.schema.get_field_index(column), column,
                               pa.array(values, rows.schema.field(column).type))

    edit("PatientID", 7, None)
    edit("StudyInstanceUID", 11, "")
    edit("PatientID", 13, "Zoë/50%")
    edit("Modality", 17, None)
    edit("license_short_name", 5, None)
    edit("source_DOI", 3, None)
    edit("series_revised_idc_version", 19, NEWEST)
    edit("series_revised_idc_version", 23, 1)
    folder = tmp_path_factory.mktemp("odd")
    pq.write_table(rows, folder / "idc_index.parquet")
    return folder / "idc_index.parquet"


@pytest.mark.parametrize("options", [
    {},
    {"idc_version": NEWEST - 1},
    {"source": "gcs", "layout": "patient"},
    {"layout": "%collection_id-%Modality/%PatientID_%StudyDate"},
    {"layout": "flat"},
    {"collections": ("nlst", "tcga_luad", "no_such_collection")},
    {"licenses": ("CC BY 4.0",)},
    {"exclude_licenses": ("CC BY 4.0",)},
], ids=["all", "older-release", "gcs-patient", "own-layout", "flat", "collections", "license",
        "exclude-license"])
def test_odd_rows_make_the_same_tree_either_way(odd_index, tmp_path, monkeypatch, options):
    arrow, query = both_ways(odd_index, tmp_path, monkeypatch, Selection(**options))
    assert arrow["meta.json"]["rows"] > 0
    assert_same(arrow, query)


def test_selections_that_need_sql_are_left_to_duckdb(odd_index, tmp_path):
    levels = layout.parse("default", pq.read_schema(REAL).names)
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("1.2.3.4\n")
    for sel in (Selection(filter="Modality = 'CT'"), Selection(manifest=str(manifest)),
                Selection(idc_version=NEWEST - 1)):  # the real index has prior rows for it
        assert arrow_rows.rows(REAL, sel, levels, ["collection_id"]) is None
    text_only = layout.parse("%collection_id/%instanceCount", pq.read_schema(odd_index).names)
    assert arrow_rows.rows(odd_index, Selection(), text_only, ["collection_id"]) is None
    assert pa.types.is_integer(pq.read_schema(odd_index).field("instanceCount").type)
