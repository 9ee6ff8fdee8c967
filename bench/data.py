"""The benchmark's bucket and index, made once under the work directory and reused.

Every object sits under a real index row's crdc_series_uuid (the rows are taken from the installed
idc-index-data), so idcfs mounts a real layout of real rows:

* a 292-file CT series of ~0.5 MB slices (nlst);
* a 1 GiB object (a slide microscopy row) for sequential and concurrent reads;
* 40 CT series of 30 small slices each, for a training pipeline's loader;
* the largest series of IDC, 91,980 objects (ldct_and_projection_data), small ones, for listing;
* two slides with a base level above 1 GB (3 levels, a thumbnail, a label), with a Basic Offset
  Table and without any offset table.
"""

from __future__ import annotations

import io
import json
import sys
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
from pydicom.data import get_testdata_file
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import sample  # noqa: E402
import slides  # noqa: E402

BUCKET = "idc-open-data"
FORMAT = 3  # of the data made here: a new one is made when this changes
CT_FILES = 292
BIG_SIZE = 1 << 30
LOADER_SERIES, LOADER_FILES = 40, 30
LISTING_FILES = 91_980
SLIDE_BASE = 66_560  # pixels a side: 260 x 260 tiles of 256, ~1.1 GB of JPEG at level 0


def _rows(sql: str) -> list[dict]:
    return duckdb.connect().execute(
        sql.format(index=f"read_parquet('{sample.REAL_INDEX}')")).to_arrow_table().to_pylist()


def _slice(row: dict, n: int, size: int, rng: np.random.Generator) -> bytes:
    """A CT slice of a row's series, size x size, at its place in the volume."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = size
    ds.PixelData = rng.integers(0, 4096, size * size, dtype="<u2").tobytes()
    ds.PatientID, ds.StudyInstanceUID = row["PatientID"], row["StudyInstanceUID"]
    ds.SeriesInstanceUID, ds.InstanceNumber = row["SeriesInstanceUID"], n + 1
    ds.ImagePositionPatient = [0, 0, float(n)]
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[row["SeriesInstanceUID"], str(n)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _series_path(row: dict) -> str:
    return (f"{row['collection_id']}/{row['PatientID']}/{row['StudyInstanceUID']}/"
            f"{row['Modality']}_{row['SeriesInstanceUID']}")


def prepare(work: Path, say=print) -> dict:
    """Make the data unless it is there; what it is (meta.json)."""
    meta_path = work / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("format") == FORMAT:
        return json.loads(meta_path.read_text())
    say(f"making the benchmark data in {work} (once, a few minutes)")
    rng = np.random.default_rng(11)
    store = work / "s3" / BUCKET
    ct_row, = _rows("SELECT * FROM {index} WHERE collection_id = 'nlst' AND Modality = 'CT' "
                    f"ORDER BY abs(instanceCount - {CT_FILES}) LIMIT 1")
    sm_rows = _rows("SELECT * FROM {index} WHERE Modality = 'SM' AND aws_bucket = 'idc-open-data' "
                    "ORDER BY SeriesInstanceUID LIMIT 3")
    loader_rows = _rows("SELECT * FROM {index} WHERE collection_id = 'nlst' AND Modality = 'CT' "
                        f"AND aws_bucket = 'idc-open-data' ORDER BY SeriesInstanceUID LIMIT {LOADER_SERIES}")
    listing_row, = _rows("SELECT * FROM {index} WHERE aws_bucket = 'idc-open-data' "
                         "ORDER BY instanceCount DESC, SeriesInstanceUID LIMIT 1")

    def write_series(row: dict, files: dict[str, bytes]) -> None:
        folder = store / row["crdc_series_uuid"]
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        row.update(instanceCount=len(files), series_size_MB=sum(map(len, files.values())) / 1e6)

    write_series(ct_row, {f"{uuid.uuid5(sample.NAMESPACE, f'ct{n}')}.dcm": _slice(ct_row, n, 512, rng)
                          for n in tqdm(range(CT_FILES), desc="CT series", leave=False)})
    big_row = sm_rows[0]
    folder = store / big_row["crdc_series_uuid"]
    folder.mkdir(parents=True, exist_ok=True)
    big = folder / f"{uuid.uuid5(sample.NAMESPACE, 'sm')}.dcm"
    with open(big, "wb") as out:
        for _ in tqdm(range(BIG_SIZE // (64 << 20)), desc="1 GiB object", leave=False):
            out.write(rng.bytes(64 << 20))
    big_row.update(instanceCount=1, series_size_MB=BIG_SIZE / 1e6)
    for i, row in enumerate(tqdm(loader_rows, desc="loader series", leave=False)):
        write_series(row, {f"{uuid.uuid5(sample.NAMESPACE, f'l{i}-{n}')}.dcm":
                           _slice(row, n, 256, rng) for n in range(LOADER_FILES)})
    folder = store / listing_row["crdc_series_uuid"]
    folder.mkdir(parents=True, exist_ok=True)
    for n in tqdm(range(listing_row["instanceCount"]), desc="91,980-file series", leave=False):
        (folder / f"{uuid.uuid5(sample.NAMESPACE, f'list{n}')}.dcm").write_bytes(b"DICM")
    listing_row.update(series_size_MB=listing_row["instanceCount"] * 4 / 1e6)
    slide_meta = {}
    for row, table in tqdm(list(zip(sm_rows[1:], ("bot", "none"))), desc="slides", leave=False):
        slide = slides.make_slide(table, base=SLIDE_BASE, levels=3, seed=7, distinct_tiles=64,
                                  row=row)
        write_series(row, slide.files)
        slide_meta[table] = {"path": _series_path(row), "uuid": row["crdc_series_uuid"],
                             "bytes": int(row["series_size_MB"] * 1e6),
                             "level0": len(slide.files["level0.dcm"])}
    rows = [ct_row, big_row, *loader_rows, listing_row, *sm_rows[1:]]
    (work / "index").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(sample.REAL_INDEX)),
                   work / "index" / "idc_index.parquet")
    meta = {
        "format": FORMAT,
        "ct": {"uuid": ct_row["crdc_series_uuid"], "bytes": int(ct_row["series_size_MB"] * 1e6),
               "path": _series_path(ct_row), "patient": f"{ct_row['collection_id']}/{ct_row['PatientID']}"},
        "sm": {"uuid": big_row["crdc_series_uuid"], "key": f"{big_row['crdc_series_uuid']}/{big.name}",
               "path": f"{_series_path(big_row)}/{big.name}"},
        "loader": [{"uuid": r["crdc_series_uuid"], "path": _series_path(r),
                    "bytes": int(r["series_size_MB"] * 1e6)} for r in loader_rows],
        "listing": {"uuid": listing_row["crdc_series_uuid"], "path": _series_path(listing_row),
                    "files": listing_row["instanceCount"]},
        "slides": slide_meta,
    }
    meta_path.write_text(json.dumps(meta))
    return meta
