"""Faults between idcfs and the object store: never wrong or short bytes, never a hang."""

from __future__ import annotations

import errno
import json
import os
import time

import pytest

import s3server
from conftest import HtmlPage, answering, mounted, series_dir, set_fault

BUDGET = 4.0


@pytest.fixture
def mnt(sample, proxy, tmp_path):
    set_fault(proxy)
    with mounted(sample, tmp_path / "m", tmp_path / "c", "--request-timeout", str(BUDGET),
                 endpoint=proxy) as m:
        for row in sample.rows[:4]:
            os.listdir(series_dir(m, row))  # listings before any fault
        yield m
    set_fault(proxy)


def files(sample, mnt, n=4):
    return [(series_dir(mnt, r) / name, data) for r in sample.rows[:n]
            for name, data in list(sample.series_objects(r).items())[:1]]


@pytest.mark.parametrize("mode", ["status", "reset", "truncate"])
def test_a_transient_fault_is_retried_and_the_bytes_are_exact(sample, mnt, proxy, mode):
    path, data = files(sample, mnt)[0]
    set_fault(proxy, mode=mode, count=1, match=path.name)
    assert path.read_bytes() == data


@pytest.mark.parametrize("mode", ["status", "reset", "truncate", "stall", "flip"])
def test_a_lasting_fault_fails_with_eio_within_the_budget_and_nothing_wrong_is_kept(
        sample, mnt, proxy, mode):
    path, data = files(sample, mnt)[1]
    set_fault(proxy, mode=mode, count=-1, match=path.name)
    started = time.monotonic()
    with pytest.raises(OSError) as err:
        path.read_bytes()
    assert err.value.errno == errno.EIO
    assert time.monotonic() - started < BUDGET + 2
    set_fault(proxy)
    assert path.read_bytes() == data  # at once: the mount works on, and cached nothing wrong


def test_reads_work_again_without_a_remount_when_the_endpoint_comes_back(sample, mnt, proxy):
    (path_a, data_a), (path_b, data_b) = files(sample, mnt)[2:4]
    set_fault(proxy, mode="reset", count=-1, match="")
    with pytest.raises(OSError):
        path_a.read_bytes()
    set_fault(proxy)
    assert path_a.read_bytes() == data_a and path_b.read_bytes() == data_b


def test_each_failure_is_counted_in_the_mount_statistics(sample, mnt, proxy):
    path, _ = files(sample, mnt)[3]
    set_fault(proxy, mode="status", code=500, count=-1, match=path.name)
    with pytest.raises(OSError):
        path.read_bytes()
    stats = json.loads((mnt / ".idcfs" / "stats").read_text())
    assert stats["errors"] >= 1


def test_an_endpoint_answering_with_a_web_page_gives_eio_says_why_and_keeps_nothing(
        sample, fast_s3, tmp_path):
    log = tmp_path / "idcfs.log"
    row = sample.rows[0]
    with answering(HtmlPage) as endpoint:
        with mounted(sample, tmp_path / "m", tmp_path / "c", "--log-file", str(log),
                     endpoint=endpoint) as mnt:
            with pytest.raises(OSError) as err:
                os.listdir(series_dir(mnt, row))
            assert err.value.errno == errno.EIO
    assert "HTML page" in log.read_text()
    with mounted(sample, tmp_path / "m", tmp_path / "c", endpoint=fast_s3) as mnt:
        assert sorted(os.listdir(series_dir(mnt, row))) == sorted(sample.series_objects(row))


def test_every_file_read_again_right_after_the_faults_stop_reads_exactly(sample, mnt, proxy):
    """A failure is remembered by the open file it happened on, not by the object: a new open
    right after the endpoint recovered tries again."""
    row = max(sample.rows, key=lambda r: len(sample.series_objects(r)))
    chosen = list(sample.series_objects(row).items())[:60]
    os.listdir(series_dir(mnt, row))
    set_fault(proxy, mode="reset", count=-1, match="")
    for name, _ in chosen:
        with pytest.raises(OSError):
            (series_dir(mnt, row) / name).read_bytes()
    set_fault(proxy)
    assert [(series_dir(mnt, row) / name).read_bytes() == data for name, data in chosen] == \
        [True] * len(chosen)


@pytest.mark.parametrize("mode", ["stall", "silent"])
def test_one_stalled_connection_is_raced_and_the_read_done_in_seconds(sample, mnt, proxy, fast_s3,
                                                                       mode):
    path, data = files(sample, mnt, n=5)[4]
    set_fault(proxy, mode=mode, count=1, match=path.name)
    s3server.counts(fast_s3, reset=True)
    started = time.monotonic()
    assert path.read_bytes() == data
    assert time.monotonic() - started <= 3.0
    row = sample.rows[4]
    key = f"GET {row['aws_bucket']}/{row['crdc_series_uuid']}/{path.name}"
    assert s3server.counts(fast_s3)[key] == 2  # the stalled request and the one that won
    stats = json.loads((mnt / ".idcfs" / "stats").read_text())
    assert stats["hedged_requests"] == 1


@pytest.mark.parametrize("field", ["Size", "Key", "IsTruncated"])
def test_a_listing_with_garbage_in_a_field_is_eio_and_the_mount_serves_on(sample, mnt, proxy,
                                                                           field):
    unlisted, other = sample.rows[5], sample.rows[0]
    set_fault(proxy, mode="garbage", field=field, listing=True, count=-1,
              match=unlisted["aws_bucket"])
    with pytest.raises(OSError) as err:
        os.listdir(series_dir(mnt, unlisted))
    assert err.value.errno == errno.EIO
    name, data = next(iter(sample.series_objects(other).items()))
    assert (series_dir(mnt, other) / name).read_bytes() == data  # alive, answering
    set_fault(proxy)
    assert sorted(os.listdir(series_dir(mnt, unlisted))) == sorted(sample.series_objects(unlisted))
