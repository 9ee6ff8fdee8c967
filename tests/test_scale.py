"""Scale: a series folder of 100,000 objects lists completely, once each, through paged readdir;
`find` walks a whole real collection (every series listed from the bucket) and the daemon stays up
and small."""

from __future__ import annotations

import os
import subprocess
import uuid

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sample as sample_data
from conftest import daemon_pids, mounted, sample_daemon, series_dir, serving

from idcfs.index import naming

COUNT = 100_000
# A large real collection: ~4,300 series of ~600 patients, ~13,000 instances in idc-index-data 25.
COLLECTION = "tcga_gbm"


@pytest.fixture(scope="module")
def huge(sample, tmp_path_factory):
    """One real index row whose series folder holds 100,000 small objects."""
    base = tmp_path_factory.mktemp("huge")
    row = dict(sample.rows[3], crdc_series_uuid="00000000-0000-4000-8000-000000100000",
               instanceCount=COUNT)
    folder = base / "s3" / row["aws_bucket"] / row["crdc_series_uuid"]
    folder.mkdir(parents=True)
    names = [f"{i:06d}-{i * 7919 % 100003:06d}.dcm" for i in range(COUNT)]
    for name in names:
        (folder / name).write_bytes(name.encode())
    (base / "index").mkdir()
    pq.write_table(pa.Table.from_pylist([row], schema=pq.read_schema(sample_data.REAL_INDEX)),
                   base / "index" / "idc_index.parquet")
    with serving(base / "s3") as endpoint:
        yield row, names, base, endpoint


def test_a_folder_of_100000_files_lists_completely_without_duplicates(huge, tmp_path):
    row, names, base, endpoint = huge
    index = sample_data.Sample(index_dir=base / "index", rows=[row])
    with mounted(index, tmp_path / "m", tmp_path / "c", endpoint=endpoint) as mnt:
        listed = os.listdir(series_dir(mnt, row))
        assert len(listed) == COUNT == len(set(listed))
        assert sorted(listed) == sorted(names)
        found = subprocess.run(["find", str(mnt), "-name", "*.dcm"], capture_output=True,
                               text=True, check=True).stdout.split()
        assert len(found) == COUNT
        for name in (names[0], names[COUNT // 2], names[-1]):
            assert (series_dir(mnt, row) / name).read_bytes() == name.encode()


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Every real index row of COLLECTION, each series folder holding as many tiny objects as
    the index says it has instances."""
    base = tmp_path_factory.mktemp("collection")
    con = duckdb.connect()
    rows = con.execute(f"SELECT * FROM read_parquet('{sample_data.REAL_INDEX}') "
                       "WHERE collection_id = ?", [COLLECTION]).to_arrow_table().to_pylist()
    con.close()
    for row in rows:
        folder = base / "s3" / row["aws_bucket"] / row["crdc_series_uuid"]
        folder.mkdir(parents=True)
        for i in range(row["instanceCount"]):
            name = f"{uuid.uuid5(sample_data.NAMESPACE, row['crdc_series_uuid'] + str(i))}.dcm"
            (folder / name).write_bytes(name.encode())
    (base / "index").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(sample_data.REAL_INDEX)),
                   base / "index" / "idc_index.parquet")
    with serving(base / "s3") as endpoint:
        yield rows, base, endpoint


def test_find_over_a_whole_collection_sees_every_file_and_the_daemon_stays_up(collection,
                                                                              tmp_path):
    rows, base, endpoint = collection
    index = sample_data.Sample(index_dir=base / "index", rows=rows)
    folders = {series_dir(tmp_path, row) for row in rows}
    with mounted(index, tmp_path / "m", tmp_path / "c", endpoint=endpoint) as mnt:
        (pid,) = daemon_pids(mnt)
        found = subprocess.run(["find", str(mnt / naming.encode(COLLECTION))],
                               capture_output=True, text=True, check=True).stdout.splitlines()
        assert len([f for f in found if f.endswith(".dcm")]) == sum(r["instanceCount"] for r in rows)
        assert len(set(found)) == len(found)
        series_found = {p for p in found if p.count("/") == str(mnt).count("/") + 4}
        assert len(series_found) == len(folders)
        assert daemon_pids(mnt) == [pid]
        assert sample_daemon(pid)["rss_kib"] < 400 * 1024
        row = rows[len(rows) // 2]
        name = f"{uuid.uuid5(sample_data.NAMESPACE, row['crdc_series_uuid'] + '0')}.dcm"
        assert (series_dir(mnt, row) / name).read_bytes() == name.encode()
