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


def render(template: str, row: dict) -> tuple[str, ...]:
    """A row's directory path under a layout, computed independently of idcfs's SQL."""
    columns = sorted(row, key=len, reverse=True)
    path = []
    for segment in filter(None, layout.resolve(template).split("/")):
        out, i = "", 0
        while i < len(segment):
            if segment[i] == "%":
                name = next(c for c in columns if segment.startswith(c, i + 1))
                out += "" if row[name] is None else str(row[name])
                i += 1 + len(name)
            else:
                out += segment[i]
                i += 1
        path.append(naming.encode(out))
    return tuple(path)


def expected(sample, template: str) -> dict[tuple[str, ...], set[str]]:
    rows = pq.read_table(sample.index_dir / "idc_index.parquet").to_pylist()
    found: dict[tuple[str, ...], set[str]] = {}
    for r in rows:
        found.setdefault(render(template, r), set()).add(r["crdc_series_uuid"])
    return found


def walk(tree: Tree, node=ROOT, path=()) -> dict[tuple[str, ...], set[str]]:
    if tree.is_leaf(node):
        return {path: {tree.series(r).uuid for r in range(*tree.rows_of(node))}}
    found = {}
    for name, child in tree.children(node):
        found.update(walk(tree, child, (*path, name)))
    return found


TEMPLATES = ["default", "patient", "series", "described", "flat",
             "%collection_id/%Modality", "%license_short_name/%collection_id-%PatientID"]


@pytest.mark.parametrize("template", TEMPLATES)
def test_each_layout_puts_every_series_where_its_template_says(sample, tmp_path, template):
    tree = Tree(index.load(sample.index_dir, tmp_path / "c", Selection(idc_version=25, layout=template)))
    assert walk(tree) == expected(sample, template)


def test_the_default_layout_is_idc_indexs_download_template():
    assert layout.PRESETS["default"] == \
        "%collection_id/%PatientID/%StudyInstanceUID/%Modality_%SeriesInstanceUID"


def test_series_with_equal_paths_are_merged_into_one_folder(sample, tmp_path):
    merged = {p: u for p, u in expected(sample, "%collection_id/%Modality").items() if len(u) > 1}
    assert merged, "the sample has a collection with two series of one modality"


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
    path, uuids = next((p, u) for p, u in expected(sample, template).items() if len(u) > 1)
    rows = [r for r in sample.rows if r["crdc_series_uuid"] in uuids]
    files = {n: d for r in rows for n, d in sample.series_objects(r).items()}
    with mounted(sample, tmp_path / "m", tmp_path / "c", "-o", f"layout={template}",
                 endpoint=fast_s3) as mnt:
        folder = mnt.joinpath(*path)
        assert sorted(os.listdir(folder)) == sorted(files)
        for name, data in list(files.items())[:20]:
            assert (folder / name).read_bytes() == data
        assert os.getxattr(folder, "user.idc.Modality").decode() == rows[0]["Modality"]
        assert "user.idc.crdc_series_uuid" not in os.listxattr(folder)
