"""idcfs on a real network and a real workstation: HTTPS trusted through the system's store, the
user's own AWS settings ignored, GCS's checksums, proxies, and an endpoint that cannot be reached
said plainly at mount time. Every byte read is compared with its object."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import awscrt  # noqa: F401 - installed, so that botocore could validate CRC32Cs (it must not)
import pytest

import httpproxy
import s3server
import sample as sample_data
from conftest import (IDCFS, Canned, Endpoint, answering, make_ca, mounted, mounting, run_idcfs,
                      series_dir, serving)

from idcfs.s3.source import ObjectSource

# What decides trust or proxies for a program; a user's workstation sets none of them.
TRUST_AND_PROXY = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                   "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY")


def user_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of a user whose home is home: none of this machine's AWS, trust or proxy
    variables, then settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k.upper() not in TRUST_AND_PROXY}
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env.update(settings)
    return env


def assert_reads_exactly(sample, mnt: Path, rows=None) -> None:
    """Every file of the rows (default: three of a few files each) lists and reads back its
    object."""
    for row in rows or [r for r in sample.rows if len(sample.series_objects(r)) < 10][:3]:
        objects = sample.series_objects(row)
        assert sorted(os.listdir(series_dir(mnt, row))) == sorted(objects)
        for name, data in objects.items():
            assert (series_dir(mnt, row) / name).read_bytes() == data


def warnings_of(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("idcfs: warning: ")]


# -- trust ------------------------------------------------------------------------------------

@pytest.fixture
def system_ca(tmp_path):
    """A CA in the system's trust store only (update-ca-certificates), removed afterwards."""
    if os.geteuid() != 0 or not shutil.which("update-ca-certificates"):
        pytest.skip("needs root and update-ca-certificates")
    ca = make_ca(tmp_path / "system-ca", "idcfs system store test CA")
    installed = Path(f"/usr/local/share/ca-certificates/idcfs-test-{uuid.uuid4().hex[:8]}.crt")
    shutil.copy(ca.ca_pem, installed)
    subprocess.run(["update-ca-certificates"], check=True, capture_output=True)
    try:
        yield ca
    finally:
        installed.unlink()
        subprocess.run(["update-ca-certificates"], check=True, capture_output=True)


def test_a_ca_known_only_to_the_system_store_is_trusted(sample, sample_tree, system_ca, tmp_path):
    with serving(sample_tree, system_ca) as endpoint, \
            mounting(sample, tmp_path / "m", tmp_path / "c", endpoint=str(endpoint),
                     env=user_env(tmp_path / "home")) as (proc, mnt):
        assert proc.returncode == 0 and not warnings_of(proc), proc.stderr
        assert_reads_exactly(sample, mnt)
        stats = json.loads((mnt / ".idcfs" / "stats").read_text())
        assert stats["endpoint_health"]["state"] == "ok" and stats["s3_client"] == "ready"


def test_a_ca_nobody_trusts_is_named_at_mount_with_the_fix_and_reads_fail_with_eio(
        sample, sample_tree, tmp_path):
    stranger = make_ca(tmp_path / "stranger", "a CA nobody trusts")
    with serving(sample_tree, stranger) as endpoint, \
            mounting(sample, tmp_path / "m", tmp_path / "c", endpoint=str(endpoint),
                     env=user_env(tmp_path / "home")) as (proc, mnt):
        assert proc.returncode == 0
        (warning,) = warnings_of(proc)
        assert "certificate of 127.0.0.1" in warning and "not trusted" in warning
        assert "update-ca-certificates" in warning and "--ca-bundle" in warning
        with pytest.raises(OSError) as failure:
            os.listdir(series_dir(mnt, sample.rows[0]))
        assert failure.value.errno == errno.EIO


