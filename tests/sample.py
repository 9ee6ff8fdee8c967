"""IDC-shaped sample data on a local S3 server, for the tests and for `make demo`.

The index rows are real rows of the installed idc-index-data (chosen to include IDC's anomalies),
plus a few rows derived from a real one whose PatientIDs need escaping. Every series folder holds
real DICOM files (pydicom's bundled test files) re-tagged with that row's UIDs, uploaded under the
row's `<aws_bucket>/<crdc_series_uuid>/<crdc_instance_uuid>.dcm`, and the sample index records the
true instance counts and sizes.

Run as a script it starts a moto server with the sample and waits: `python tests/sample.py DIR`.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import duckdb
import idc_index_data
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
from botocore.config import Config
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from s3server import start_listening

REAL_INDEX = Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)
BUCKETS = ("idc-open-data", "idc-open-data-two", "idc-open-data-cr")
GCS_BUCKETS = {"idc-open-data": "idc-open-data", "idc-open-data-two": "idc-open-idc1",
               "idc-open-data-cr": "idc-open-cr"}
PRIOR_INDEX = REAL_INDEX.parent / "prior_versions_index.parquet"
NAMESPACE = uuid.UUID("6f1d2c4e-2b7a-4c55-9d0e-6b1f0c9a1d11")
# Files of each series: small CT and MR slices, a 320 KB overlay image (several FUSE reads).
CONTENT = ("CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm")
BIG_SERIES_FILES = 1005  # more than one ListObjectsV2 page
DERIVED_PATIENT_IDS = ("a/b", "..", "", "100%", ".")


@dataclass
class Sample:
    """What the sample holds: the index directory and every object's bytes (on AWS bucket names;
    the same objects are also stored under IDC's GCS bucket names)."""

    index_dir: Path
    rows: list[dict]
    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)
    prior: list[dict] = field(default_factory=list)
    gcs_objects: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def series_objects(self, row: dict) -> dict[str, bytes]:
        prefix = f"{row['crdc_series_uuid']}/"
        return {
            key[len(prefix):]: data
            for (bucket, key), data in self.objects.items()
            if bucket == row["aws_bucket"] and key.startswith(prefix)
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(port: int) -> subprocess.Popen:
    """A moto S3 server on 127.0.0.1:port, ready to answer."""
    return start_listening([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                           port, "moto server")


def _select_real_rows() -> list[dict]:
    """Real rows that cover IDC's shapes and anomalies, from all three buckets."""
    src = str(REAL_INDEX)
    con = duckdb.connect()
    picks = f"""
        WITH idx AS (SELECT * FROM read_parquet('{src}')),
        two_patients AS (   -- one StudyInstanceUID under two PatientIDs
            SELECT StudyInstanceUID FROM idx GROUP BY 1
            HAVING count(DISTINCT PatientID) > 1 ORDER BY 1 LIMIT 1),
        multi_coll AS (     -- one PatientID in several collections
            SELECT PatientID FROM idx GROUP BY 1
            HAVING count(DISTINCT collection_id) > 1 ORDER BY 1 LIMIT 1),
        chosen AS (
            SELECT SeriesInstanceUID FROM (
                SELECT SeriesInstanceUID, row_number() OVER (
                    PARTITION BY PatientID ORDER BY SeriesInstanceUID) AS n
                FROM idx WHERE StudyInstanceUID IN (SELECT * FROM two_patients)) WHERE n <= 2
            UNION ALL
            SELECT min(SeriesInstanceUID) FROM idx
                WHERE PatientID IN (SELECT * FROM multi_coll) GROUP BY collection_id
            UNION ALL
            SELECT min(SeriesInstanceUID) FROM idx
                WHERE PatientID IN ('ZZ RIDER MR8 1', 'GBM_DSC_MRI_DRO_Bo=15T') GROUP BY PatientID
            UNION ALL
            SELECT min(SeriesInstanceUID) FROM idx
                WHERE aws_bucket IN ('idc-open-data-two', 'idc-open-data-cr') GROUP BY aws_bucket
            UNION ALL
            SELECT min(SeriesInstanceUID) FROM idx
                WHERE collection_id = 'nlst' AND Modality = 'CT' GROUP BY Modality
        )
        SELECT * FROM idx WHERE SeriesInstanceUID IN (SELECT * FROM chosen)
        ORDER BY SeriesInstanceUID
    """
    rows = con.execute(picks).to_arrow_table().to_pylist()
    con.close()
    return rows


def _derived_rows(template: dict) -> list[dict]:
    """Rows like a real one but with PatientIDs that must be escaped to become names."""
    rows = []
    for i, patient in enumerate(DERIVED_PATIENT_IDS):
        row = dict(template)
        row["PatientID"] = patient
        row["StudyInstanceUID"] = f"2.25.{uuid.uuid5(NAMESPACE, f'study{i}').int}"
        row["SeriesInstanceUID"] = f"2.25.{uuid.uuid5(NAMESPACE, f'series{i}').int}"
        row["crdc_series_uuid"] = str(uuid.uuid5(NAMESPACE, f"crdc{i}"))
        row["series_aws_url"] = f"s3://{row['aws_bucket']}/{row['crdc_series_uuid']}/*"
        rows.append(row)
    return rows


def retag(ds: pydicom.Dataset, row: dict, number: int) -> bytes:
    """The dataset as instance `number` of the row's series, saved in its own transfer syntax."""
    ds.PatientID = row["PatientID"]
    ds.StudyInstanceUID = row["StudyInstanceUID"]
    ds.SeriesInstanceUID = row["SeriesInstanceUID"]
    ds.Modality = row["Modality"]
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[row["SeriesInstanceUID"], str(number)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number + 1
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _dicom(name: str, row: dict, number: int) -> bytes:
    return retag(pydicom.dcmread(get_testdata_file(name)), row, number)


def _big_ct(row: dict) -> bytes:
    """A 2 MiB CT slice (1024x1024, 16 bit), so reads span many FUSE requests."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 1024
    ds.PixelData = np.random.default_rng(7).integers(0, 4096, 1024 * 1024, dtype="<u2").tobytes()
    ds.PatientID, ds.StudyInstanceUID = row["PatientID"], row["StudyInstanceUID"]
    ds.SeriesInstanceUID, ds.Modality = row["SeriesInstanceUID"], row["Modality"]
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[row["SeriesInstanceUID"], "big"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _series_content(row: dict, count: int, big: bool) -> dict[str, bytes]:
    files = {}
    for n in range(count):
        data = _dicom(CONTENT[n % len(CONTENT)] if count <= 10 else "MR_small.dcm", row, n)
        files[f"{uuid.uuid5(NAMESPACE, row['SeriesInstanceUID'] + str(n))}.dcm"] = data
    if big:
        files[f"{uuid.uuid5(NAMESPACE, row['SeriesInstanceUID'] + 'big')}.dcm"] = _big_ct(row)
    return files


def s3_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="sample",
        aws_secret_access_key="sample",
        config=Config(max_pool_connections=32),
    )


def make_public_buckets(endpoint: str, names=BUCKETS) -> None:
    """Buckets that answer unsigned requests, as IDC's do (moto needs a policy for it)."""
    s3 = s3_client(endpoint)
    for bucket in names:
        s3.create_bucket(Bucket=bucket)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow", "Principal": "*",
                "Action": ["s3:Get*", "s3:List*", "s3:HeadObject"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }],
        }
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def _prior_rows(revised: dict, removed_template: dict) -> list[dict]:
    """Older contents: `revised` as it was in releases 10-24 (its current row is from 25 on),
    and a series that existed in releases 5-20 only (removed since), in the prior index's shape."""
    old = {k: revised[k] for k in ("collection_id", "PatientID", "SeriesInstanceUID",
                                   "StudyInstanceUID", "Modality", "aws_bucket")}
    old.update(crdc_series_uuid=str(uuid.uuid5(NAMESPACE, "old-content")), min_idc_version=10,
               max_idc_version=24, gcs_bucket="public-datasets-idc")
    gone = {k: removed_template[k] for k in ("collection_id", "PatientID", "StudyInstanceUID")}
    gone.update(SeriesInstanceUID=f"2.25.{uuid.uuid5(NAMESPACE, 'removed').int}", Modality="CT",
                crdc_series_uuid=str(uuid.uuid5(NAMESPACE, "removed-content")),
                aws_bucket="idc-open-data-two", gcs_bucket="idc-open-idc1",
                min_idc_version=5, max_idc_version=20)
    for row in (old, gone):
        row["series_aws_url"] = f"s3://{row['aws_bucket']}/{row['crdc_series_uuid']}/*"
    return [old, gone]


def build_sample(endpoint: str, index_dir: Path) -> Sample:
    """Fill the local server and write the matching index to index_dir."""
    rows = _select_real_rows()
    rows += _derived_rows(rows[0])
    rows[2]["series_revised_idc_version"] = 25
    make_public_buckets(endpoint, BUCKETS + ("idc-open-idc1", "idc-open-cr", "public-datasets-idc"))
    sample = Sample(index_dir=index_dir, rows=rows, prior=_prior_rows(rows[2], rows[3]))
    gcs_objects = sample.gcs_objects
    for i, row in enumerate(rows + sample.prior):
        count = BIG_SERIES_FILES if i == 1 else 2 if i >= len(rows) else 3
        files = _series_content(row, count, big=(i == 0))
        for name, data in files.items():
            key = f"{row['crdc_series_uuid']}/{name}"
            sample.objects[(row["aws_bucket"], key)] = data
            gcs_objects[(row.get("gcs_bucket") or GCS_BUCKETS[row["aws_bucket"]], key)] = data
        row["series_size_MB"] = sum(map(len, files.values())) / 1e6
        if i < len(rows):
            row["instanceCount"] = len(files)
    s3 = s3_client(endpoint)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=kv[0][0], Key=kv[0][1], Body=kv[1]),
                      [*sample.objects.items(), *gcs_objects.items()]))
    index_dir.mkdir(parents=True, exist_ok=True)
    schema = pq.read_schema(REAL_INDEX)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), index_dir / "idc_index.parquet")
    pq.write_table(pa.Table.from_pylist(sample.prior, schema=pq.read_schema(PRIOR_INDEX)),
                   index_dir / "prior_versions_index.parquet")
    versions = REAL_INDEX.parent / "version_metadata_index.parquet"
    pq.write_table(pq.read_table(versions), index_dir / "version_metadata_index.parquet")
    return sample


if __name__ == "__main__":
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else "demo")
    port = int(os.environ.get("IDCFS_SAMPLE_PORT", "0")) or free_port()
    server = start_moto(port)
    endpoint = f"http://127.0.0.1:{port}"
    sample = build_sample(endpoint, workdir / "index")
    print(f"{endpoint} {len(sample.rows)} series, {len(sample.objects)} objects", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.terminate()
