"""Slide microscopy through the mount: OpenSlide and wsidicom see the same slide as in a local
copy (levels, associated images, pixels of two regions), and a slide with an offset table costs
the endpoint about the blocks its reader reads, not the slide.

The slides are made here (tests/slides.py): three levels of JPEG tiles, a thumbnail and a label,
with a Basic Offset Table, an Extended Offset Table, or none, each in a series of a real SM row
of the index. Which bytes a reader reads is seen with strace on the local copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import s3server
import sample as sample_data
import slides
from conftest import mounted, series_dir, serving

pytest.importorskip("openslide")
pytest.importorskip("wsidicom")

READER = Path(__file__).parent / "slide_reader.py"
BLOCK = 1 << 20


@pytest.fixture(scope="module")
def slide_sample(tmp_path_factory, test_ca):
    """An index of three SM series (one per offset table), their objects behind an HTTPS
    endpoint, and a local copy of each series folder."""
    import duckdb

    rows = duckdb.connect().execute(
        f"SELECT * FROM read_parquet('{sample_data.REAL_INDEX}') WHERE Modality = 'SM' "
        "AND aws_bucket = 'idc-open-data' ORDER BY SeriesInstanceUID LIMIT 3").to_arrow_table().to_pylist()
    base = tmp_path_factory.mktemp("slides")
    objects, copies = {}, {}
    for row, table in zip(rows, slides.OFFSET_TABLES):
        slide = slides.make_slide(table, base=8192, levels=3, seed=len(copies) + 3,
                                  distinct_tiles=48, row=row)
        row["instanceCount"] = len(slide.files)
        row["series_size_MB"] = sum(map(len, slide.files.values())) / 1e6
        local = base / "local" / table
        local.mkdir(parents=True)
        for name, data in slide.files.items():
            objects[(row["aws_bucket"], f"{row['crdc_series_uuid']}/{name}")] = data
            (local / name).write_bytes(data)
        copies[table] = (row, local)
    index = base / "index"
    index.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(sample_data.REAL_INDEX)),
                   index / "idc_index.parquet")
    shutil.copy(sample_data.REAL_INDEX.parent / "version_metadata_index.parquet", index)
    root = base / "s3"
    s3server.write_tree(root, objects)
    with serving(root, test_ca) as endpoint:
        yield sample_data.Sample(index_dir=index, rows=rows, objects=objects), copies, endpoint


def read_slide(reader: str, folder: Path, trace: Path | None = None) -> dict:
    """What the reader sees of the slide in folder; with trace, strace's record of its reads."""
    command = [sys.executable, str(READER), reader, str(folder)]
    if trace is not None:
        command = ["strace", "-ff", "-qq", "-y", "-e", "trace=openat,read,pread64,lseek",
                   "-o", str(trace), *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout)


_CALL = re.compile(r"^(openat|read|pread64|lseek)\((\d+)<([^>]*)>, (.*)\) = (-?\d+)")


def blocks_read(trace: Path, folder: Path) -> set[tuple[str, int]]:
    """(file, block) of every byte the traced reader read from files in folder."""
    touched: set[tuple[str, int]] = set()
    for part in trace.parent.glob(trace.name + ".*"):
        position: dict[str, int] = {}
        for line in part.read_text(errors="replace").splitlines():
            match = _CALL.match(line)
            if not match or not match.group(3).startswith(str(folder)):
                continue
            call, path, args, result = match.group(1), match.group(3), match.group(4), int(match.group(5))
            name = os.path.basename(path)
            if call == "lseek":
                position[name] = result
            elif call in ("read", "pread64") and result > 0:
                start = int(args.rsplit(", ", 1)[1]) if call == "pread64" else position.get(name, 0)
                touched.update((name, b) for b in range(start // BLOCK, (start + result - 1) // BLOCK + 1))
                if call == "read":
                    position[name] = start + result
    return touched



@pytest.mark.parametrize("reader", ["openslide", "wsidicom"])
@pytest.mark.parametrize("table", slides.OFFSET_TABLES)
def test_a_slide_reads_through_the_mount_as_from_a_local_copy(slide_sample, tmp_path, reader,
                                                               table):
    sample, copies, endpoint = slide_sample
    row, local = copies[table]
    expected = read_slide(reader, local, trace=tmp_path / "trace")
    with mounted(sample, tmp_path / "m", tmp_path / "c", endpoint=endpoint) as mnt:
        folder = series_dir(mnt, row)
        assert sorted(os.listdir(folder)) == sorted(os.listdir(local))
        s3server.counts(endpoint, reset=True)
        assert read_slide(reader, folder) == expected
        asked = s3server.counts(endpoint)["GET_bytes"]
    assert expected["levels"] == 3 and len(expected["associated"]) == 2
    touched = blocks_read(tmp_path / "trace", local)
    sizes = {name: (local / name).stat().st_size for name in os.listdir(local)}
    needed = sum(min(BLOCK, sizes[name] - b * BLOCK) for name, b in touched)
    slide_bytes = sum(sizes.values())
    print(f"{reader} {table}: asked {asked / 1e6:.1f} MB, the reads touch {needed / 1e6:.1f} MB "
          f"of blocks, the slide is {slide_bytes / 1e6:.1f} MB")
    if table != "none":  # with an offset table, the blocks read, not the slide
        assert asked <= 1.3 * needed + BLOCK
    else:  # without one, the levels read are walked whole, each byte asked for once
        assert asked <= slide_bytes
