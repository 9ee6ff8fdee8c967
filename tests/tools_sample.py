"""A second sample, for the DICOM tool acceptance tests: coherent series that tools can convert.

The main sample gives each series a few unrelated slices, which is enough for a filesystem but
not for dcm2niix or SimpleITK, which assemble volumes. Here every series is something a viewer or
converter would meet in IDC: a CT volume with consistent geometry, an MR volume whose slices use
the transfer syntaxes pydicom's test files cover (implicit, big endian, RLE, JPEG-LS, JPEG
2000), RT structures/plan/dose, a structured report, colour and deflated secondary captures, a large
multi-frame file. Index rows are real rows of the installed index (one per modality), re-pointed
at the generated objects.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian
from sample import BUCKETS, NAMESPACE, REAL_INDEX, Sample, make_public_buckets, retag, s3_client

MR_VARIANTS = ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
               "MR_small_expb.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
               "MR_small_jp2klossless.dcm")
SECONDARY = ("SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_gdcm.dcm", "examples_ybr_color.dcm",
             "SC_rgb_small_odd.dcm", "image_dfl.dcm")
CT_SLICES = 24
LARGE_FRAMES = 160  # 160 x 320 x 320 x 2 bytes: a 32 MiB multi-frame file


def _at(ds: Dataset, z: float) -> Dataset:
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z]
    ds.SliceLocation = z
    return ds


def _ct_volume(row: dict) -> list[bytes]:
    """A CT volume of axial slices 2.5 mm apart, each with its own pixels."""
    rng = np.random.default_rng(11)
    files = []
    for n in range(CT_SLICES):
        ds = _at(pydicom.dcmread(get_testdata_file("CT_small.dcm")), -100.0 + 2.5 * n)
        ds.SliceThickness = 2.5
        pixels = rng.integers(0, 2000, ds.Rows * ds.Columns, dtype="<i2")
        ds.PixelData = pixels.tobytes()
        files.append(retag(ds, row, n))
    return files


def _mr_transfer_syntaxes(row: dict) -> list[bytes]:
    """One MR slice per transfer syntax, stacked 5 mm apart so converters see one volume."""
    return [retag(_at(pydicom.dcmread(get_testdata_file(name)), 5.0 * n), row, n)
            for n, name in enumerate(MR_VARIANTS)]


def _read(name: str) -> Dataset:
    """A pydicom test file as a complete DICOM file (rtstruct.dcm has no file meta of its own)."""
    ds = pydicom.dcmread(get_testdata_file(name), force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.preamble = b"\0" * 128
    return ds


def _single(name: str) -> Callable[[dict], list[bytes]]:
    return lambda row: [retag(_read(name), row, 0)]


def _secondary(row: dict) -> list[bytes]:
    return [retag(pydicom.dcmread(get_testdata_file(name)), row, n)
            for n, name in enumerate(SECONDARY)]


def _large_multiframe(row: dict) -> list[bytes]:
    """A multi-frame grayscale secondary capture large enough to span many cache blocks."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    ds.Rows = ds.Columns = 320
    ds.NumberOfFrames = LARGE_FRAMES
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = 40.0
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(13)
    ds.PixelData = rng.integers(0, 4096, LARGE_FRAMES * 320 * 320, dtype="<u2").tobytes()
    return [retag(ds, row, 0)]


CONTENT: dict[str, Callable[[dict], list[bytes]]] = {
    "CT": _ct_volume,
    "MR": _mr_transfer_syntaxes,
    "RTSTRUCT": _single("rtstruct.dcm"),
    "RTPLAN": _single("rtplan.dcm"),
    "RTDOSE": _single("rtdose.dcm"),
    "SR": _single("test-SR.dcm"),
    "OT": _secondary,
    "SM": _large_multiframe,
}


def _real_rows() -> list[dict]:
    """One real row per modality above, from series in the AWS buckets the sample serves."""
    con = duckdb.connect()
    modalities = ", ".join(f"'{m}'" for m in CONTENT)
    buckets = ", ".join(f"'{b}'" for b in BUCKETS)
    rows = con.execute(f"""
        SELECT * FROM read_parquet('{REAL_INDEX}') WHERE SeriesInstanceUID IN (
            SELECT min(SeriesInstanceUID) FROM read_parquet('{REAL_INDEX}')
            WHERE Modality IN ({modalities}) AND aws_bucket IN ({buckets}) GROUP BY Modality)
        ORDER BY Modality""").to_arrow_table().to_pylist()
    con.close()
    return rows


def build_tools_sample(endpoint: str, index_dir: Path) -> Sample:
    """Upload the tool series to the local server and write their index to index_dir."""
    rows = _real_rows()
    make_public_buckets(endpoint)
    sample = Sample(index_dir=index_dir, rows=rows)
    s3 = s3_client(endpoint)
    for row in rows:
        files = CONTENT[row["Modality"]](row)
        for n, data in enumerate(files):
            name = f"{uuid.uuid5(NAMESPACE, row['SeriesInstanceUID'] + 'tool' + str(n))}.dcm"
            key = f"{row['crdc_series_uuid']}/{name}"
            s3.put_object(Bucket=row["aws_bucket"], Key=key, Body=data)
            sample.objects[(row["aws_bucket"], key)] = data
        row["instanceCount"] = len(files)
        row["series_size_MB"] = sum(map(len, files)) / 1e6
    index_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(REAL_INDEX)),
                   index_dir / "idc_index.parquet")
    return sample
