"""Scale: a series folder of 100,000 objects lists completely, once each, through paged readdir."""

from __future__ import annotations

import os
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import s3server
import sample as sample_data
from conftest import mounted
from test_mount import series_dir

COUNT = 100_000


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
    port = sample_data.free_port()
    server = s3server.start(base / "s3", port)
    yield row, names, base, f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait()


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
