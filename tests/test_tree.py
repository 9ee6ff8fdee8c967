"""The tree core over a built index, without FUSE: lookups, listings and inode numbers."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROWS, build_tree, index_rows
from idcfs.index import files as index
from idcfs.index.tree import ROOT, Tree


@pytest.fixture
def tree(tmp_path) -> Tree:
    return build_tree(tmp_path, ROWS)


def walk(tree: Tree, *names: str):
    node = ROOT
    for name in names:
        node = tree.lookup(node, name)
        if node is None:
            return None
    return node


def names(tree: Tree, node, start: int = 0) -> list[str]:
    return [n for n, _ in tree.children(node, start)]


def test_root_lists_collections_sorted(tree):
    assert names(tree, ROOT) == ["acrin", "nlst"]


def test_levels_list_what_the_rows_say(tree):
    assert names(tree, walk(tree, "nlst")) == ["100", "200"]
    assert names(tree, walk(tree, "nlst", "100")) == ["1.1", "1.2"]
    assert names(tree, walk(tree, "nlst", "100", "1.1")) == ["CT_1.1.1", "CT_1.1.2"]
    assert names(tree, walk(tree, "acrin")) == ["%", "100", "a%2Fb"]


def test_anomalies_appear_under_every_parent(tree):
    assert names(tree, walk(tree, "nlst", "200", "1.1")) == ["CT_1.1.9"]
    assert names(tree, walk(tree, "acrin", "100", "9.1")) == ["MR_9.1.1"]


def test_lookup_of_escaped_names_finds_the_raw_values(tree):
    assert walk(tree, "acrin", "a%2Fb", "9.2", "MR_9.2.1") is not None
    assert walk(tree, "acrin", "%", "9.3") is not None


@pytest.mark.parametrize("path", [("nope",), ("nlst", "300"), ("nlst", "100", "1.3"),
                                  ("nlst", "100", "1.1", "CT_1.1.3"), ("acrin", "a/b"),
                                  ("acrin", "a%2fb"), ("nlst", b"\xff")])
def test_lookup_of_unknown_names_is_none(tree, path):
    assert walk(tree, *path) is None


def test_children_resume_from_an_offset(tree):
    acrin = walk(tree, "acrin")
    assert names(tree, acrin, 1) == ["100", "a%2Fb"]
    assert names(tree, acrin, 3) == []


def test_inodes_round_trip_and_are_distinct(tree):
    seen = {}
    stack = [ROOT]
    while stack:
        node = stack.pop()
        assert tree.node(node.inode) == node
        assert node.inode not in seen
        seen[node.inode] = node
        stack.extend(child for _, child in tree.children(node))
    leaves = [n for n in seen.values() if tree.is_leaf(n)]
    assert sum(tree.rows_of(n)[1] - tree.rows_of(n)[0] for n in leaves) == len(ROWS)


def test_unknown_inodes_are_none(tree):
    assert tree.node((4 << 56) | len(ROWS)) is None
    assert tree.node(7 << 56) is None


def test_series_rows_know_their_bucket_and_uuid(tree):
    node = walk(tree, "nlst", "100", "1.2", "SEG_1.2.1")
    first, end = tree.rows_of(node)
    assert end - first == 1
    ref = tree.series(first)
    assert (ref.bucket, ref.uuid, ref.prefix) == ("idc-open-data-cr", "uuid-2", "uuid-2/")


def test_series_with_the_same_path_share_one_folder_as_idc_download_would(tmp_path):
    rows = index_rows(("c", "p", "s", "CT", "1.1"), ("c", "p", "s", "CT", "1.1"))
    tree = build_tree(tmp_path, rows)
    assert names(tree, walk(tree, "c", "p", "s")) == ["CT_1.1"]
    first, end = tree.rows_of(walk(tree, "c", "p", "s", "CT_1.1"))
    assert {tree.series(r).uuid for r in range(first, end)} == {"uuid-0", "uuid-1"}


def test_a_remount_reuses_the_built_tree(tmp_path):
    build_tree(tmp_path, ROWS)
    built = list((tmp_path / "cache" / "index").iterdir())
    Tree(index.load(tmp_path / "index", tmp_path / "cache"))
    assert list((tmp_path / "cache" / "index").iterdir()) == built


@pytest.mark.parametrize("setup,message", [
    (lambda d: None, "has no idc_index.parquet"),
    (lambda d: (d / "idc_index.parquet").write_text("not parquet"), "not a readable parquet"),
    (lambda d: pq.write_table(pa.table({"collection_id": ["x"]}), d / "idc_index.parquet"),
     "lacks required column(s): PatientID"),
])
def test_unusable_index_directories_are_named_in_the_error(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(index.BadIndex, match=message.replace("(", r"\(").replace(")", r"\)")):
        index.check_index_dir(tmp_path)
