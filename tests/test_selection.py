"""Version-pinned trees, clouds and cohorts, checked against an independent reading of the index."""

from __future__ import annotations

import os

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import sample as sample_data
from conftest import mounted, run_idcfs
from idcfs.index import files as index
from idcfs.index import naming
from idcfs.index.selection import BadSelection, Selection, check
from idcfs.index.tree import ROOT, Tree


def expected(index_dir, version: int, source: str = "aws") -> set[tuple]:
    """The rows of release `version`, read naively from the two parquet files."""
    current = pq.read_table(index_dir / "idc_index.parquet").to_pylist()
    prior_path = index_dir / "prior_versions_index.parquet"
    prior = pq.read_table(prior_path).to_pylist() if prior_path.exists() else []
    shown = set()
    for r in current:
        if r["series_revised_idc_version"] <= version:
            bucket = r["aws_bucket"] if source == "aws" else sample_data.GCS_BUCKETS[r["aws_bucket"]]
            shown.add((r["collection_id"], r["PatientID"], r["StudyInstanceUID"],
                       f"{r['Modality']}_{r['SeriesInstanceUID']}", r["crdc_series_uuid"], bucket))
    for r in prior:
        if r["min_idc_version"] <= version <= r["max_idc_version"]:
            bucket = r["aws_bucket"] if source == "aws" else r["gcs_bucket"]
            shown.add((r["collection_id"], r["PatientID"], r["StudyInstanceUID"],
                       f"{r['Modality']}_{r['SeriesInstanceUID']}", r["crdc_series_uuid"], bucket))
    return shown


def tree_rows(tree: Tree) -> set[tuple]:
    rows = set()
    for _, coll in tree.children(ROOT):
        for _, pat in tree.children(coll):
            for _, study in tree.children(pat):
                for _, series in tree.children(study):
                    for row in range(*tree.rows_of(series)):
                        ref = tree.series(row)
                        rows.add((tree.name(coll), tree.name(pat), tree.name(study),
                                  tree.name(series), ref.uuid, ref.bucket))
    return rows


def built(sample, tmp_path, **options) -> Tree:
    return Tree(index.load(sample.index_dir, tmp_path / "cache", Selection(**options)))


@pytest.mark.parametrize("version", [5, 10, 19, 20, 24, 25])
def test_each_version_shows_exactly_the_series_it_had(sample, tmp_path, version):
    assert tree_rows(built(sample, tmp_path, idc_version=version)) == expected(sample.index_dir, version)


def test_a_revised_series_has_its_old_content_before_its_revision(sample, tmp_path):
    revised = sample.rows[2]
    old, new = (built(sample, tmp_path / str(v), idc_version=v) for v in (24, 25))
    uuids = {v: {r[4] for r in rows if r[3].endswith(revised["SeriesInstanceUID"])}
             for v, rows in ((24, tree_rows(old)), (25, tree_rows(new)))}
    assert uuids == {24: {sample.prior[0]["crdc_series_uuid"]}, 25: {revised["crdc_series_uuid"]}}


def test_a_removed_series_is_there_only_in_the_releases_that_had_it(sample, tmp_path):
    gone = sample.prior[1]["crdc_series_uuid"]
    present = {v: any(r[4] == gone for r in tree_rows(built(sample, tmp_path / str(v), idc_version=v)))
               for v in (4, 5, 20, 21)}
    assert present == {4: False, 5: True, 20: True, 21: False}


@pytest.mark.parametrize("version", [20, 25])
def test_gcs_reads_idcs_gcs_buckets(sample, tmp_path, version):
    tree = built(sample, tmp_path, idc_version=version, source="gcs")
    assert tree_rows(tree) == expected(sample.index_dir, version, "gcs")


def test_the_prior_gcs_bucket_before_release_19_is_public_datasets_idc(sample, tmp_path):
    rows = tree_rows(built(sample, tmp_path, idc_version=15, source="gcs"))
    assert ("public-datasets-idc" in {r[5] for r in rows}) and "idc-open-data-two" not in {r[5] for r in rows}


def test_collection_license_and_filter_narrow_the_rows(sample, tmp_path):
    v = 25
    full = expected(sample.index_dir, v)
    rows = {r["crdc_series_uuid"]: r for r in pq.read_table(sample.index_dir / "idc_index.parquet").to_pylist()}
    one = sample.rows[0]["collection_id"]
    assert tree_rows(built(sample, tmp_path / "c", idc_version=v, collections=(one,))) == \
        {r for r in full if r[0] == one}
    no_nc = tree_rows(built(sample, tmp_path / "l", idc_version=v, exclude_licenses=("CC BY-NC 4.0", "CC BY-NC 3.0")))
    assert no_nc == {r for r in full if "NC" not in rows[r[4]]["license_short_name"]}
    assert no_nc != full
    ct = tree_rows(built(sample, tmp_path / "f", idc_version=v, filter="Modality = 'CT' AND instanceCount < 10"))
    assert ct == {r for r in full if rows[r[4]]["Modality"] == "CT" and rows[r[4]]["instanceCount"] < 10}


