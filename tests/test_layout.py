"""Layouts: idc-index's dirTemplate and beyond, checked against a naive rendering of the rows."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import mounted
from idcfs.index import files as index
from idcfs.index import layout, naming
from idcfs.index.selection import BadSelection, Selection, check
from idcfs.index.tree import ROOT, Tree


ROW = {"collection_id": "c1", "PatientID": "p/1", "StudyInstanceUID": "1.2", "Modality": "CT",
       "SeriesInstanceUID": "1.2.3", "SeriesNumber": "4", "SeriesDescription": "ax 2 mm",
       "StudyDate": "2020-01-01", "license_short_name": "CC BY 4.0",
       "crdc_series_uuid": "uuid-a", "aws_bucket": "idc-open-data", "instanceCount": 1}
OTHER = {**ROW, "PatientID": "p2", "StudyInstanceUID": "1.9", "SeriesInstanceUID": "1.9.1",
         "SeriesDescription": "", "crdc_series_uuid": "uuid-b", "license_short_name": "CC0 1.0"}

# (template, where the two rows' series go), written out: the rule is not computed again here.
LAYOUTS = [
    ("default", {("c1", "p%2F1", "1.2", "CT_1.2.3"): {"uuid-a"},
                 ("c1", "p2", "1.9", "CT_1.9.1"): {"uuid-b"}}),
    ("patient", {("c1", "p%2F1", "CT_1.2.3"): {"uuid-a"}, ("c1", "p2", "CT_1.9.1"): {"uuid-b"}}),
    ("series", {("c1", "CT_1.2.3"): {"uuid-a"}, ("c1", "CT_1.9.1"): {"uuid-b"}}),
    ("described", {("c1", "p%2F1", "2020-01-01_1.2", "CT_4_ax 2 mm_1.2.3"): {"uuid-a"},
                   ("c1", "p2", "2020-01-01_1.9", "CT_4__1.9.1"): {"uuid-b"}}),
    ("flat", {(): {"uuid-a", "uuid-b"}}),
    ("%collection_id/%Modality", {("c1", "CT"): {"uuid-a", "uuid-b"}}),
    ("%license_short_name/%collection_id-%PatientID",
     {("CC BY 4.0", "c1-p%2F1"): {"uuid-a"}, ("CC0 1.0", "c1-p2"): {"uuid-b"}}),
]


def walk(tree: Tree, node=ROOT, path=()) -> dict[tuple[str, ...], set[str]]:
    if tree.is_leaf(node):
        return {path: {tree.series(r).uuid for r in range(*tree.rows_of(node))}}
    found = {}
    for name, child in tree.children(node):
        found.update(walk(tree, child, (*path, name)))
    return found


@pytest.mark.parametrize("template,where", LAYOUTS, ids=[t for t, _ in LAYOUTS])
def test_each_layout_puts_every_series_where_its_template_says(tmp_path, template, where):
    (tmp_path / "index").mkdir()
    pq.write_table(pa.Table.from_pylist([ROW, OTHER]), tmp_path / "index" / "idc_index.parquet")
    tree = Tree(index.load(tmp_path / "index", tmp_path / "c", Selection(layout=template)))
    assert walk(tree) == where


def test_the_default_layout_is_idc_indexs_download_template():
    assert layout.PRESETS["default"] == \
        "%collection_id/%PatientID/%StudyInstanceUID/%Modality_%SeriesInstanceUID"


def test_every_layout_places_every_series_of_the_sample(sample, tmp_path):
    """Over real rows (with their anomalies), each layout shows each series exactly once."""
    uuids = set(pq.read_table(sample.index_dir / "idc_index.parquet",
                              columns=["crdc_series_uuid"]).column(0).to_pylist())
    for template, _ in LAYOUTS:
        tree = Tree(index.load(sample.index_dir, tmp_path / "c",
                               Selection(idc_version=25, layout=template)))
        placed = [u for found in walk(tree).values() for u in found]
        assert sorted(placed) == sorted(uuids), template


@pytest.mark.parametrize("template,message", [
    ("%collection_id/%Nope", "unknown placeholder %Nope"),
    ("%collection_id//%PatientID", "empty level"),
    ("%collection_id/fixed", "has no placeholder"),
])
def test_bad_layouts_are_refused_in_one_line(sample, template, message):
    with pytest.raises(BadSelection) as err:
        check(sample.index_dir, Selection(idc_version=25, layout=template))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("patient,fits", [("x" * 255, True), ("x" * 256, False),
                                           ("/" * 85, True), ("/" * 85 + "a", False)])
def test_a_level_whose_escaped_names_exceed_255_bytes_is_refused(tmp_path, patient, fits):
    """Escaping counts: 85 slashes are a 255-byte name (%2F each), one character more is 256."""
    row = {"collection_id": "c", "PatientID": patient, "StudyInstanceUID": "1.2",
           "Modality": "CT", "SeriesInstanceUID": "1.2.3", "crdc_series_uuid": "u",
           "aws_bucket": "idc-open-data"}
    (tmp_path / "index").mkdir()
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "index" / "idc_index.parquet")
    selection = Selection(layout="%collection_id/%PatientID")
    if fits:
        tree = Tree(index.load(tmp_path / "index", tmp_path / "c", selection))
        assert len(naming.encode(patient).encode()) <= 255 and tree.rows == 1
    else:
        with pytest.raises(index.BadIndex, match="255"):
            index.load(tmp_path / "index", tmp_path / "c", selection)


def test_a_flat_mount_holds_every_file_in_its_root(sample, fast_s3, tmp_path):
    with mounted(sample, tmp_path / "m", tmp_path / "c", "--layout", "flat", "--collection",
                 sample.rows[2]["collection_id"], endpoint=fast_s3) as mnt:
        rows = [r for r in sample.rows if r["collection_id"] == sample.rows[2]["collection_id"]]
        files = {n: d for r in rows for n, d in sample.series_objects(r).items()}
        assert sorted(os.listdir(mnt)) == sorted([*files, ".idcfs"])
        for name, data in files.items():
            assert (mnt / name).read_bytes() == data


def test_a_merged_folder_lists_and_reads_the_files_of_all_its_series(sample, fast_s3, tmp_path):
    template = "%collection_id/%Modality"
    by_folder: dict[tuple[str, str], list[dict]] = {}
    for r in sample.rows:
        by_folder.setdefault((naming.encode(r["collection_id"]), r["Modality"]), []).append(r)
    path, rows = next((p, rows) for p, rows in by_folder.items() if len(rows) > 1)
    files = {n: d for r in rows for n, d in sample.series_objects(r).items()}
    with mounted(sample, tmp_path / "m", tmp_path / "c", "-o", f"layout={template}",
                 endpoint=fast_s3) as mnt:
        folder = mnt.joinpath(*path)
        assert sorted(os.listdir(folder)) == sorted(files)
        for name, data in list(files.items())[:20]:
            assert (folder / name).read_bytes() == data
        assert os.getxattr(folder, "user.idc.Modality").decode() == rows[0]["Modality"]
        assert "user.idc.crdc_series_uuid" not in os.listxattr(folder)
