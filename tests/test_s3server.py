"""The benchmark's S3 endpoint behaves like S3 for boto3 and s5cmd."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

import s3server
from conftest import serving

OBJECTS = {("idc-open-data", f"series-a/{i:04}.dcm"): os.urandom(100 + i) for i in range(1005)}
OBJECTS.update({("idc-open-data", "series-b/x.dcm"): b"x" * 5000,
                ("idc-open-data-cr", "series-c/y.dcm"): b"y" * 10})
S5CMD = shutil.which("s5cmd", path=os.path.dirname(sys.executable)) or "s5cmd"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3root")
    s3server.write_tree(root, OBJECTS)
    with serving(root) as url:
        yield url


@pytest.fixture
def s3(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(signature_version=UNSIGNED))


def test_list_v2_paginates_through_every_key(s3):
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket="idc-open-data", Prefix="series-a/") for o in page.get("Contents", [])]
    assert keys == sorted(k for b, k in OBJECTS if k.startswith("series-a/"))


def test_list_v1_paginates_through_every_key(s3):
    keys = [o["Key"] for page in s3.get_paginator("list_objects").paginate(
        Bucket="idc-open-data") for o in page.get("Contents", [])]
    assert keys == sorted(k for b, k in OBJECTS if b == "idc-open-data")


def test_delimiter_gives_common_prefixes(s3):
    page = s3.list_objects_v2(Bucket="idc-open-data", Delimiter="/")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["series-a/", "series-b/"]
    assert "Contents" not in page


def test_listed_sizes_are_exact(s3):
    page = s3.list_objects_v2(Bucket="idc-open-data", Prefix="series-b/")
    assert [(o["Key"], o["Size"]) for o in page["Contents"]] == [("series-b/x.dcm", 5000)]


def test_ranged_get_returns_exact_bytes(s3):
    data = OBJECTS[("idc-open-data", "series-a/0999.dcm")]
    resp = s3.get_object(Bucket="idc-open-data", Key="series-a/0999.dcm", Range="bytes=10-99")
    assert resp["Body"].read() == data[10:100]
    assert resp["ContentRange"] == f"bytes 10-99/{len(data)}"


def test_counts_the_gets_and_the_bytes_they_ask_for(s3, endpoint):
    s3server.counts(endpoint, reset=True)
    key, size = "series-a/0999.dcm", len(OBJECTS[("idc-open-data", "series-a/0999.dcm")])
    for wanted in ("bytes=10-99", "bytes=-50", "bytes=1000-", None):
        s3.get_object(Bucket="idc-open-data", Key=key, **({"Range": wanted} if wanted else {}))
    s3.head_object(Bucket="idc-open-data", Key=key)
    assert s3server.counts(endpoint) == {"GET": 4, "HEAD": 1, f"GET idc-open-data/{key}": 4,
                                       f"HEAD idc-open-data/{key}": 1,
                                       "checksum_mode": 4,  # boto3 asks for checksums by default
                                       "GET_bytes": 90 + 50 + (size - 1000) + size}


def test_head_reports_the_size(s3):
    assert s3.head_object(Bucket="idc-open-data", Key="series-b/x.dcm")["ContentLength"] == 5000


def test_missing_keys_and_buckets_are_404(s3):
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="idc-open-data", Key="nope")
    assert err.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(ClientError) as err:
        s3.list_objects_v2(Bucket="nope")
    assert err.value.response["Error"]["Code"] == "NoSuchBucket"


def test_writes_are_refused(s3):
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="idc-open-data", Key="new", Body=b"x")
    assert err.value.response["Error"]["Code"] == "AccessDenied"


def test_s5cmd_copies_a_series_byte_for_byte(endpoint, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    subprocess.run([S5CMD, "--no-sign-request", "--endpoint-url", endpoint, "cp",
                    "s3://idc-open-data/series-a/*", f"{tmp_path}/"], check=True, env=env,
                   capture_output=True)
    copied = {p.name: p.read_bytes() for p in Path(tmp_path).iterdir()}
    assert copied == {k.split("/")[1]: v for (b, k), v in OBJECTS.items() if k.startswith("series-a/")}


def test_s5cmd_lists_every_key(endpoint):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = subprocess.run([S5CMD, "--no-sign-request", "--endpoint-url", endpoint, "ls",
                          "s3://idc-open-data/series-a/*"], check=True, env=env,
                         capture_output=True, text=True).stdout
    assert len(out.splitlines()) == 1005


def test_in_gcs_mode_every_answer_carries_the_whole_objects_checksums(tmp_path):
    import base64
    import hashlib
    import urllib.request

    from awscrt.checksums import crc32c

    data = bytes(range(256)) * 40
    s3server.write_tree(tmp_path, {("idc-open-idc1", "s/1.dcm"): data})
    with serving(tmp_path, gcs=True) as endpoint:
        ranged = urllib.request.Request(f"{endpoint}/idc-open-idc1/s/1.dcm",
                                        headers={"Range": "bytes=100-199"})
        with urllib.request.urlopen(ranged) as answer:
            assert answer.status == 206 and answer.read() == data[100:200]
            crc = base64.b64encode(crc32c(data).to_bytes(4, "big")).decode()
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            assert answer.headers["x-goog-hash"] == f"crc32c={crc},md5={md5}"
            assert answer.headers["x-amz-checksum-crc32c"] == crc
        listing = f"{endpoint}/idc-open-idc1?list-type=2&prefix=s/"
        with urllib.request.urlopen(listing) as answer:
            assert b'xmlns="http://doc.s3.amazonaws.com/2006-03-01"' in answer.read()