@pytest.mark.parametrize("how", ["option", "-o", "AWS_CA_BUNDLE"])
def test_a_ca_bundle_given_is_trusted(sample, sample_tree, tmp_path, how):
    own = make_ca(tmp_path / "own", "a CA of the user's")
    env = user_env(tmp_path / "home", **({"AWS_CA_BUNDLE": str(own.ca_pem)}
                                         if how == "AWS_CA_BUNDLE" else {}))
    extra = {"option": ["--ca-bundle", str(own.ca_pem)], "-o": ["-o", f"ca_bundle={own.ca_pem}"],
             "AWS_CA_BUNDLE": []}[how]
    with serving(sample_tree, own) as endpoint, \
            mounted(sample, tmp_path / "m", tmp_path / "c", *extra, endpoint=str(endpoint),
                    env=env) as mnt:
        assert_reads_exactly(sample, mnt)


def test_a_ca_bundle_that_is_missing_or_not_pem_is_one_line(sample, fast_s3, tmp_path):
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for bundle, words in ((tmp_path / "none.pem", "does not exist"),
                          (tmp_path / "junk.pem", "holds no PEM certificate")):
        (tmp_path / "m").mkdir(exist_ok=True)
        proc = run_idcfs("mount", str(tmp_path / "m"), "--index", str(sample.index_dir),
                         "--endpoint-url", fast_s3, "--ca-bundle", str(bundle))
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [f"idcfs: --ca-bundle {bundle} {words}"]


# -- the user's AWS settings ------------------------------------------------------------------

AWS_CONFIG = """[default]
endpoint_url = {decoy}
region = eu-west-1
ca_bundle = /nonexistent/bundle.pem
use_fips_endpoint = true
use_dualstack_endpoint = true
retry_mode = adaptive
s3 =
  use_accelerate_endpoint = true
  addressing_style = virtual
services = elsewhere

[services elsewhere]
s3 =
  endpoint_url = {decoy}
"""


@pytest.mark.parametrize("config", ["settings", "malformed", "none"])
def test_the_users_aws_settings_neither_redirect_nor_stop_a_mount(
        sample, fast_s3, sample_tree, test_ca, tmp_path, config):
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    with serving(sample_tree, test_ca) as decoy:
        text = {"settings": AWS_CONFIG.format(decoy=decoy),
                "malformed": "[default\nendpoint_url = = =\n  s3 =\n[", "none": None}[config]
        if text is not None:
            (home / ".aws" / "config").write_text(text)
        env = user_env(home, AWS_ENDPOINT_URL=decoy, AWS_ENDPOINT_URL_S3=decoy,
                       AWS_PROFILE="no-such-profile", AWS_USE_FIPS_ENDPOINT="true",
                       AWS_USE_DUALSTACK_ENDPOINT="true", AWS_DEFAULT_REGION="eu-west-1",
                       AWS_MAX_ATTEMPTS="1", AWS_REQUEST_CHECKSUM_CALCULATION="when_supported",
                       AWS_RESPONSE_CHECKSUM_VALIDATION="when_supported")
        s3server.counts(decoy, reset=True)
        s3server.counts(fast_s3, reset=True)
        with mounted(sample, tmp_path / "m", tmp_path / "c", endpoint=fast_s3, env=env) as mnt:
            assert_reads_exactly(sample, mnt)
        assert s3server.counts(decoy) == {}
        assert s3server.counts(fast_s3)["GET"] > 0


class _Captured(Exception):
    """Raised in place of sending a request: where it would have gone."""