@pytest.mark.parametrize("options,message", [
    ({"idc_version": 99}, "IDC version 99 is not in this index (it knows versions 1-25)"),
    ({"collections": ("no_such",)}, "unknown collection(s): no_such"),
    ({"filter": "nosuch = 1"}, "nosuch"),
    ({"filter": "Modality ="}, "syntax error"),
    ({"filter": "1=1); DROP TABLE x; --"}, "syntax error"),
    ({"filter": "(SELECT count(*) FROM read_csv('/etc/passwd')) > 0"}, "/etc/passwd"),
])
def test_bad_selections_are_refused_in_one_line(sample, options, message):
    with pytest.raises(BadSelection) as err:
        check(sample.index_dir, Selection(**options))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_release_19_of_the_real_index_matches_an_independent_reading(tmp_path):
    real = sample_data.REAL_INDEX.parent
    tree = index.load(real, tmp_path / "cache", Selection(idc_version=19))
    cur = pq.read_table(real / "idc_index.parquet", columns=["crdc_series_uuid", "series_revised_idc_version"])
    prior = pq.read_table(real / "prior_versions_index.parquet",
                          columns=["crdc_series_uuid", "min_idc_version", "max_idc_version"])
    want = set(cur.filter(pc.less_equal(cur["series_revised_idc_version"], 19))["crdc_series_uuid"].to_pylist())
    want |= set(prior.filter(pc.and_(pc.less_equal(prior["min_idc_version"], 19),
                                     pc.greater_equal(prior["max_idc_version"], 19)))["crdc_series_uuid"].to_pylist())
    assert set(tree.crdc_series_uuids.to_pylist()) == want
    assert tree.meta["rows"] == len(want)


def _manifest(tmp_path, lines) -> str:
    path = tmp_path / "manifest.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("form", ["s3", "gs", "uid", "uuid"])
def test_a_manifest_selects_its_series_in_any_form(sample, tmp_path, form):
    chosen = sample.rows[:3]
    lines = ["# exported from the IDC portal", ""]
    for r in chosen:
        if form in ("s3", "gs"):
            bucket = r["aws_bucket"] if form == "s3" else sample_data.GCS_BUCKETS[r["aws_bucket"]]
            lines.append(f"cp {form}://{bucket}/{r['crdc_series_uuid']}/* ./data")
        else:
            lines.append(r["SeriesInstanceUID"] if form == "uid" else r["crdc_series_uuid"])
    tree = built(sample, tmp_path, idc_version=25, manifest=_manifest(tmp_path, lines))
    assert {r[4] for r in tree_rows(tree)} == {r["crdc_series_uuid"] for r in chosen}


def test_manifest_entries_the_release_lacks_are_reported_with_count_and_first_few(sample, tmp_path):
    old = sample.prior[0]["crdc_series_uuid"]
    path = _manifest(tmp_path, [sample.rows[0]["crdc_series_uuid"], old, "1.2.3.4.5"])
    notice = check(sample.index_dir, Selection(idc_version=25, manifest=path))
    assert notice.startswith("2 of 3 manifest entries are not in IDC version 25")
    assert old in notice and "1.2.3.4.5" in notice
    assert check(sample.index_dir, Selection(idc_version=24, manifest=path)).startswith("1 of 3")
    assert old in {r[4] for r in tree_rows(built(sample, tmp_path, idc_version=24, manifest=path))}


def test_a_manifest_line_that_names_no_series_is_refused(sample, tmp_path):
    path = _manifest(tmp_path, ["cp s3://idc-open-data/not-a-uuid/* .", "hello"])
    with pytest.raises(BadSelection, match="line 1 of manifest .* names no series"):
        check(sample.index_dir, Selection(idc_version=25, manifest=path))


# -- through real mounts -------------------------------------------------------------------------

def series_path(mnt, row) -> os.PathLike:
    return (mnt / naming.encode(row["collection_id"]) / naming.encode(row["PatientID"])
            / naming.encode(row["StudyInstanceUID"])
            / naming.encode(f"{row['Modality']}_{row['SeriesInstanceUID']}"))


def _objects(sample, bucket, uuid):
    return {k.split("/", 1)[1]: v for (b, k), v in sample.objects.items()
            if b == bucket and k.startswith(uuid + "/")}


def test_mounts_of_two_versions_side_by_side_show_old_and_new_files(sample, fast_s3, tmp_path):
    revised = sample.rows[2]
    old = sample.prior[0]
    with mounted(sample, tmp_path / "v24", tmp_path / "c", "--idc-version", "24", endpoint=fast_s3) as m24, \
         mounted(sample, tmp_path / "v25", tmp_path / "c", endpoint=fast_s3) as m25:
        for mnt, bucket, uuid in ((m24, old["aws_bucket"], old["crdc_series_uuid"]),
                                  (m25, revised["aws_bucket"], revised["crdc_series_uuid"])):
            files = _objects(sample, bucket, uuid)
            assert sorted(os.listdir(series_path(mnt, revised))) == sorted(files)
            for name, data in files.items():
                assert (series_path(mnt, revised) / name).read_bytes() == data


def test_a_gcs_mount_reads_from_the_gcs_bucket_names(sample, gcs_s3, tmp_path):
    gone = sample.prior[1]
    with mounted(sample, tmp_path / "m", tmp_path / "c", "--source", "gcs", "--idc-version", "20",
                 endpoint=gcs_s3) as mnt:
        files = _objects(sample, gone["aws_bucket"], gone["crdc_series_uuid"])
        for name, data in files.items():
            assert (series_path(mnt, gone) / name).read_bytes() == data


@pytest.mark.parametrize("args,message", [
    (["--idc-version", "99"], "it knows versions 1-25"),
    (["--filter", "nosuch = 1"], "bad --filter"),
    (["--collection", "nope"], "unknown collection(s): nope"),
    (["--source", "azure"], "--source"),
    (["--manifest", "/nonexistent/manifest.txt"], "cannot read manifest"),
])
def test_bad_selection_options_end_in_one_line(sample, s3_endpoint, tmp_path, args, message):
    (tmp_path / "m").mkdir()
    proc = run_idcfs("mount", str(tmp_path / "m"), "--index", str(sample.index_dir),
                     "--endpoint-url", s3_endpoint, "--cache-dir", str(tmp_path / "c"), *args)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


