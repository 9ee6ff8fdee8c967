"""A real mount of the sample: listings equal the index, bytes equal the objects."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pydicom
import pytest

from conftest import series_dir
from idcfs.index import naming


def expected_tree(rows: list[dict]) -> dict:
    """collection -> patient -> study -> series folder -> row, computed naively from the rows."""
    tree: dict = {}
    for r in rows:
        series = naming.encode(f"{r['Modality']}_{r['SeriesInstanceUID']}")
        (tree.setdefault(naming.encode(r["collection_id"]), {})
             .setdefault(naming.encode(r["PatientID"]), {})
             .setdefault(naming.encode(r["StudyInstanceUID"]), {}))[series] = r
    return tree


def all_files(sample, mount: Path):
    for row in sample.rows:
        for name, data in sample.series_objects(row).items():
            yield series_dir(mount, row) / name, data


def test_root_lists_every_collection_of_the_index_and_the_idcfs_directory(sample, mount):
    assert sorted(os.listdir(mount)) == sorted([*expected_tree(sample.rows), ".idcfs"])


def test_every_directory_lists_what_the_index_says(sample, mount):
    for coll, patients in expected_tree(sample.rows).items():
        assert sorted(os.listdir(mount / coll)) == sorted(patients)
        for patient, studies in patients.items():
            assert sorted(os.listdir(mount / coll / patient)) == sorted(studies)
            for study, series in studies.items():
                assert sorted(os.listdir(mount / coll / patient / study)) == sorted(series)


def test_series_folder_lists_its_bucket_objects_with_exact_sizes(sample, mount):
    for row in sample.rows:
        folder = series_dir(mount, row)
        objects = sample.series_objects(row)
        assert sorted(os.listdir(folder)) == sorted(objects)
        for name, data in objects.items():
            assert (folder / name).stat().st_size == len(data)


def test_series_larger_than_one_listing_page_lists_completely(sample, mount):
    row = max(sample.rows, key=lambda r: len(sample.series_objects(r)))
    names = os.listdir(series_dir(mount, row))
    assert len(names) > 1000
    assert sorted(names) == sorted(sample.series_objects(row))


def test_every_file_reads_back_its_objects_bytes(sample, mount):
    for path, data in all_files(sample, mount):
        assert path.read_bytes() == data, path


def test_pydicom_reads_each_series_with_its_rows_uids(sample, mount):
    for row in sample.rows:
        folder = series_dir(mount, row)
        for name in sorted(os.listdir(folder))[:3]:
            ds = pydicom.dcmread(folder / name)
            assert ds.SeriesInstanceUID == row["SeriesInstanceUID"]
            assert ds.StudyInstanceUID == row["StudyInstanceUID"]
            assert ds.PatientID == row["PatientID"]
            assert ds.Modality == row["Modality"]


def test_reads_at_any_offset_and_size_are_exact(sample, mount):
    path, data = max(all_files(sample, mount), key=lambda f: len(f[1]))
    assert len(data) > 1 << 20
    rng = random.Random(3)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(200):
            off = rng.randrange(0, len(data) + 10)
            size = rng.choice([1, 17, 4096, 65536, 131072, 300_000, len(data)])
            assert os.pread(fd, size, off) == data[off:off + size], (off, size)
    finally:
        os.close(fd)


def test_read_at_or_past_end_of_file_returns_nothing(sample, mount):
    path, data = next(all_files(sample, mount))
    with open(path, "rb") as f:
        f.seek(len(data))
        assert f.read() == b""
        f.seek(len(data) + 12345)
        assert f.read(10) == b""


def test_cp_r_of_a_series_copies_identical_files(sample, mount, tmp_path):
    row = sample.rows[0]
    subprocess.run(["cp", "-r", str(series_dir(mount, row)), str(tmp_path)], check=True)
    copied = tmp_path / series_dir(mount, row).name
    assert {p.name: p.read_bytes() for p in copied.iterdir()} == sample.series_objects(row)


@pytest.mark.parametrize(
    "change",
    [
        lambda d, f: open(d / "new.dcm", "wb"),
        lambda d, f: open(f, "r+b"),
        lambda d, f: open(f, "ab"),
        lambda d, f: os.mkdir(d / "sub"),
        lambda d, f: os.unlink(f),
        lambda d, f: os.rename(f, d / "moved.dcm"),
        lambda d, f: os.chmod(f, 0o644),
        lambda d, f: os.truncate(f, 0),
        lambda d, f: os.setxattr(f, "user.x", b"1"),
        lambda d, f: os.symlink(f, d / "link"),
        lambda d, f: os.rmdir(d),
    ],
    ids=["create", "open-rw", "append", "mkdir", "unlink", "rename", "chmod", "truncate",
         "setxattr", "symlink", "rmdir"],
)
def test_every_change_fails_with_erofs_and_changes_nothing(sample, mount, change):
    folder = series_dir(mount, sample.rows[0])
    before = sorted(os.listdir(folder))
    target = folder / before[0]
    with pytest.raises(OSError) as failure:
        change(folder, target)
    assert failure.value.errno == errno.EROFS
    assert sorted(os.listdir(folder)) == before
    assert target.read_bytes() == sample.series_objects(sample.rows[0])[before[0]]


def test_directories_are_0555_and_files_0444_with_stable_times(sample, mount):
    folder = series_dir(mount, sample.rows[0])
    seen = set()
    for path in (mount, folder.parent.parent.parent, folder.parent, folder):
        st = path.stat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555
        seen.add(st.st_mtime_ns)
    for path in folder.iterdir():
        st = path.stat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
        assert st.st_blocks * 512 >= st.st_size
        seen.add(st.st_mtime_ns)
    assert len(seen) == 1 and seen.pop() > 0


def test_directory_link_counts_count_subdirectories(sample, mount):
    tree = expected_tree(sample.rows)
    assert mount.stat().st_nlink == 2 + len(tree) + 1  # the collections and /.idcfs
    coll = next(iter(tree))
    assert (mount / coll).stat().st_nlink == 2 + len(tree[coll])


def test_statfs_reports_the_size_and_file_count_of_the_index(sample, mount):
    st = os.statvfs(mount)
    shown = [d for row in sample.rows for d in sample.series_objects(row).values()]
    assert st.f_blocks * st.f_frsize >= sum(map(len, shown))
    assert st.f_files >= len(shown)
    assert st.f_bavail == 0 and st.f_namemax == 255


def _sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_concurrent_readers_in_many_processes_get_exact_bytes(sample, mount):
    files = list(all_files(sample, mount))
    files = [f for f in files if len(f[1]) > 20_000] + random.Random(1).sample(files, 40)
    with ProcessPoolExecutor(8) as pool:
        digests = list(pool.map(_sha256_of, [str(p) for p, _ in files]))
    assert digests == [hashlib.sha256(d).hexdigest() for _, d in files]


def test_a_study_under_two_patients_appears_under_each(sample, mount):
    by_study: dict[str, set] = {}
    for r in sample.rows:
        by_study.setdefault(r["StudyInstanceUID"], set()).add((r["collection_id"], r["PatientID"]))
    study, owners = next((s, o) for s, o in by_study.items() if len(o) > 1)
    for coll, patient in owners:
        assert study in os.listdir(mount / coll / naming.encode(patient))


def test_a_patient_in_several_collections_appears_in_each(sample, mount):
    colls: dict[str, set] = {}
    for r in sample.rows:
        colls.setdefault(r["PatientID"], set()).add(r["collection_id"])
    patient, where = next((p, c) for p, c in colls.items() if len(c) > 1)
    for coll in where:
        assert patient in os.listdir(mount / coll)


@pytest.mark.parametrize("patient", ["ZZ RIDER MR8 1", "GBM_DSC_MRI_DRO_Bo=15T"])
def test_patient_ids_with_spaces_and_equals_are_names_unchanged(sample, mount, patient):
    row = next(r for r in sample.rows if r["PatientID"] == patient)
    assert patient in os.listdir(mount / row["collection_id"])
    folder = series_dir(mount, row)
    assert pydicom.dcmread(next(folder.iterdir())).PatientID == patient


@pytest.mark.parametrize(
    "patient,name", [("a/b", "a%2Fb"), ("..", "%2E%2E"), ("", "%"), ("100%", "100%25"), (".", "%2E")]
)
def test_unsafe_patient_ids_are_escaped_reversibly(sample, mount, patient, name):
    row = next(r for r in sample.rows if r["PatientID"] == patient)
    assert name in os.listdir(mount / row["collection_id"])
    folder = series_dir(mount, row)
    assert folder.parent.parent.name == name
    assert pydicom.dcmread(next(folder.iterdir())).PatientID == patient


# Bad names in lookups, at each kind of level, and what they must give.
BAD_NAMES = [
    (b"no-such-collection", errno.ENOENT),
    (b"a%2fb", errno.ENOENT),           # not the canonical escape (%2F)
    (b"%41", errno.ENOENT),             # an escape of a character that needs none
    (b"%zz", errno.ENOENT),             # not an escape at all
    (b"..%2Fx", errno.ENOENT),          # a value with '..' that the index does not have
    (b"\xff\xfe-not-utf8", errno.ENOENT),
    (b"x" * 255, errno.ENOENT),         # the longest name there can be
    (b"x" * 256, errno.ENAMETOOLONG),   # refused by the kernel before idcfs sees it
]


@pytest.mark.parametrize("name,error", BAD_NAMES)
@pytest.mark.parametrize("level", ["collection", "patient", "series folder"])
def test_bad_names_in_lookups_fail_with_the_right_errno(sample, mount, level, name, error):
    folder = {"collection": mount, "patient": mount / sample.rows[0]["collection_id"],
              "series folder": series_dir(mount, sample.rows[0])}[level]
    with pytest.raises(OSError) as err:
        os.stat(os.fsencode(folder) + b"/" + name)
    assert err.value.errno == error


def test_shell_tools_see_exact_sizes(sample, mount, tmp_path):
    row = sample.rows[0]
    folder = series_dir(mount, row)
    du = subprocess.run(["du", "-sb", str(folder)], capture_output=True, text=True, check=True)
    assert int(du.stdout.split()[0]) == sum(map(len, sample.series_objects(row).values()))
    found = subprocess.run(["find", str(folder.parent.parent), "-name", "*.dcm"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(found) >= len(sample.series_objects(row))
    shutil.copytree(folder, tmp_path / "copy")
    assert sorted(os.listdir(tmp_path / "copy")) == sorted(sample.series_objects(row))


def test_files_and_directories_carry_their_index_values_as_extended_attributes(sample, mount):
    row = sample.rows[0]
    folder = series_dir(mount, row)
    name = sorted(os.listdir(folder))[0]
    attrs = {a: os.getxattr(folder / name, a).decode() for a in os.listxattr(folder / name)}
    assert attrs == {
        "user.idc.collection_id": row["collection_id"], "user.idc.PatientID": row["PatientID"],
        "user.idc.StudyInstanceUID": row["StudyInstanceUID"],
        "user.idc.SeriesInstanceUID": row["SeriesInstanceUID"], "user.idc.Modality": row["Modality"],
        "user.idc.source_DOI": row["source_DOI"],
        "user.idc.license_short_name": row["license_short_name"],
        "user.idc.crdc_series_uuid": row["crdc_series_uuid"],
        "user.idc.crdc_instance_uuid": name.removesuffix(".dcm"),
        "user.idc.url": f"s3://{row['aws_bucket']}/{row['crdc_series_uuid']}/{name}",
        "user.idc.idc_version": "25",
    }
    assert os.getxattr(folder.parent, "user.idc.StudyInstanceUID").decode() == row["StudyInstanceUID"]
    assert os.getxattr(folder.parent.parent, "user.idc.PatientID").decode() == row["PatientID"]
    assert set(os.listxattr(folder.parent.parent.parent)) == {"user.idc.collection_id",
                                                               "user.idc.idc_version"}


def test_getfattr_dumps_the_attributes_and_unknown_ones_are_enodata(sample, mount):
    folder = series_dir(mount, sample.rows[2])
    out = subprocess.run(["getfattr", "-d", str(folder)], capture_output=True, text=True,
                         check=True).stdout
    assert f'user.idc.SeriesInstanceUID="{sample.rows[2]["SeriesInstanceUID"]}"' in out
    with pytest.raises(OSError) as err:
        os.getxattr(folder, "user.idc.nothing")
    assert err.value.errno == errno.ENODATA


def test_the_idcfs_directory_tells_version_options_stats_and_citations(sample, mount):
    about = mount / ".idcfs"
    assert sorted(os.listdir(about)) == ["citations", "options", "stats", "version"]
    assert (about / "version").read_text() == "25\n"
    options = json.loads((about / "options").read_text())
    assert options["idc_version"] == 25 and options["source"] == "aws"
    assert options["series"] == len(sample.rows)
    before = json.loads((about / "stats").read_text())
    path, data = next(all_files(sample, mount))
    assert path.read_bytes() == data
    after = json.loads((about / "stats").read_text())
    assert after["bytes_fetched"] >= before.get("bytes_fetched", 0)
    assert set(after) >= {"fetches", "errors", "disk_cache_bytes", "listings_fetched"}
    lines = (about / "citations").read_text().splitlines()
    assert lines[0] == "source_DOI\tlicense\tseries\tcollections"
    cited = {}
    for line in lines[1:]:
        doi, license_name, series, _ = line.split("\t")
        cited[(doi, license_name)] = int(series)
    expected = {}
    for r in sample.rows:
        key = (f"https://doi.org/{r['source_DOI']}", r["license_short_name"])
        expected[key] = expected.get(key, 0) + 1
    assert cited == expected


def test_the_idcfs_directory_is_read_only(mount):
    with pytest.raises(OSError) as err:
        open(mount / ".idcfs" / "version", "w")
    assert err.value.errno == errno.EROFS