def _first_request_url(monkeypatch, home: Path, **environment: str) -> str:
    """The URL of the first request an ObjectSource for AWS (no --endpoint-url) would send, with
    environment set; nothing is sent."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    def capture(request, **_):
        raise _Captured(request.url)

    async def go() -> str:
        source = ObjectSource(None)
        await source.start()
        source._client.meta.events.register("before-send.s3", capture)
        try:
            await source.list_series("idc-open-data", "0a1b/")
        except Exception as exc:  # noqa: BLE001 - the captured URL is wrapped by the source
            while exc is not None and not isinstance(exc, _Captured):
                exc = exc.__cause__ or exc.__context__
            assert exc is not None
            return str(exc)
        finally:
            await source.close()
        raise AssertionError("no request was made")

    return asyncio.run(go())


def test_without_an_endpoint_option_requests_go_to_aws_whatever_the_user_configured(
        monkeypatch, tmp_path):
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "config").write_text(AWS_CONFIG.format(decoy="http://127.0.0.1:9"))
    url = _first_request_url(
        monkeypatch, home, AWS_ENDPOINT_URL="http://127.0.0.1:9",
        AWS_ENDPOINT_URL_S3="http://127.0.0.1:9", AWS_USE_FIPS_ENDPOINT="true",
        AWS_USE_DUALSTACK_ENDPOINT="true", AWS_S3_US_EAST_1_REGIONAL_ENDPOINT="regional",
        AWS_PROFILE="no-such-profile", AWS_DEFAULT_REGION="eu-west-1")
    assert url.startswith("https://idc-open-data.s3.amazonaws.com/?list-type=2&prefix=0a1b%2F")
    assert _first_request_url(monkeypatch, home) == url


# -- GCS's answers --------------------------------------------------------------------------

BIG_GCS_OBJECT = 40 << 20  # well above the 8 MiB under which files are fetched whole


@pytest.fixture(scope="module")
def gcs_with_a_big_file(sample, sample_tree, test_ca, tmp_path_factory):
    """The GCS-like endpoint holding, besides the sample, a 40 MiB file in a series' folder
    (read in ranges, each answered with the whole object's CRC32C, as GCS does)."""
    root = tmp_path_factory.mktemp("gcs-big")
    shutil.copytree(sample_tree, root, dirs_exist_ok=True, copy_function=os.link)
    row = sample.rows[2]
    bucket = sample_data.GCS_BUCKETS[row["aws_bucket"]]
    data = os.urandom(BIG_GCS_OBJECT)
    name = f"{uuid.uuid5(sample_data.NAMESPACE, 'gcs-big')}.dcm"
    (root / bucket / row["crdc_series_uuid"] / name).write_bytes(data)
    with serving(root, test_ca, gcs=True) as endpoint:
        yield endpoint, row, name, data


def test_a_gcs_endpoint_with_awscrt_installed_serves_big_and_small_files_exactly(
        sample, gcs_with_a_big_file, tmp_path):
    endpoint, row, name, data = gcs_with_a_big_file
    s3server.counts(endpoint, reset=True)
    with mounted(sample, tmp_path / "m", tmp_path / "c", "--source", "gcs",
                 endpoint=endpoint) as mnt:
        folder = series_dir(mnt, row)
        assert hashlib.sha256((folder / name).read_bytes()).digest() == \
            hashlib.sha256(data).digest()
        for small, content in sample.series_objects(row).items():
            assert (folder / small).read_bytes() == content
    counts = s3server.counts(endpoint)
    assert counts["GET"] > BIG_GCS_OBJECT // (8 << 20)  # the big file came in ranges
    assert "checksum_mode" not in counts  # no x-amz-checksum-mode header was sent


def test_the_gcs_like_endpoint_breaks_a_client_that_validates_range_checksums(
        gcs_with_a_big_file):
    """What idcfs avoids: botocore with its default checksum settings and awscrt installed
    refuses GCS's ranged answers."""
    from aiobotocore.session import get_session
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import FlexibleChecksumError

    endpoint, row, name, _ = gcs_with_a_big_file
    bucket = sample_data.GCS_BUCKETS[row["aws_bucket"]]

    async def ranged_read() -> None:
        config = Config(signature_version=UNSIGNED, s3={"addressing_style": "path"})
        async with get_session().create_client("s3", endpoint_url=endpoint, config=config,
                                               region_name="us-east-1",
                                               verify=str(endpoint.ca_bundle)) as s3:
            resp = await s3.get_object(Bucket=bucket, Key=f"{row['crdc_series_uuid']}/{name}",
                                       Range="bytes=0-1023", ChecksumMode="ENABLED")
            await resp["Body"].read()

    with pytest.raises(FlexibleChecksumError):
        asyncio.run(ranged_read())


# -- an endpoint that cannot be reached -------------------------------------------------------

class _Forbidden(Canned):
    def do_GET(self):  # noqa: N802 - http.server's naming
        self.answer(403, b"<?xml version='1.0'?><Error><Code>AccessDenied</Code>"
                    b"<Message>no</Message></Error>", "application/xml")


@pytest.mark.parametrize("case", ["refused", "proxy down", "http status"])
def test_an_endpoint_that_cannot_be_used_is_named_in_one_line_and_the_mount_still_serves_its_cache(
        sample, fast_s3, tmp_path, case):
    row = sample.rows[0]
    name, data = next(iter(sample.series_objects(row).items()))
    with mounted(sample, tmp_path / "m", tmp_path / "c", endpoint=fast_s3) as mnt:
        assert (series_dir(mnt, row) / name).read_bytes() == data  # now in the cache
    port = sample_data.free_port()  # nothing listens there
    env = user_env(tmp_path / "home")
    with (answering(_Forbidden) if case == "http status" else contextlib.nullcontext()) \
            as forbidden:
        if case == "refused":
            endpoint, words = Endpoint(f"https://127.0.0.1:{port}"), [f"127.0.0.1:{port}", "refused"]
        elif case == "proxy down":
            env["HTTPS_PROXY"] = f"http://127.0.0.1:{port}"
            endpoint, words = fast_s3, ["proxy", f"127.0.0.1:{port}"]
        else:
            endpoint, words = forbidden, [forbidden, "HTTP 403 AccessDenied"]
        with mounting(sample, tmp_path / "m", tmp_path / "c", endpoint=endpoint,
                      env=env) as (proc, mnt):
            assert proc.returncode == 0, proc.stderr
            (warning,) = warnings_of(proc)
            assert proc.stderr.strip() == warning
            for word in words:
                assert word in warning
            assert "mounted anyway" in warning
            assert (series_dir(mnt, row) / name).read_bytes() == data  # from the cache
            status = run_idcfs("status").stdout
            line = next(line for line in status.splitlines() if str(mnt) in line)
            assert ("unreachable since" in line) == (case != "http status")


def test_a_name_that_does_not_resolve_is_said_at_mount(sample, tmp_path):
    """In a network namespace of its own (loopback only), so no name query leaves the machine."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare and ip")
    mnt = tmp_path / "m"
    mnt.mkdir()
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *IDCFS,
         "mount", str(mnt), "--index", str(sample.index_dir),
         "--endpoint-url", "https://idc-test.invalid", "--cache-dir", str(tmp_path / "c")],
        capture_output=True, text=True, timeout=60, env=user_env(tmp_path / "home"))
    try:
        assert proc.returncode == 0, proc.stderr
        (warning,) = warnings_of(proc)
        assert "cannot resolve idc-test.invalid" in warning
    finally:
        run_idcfs("umount", str(mnt))


# -- proxies ----------------------------------------------------------------------------------

def test_https_proxy_carries_every_request_and_no_proxy_bypasses_it(sample, fast_s3, tmp_path):
    host = fast_s3.removeprefix("https://")
    rows = [r for r in sample.rows if len(sample.series_objects(r)) < 10][:3]
    with httpproxy.running() as proxy:
        env = user_env(tmp_path / "home", HTTPS_PROXY=proxy.url)
        with mounted(sample, tmp_path / "m", tmp_path / "c", endpoint=fast_s3, env=env) as mnt:
            assert_reads_exactly(sample, mnt, rows)
        assert proxy.seen and set(proxy.seen) == {host}
        # the objects' bytes came through it, not only the listings
        assert proxy.carried > sum(len(d) for r in rows for d in sample.series_objects(r).values())
        proxy.seen.clear()
        env = user_env(tmp_path / "home", HTTPS_PROXY=proxy.url, NO_PROXY="127.0.0.1")
        with mounted(sample, tmp_path / "m2", tmp_path / "c2", endpoint=fast_s3, env=env) as mnt:
            assert_reads_exactly(sample, mnt)
        assert proxy.seen == []
