"""The block cache and prefetch through a real mount, with requests counted at the server."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

import s3server
from conftest import daemon_pids, mounted, run_idcfs, series_dir, wait_for
from idcfs.data_cache import DiskBlocks
from idcfs.data_cache.blockfile import directory
from idcfs.objects import BLOCK_SIZE, ObjectRef


def biggest_file(sample, mnt):
    row = sample.rows[0]
    name, data = max(sample.series_objects(row).items(), key=lambda kv: len(kv[1]))
    return series_dir(mnt, row) / name, data


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_file_read_by_many_processes_at_once_is_fetched_once(sample, fast_s3, tmp_path):
    with mounted(sample, tmp_path / "mnt", tmp_path / "cache", endpoint=fast_s3) as mnt:
        path, data = biggest_file(sample, mnt)
        os.listdir(path.parent)
        s3server.counts(fast_s3, reset=True)
        with ProcessPoolExecutor(16) as pool:
            digests = set(pool.map(_sha, [str(path)] * 16))
        assert digests == {hashlib.sha256(data).hexdigest()}
        assert s3server.counts(fast_s3).get("GET", 0) == 1


def test_repeated_reads_do_not_reach_the_endpoint(sample, fast_s3, tmp_path):
    with mounted(sample, tmp_path / "mnt", tmp_path / "cache", endpoint=fast_s3) as mnt:
        path, data = biggest_file(sample, mnt)
        assert path.read_bytes() == data
        s3server.counts(fast_s3, reset=True)
        for _ in range(3):
            assert path.read_bytes() == data
        assert s3server.counts(fast_s3).get("GET", 0) == 0


def test_copying_a_series_fetches_each_file_exactly_once(sample, fast_s3, tmp_path):
    row = max(sample.rows, key=lambda r: len(sample.series_objects(r)))
    with mounted(sample, tmp_path / "mnt", tmp_path / "cache", endpoint=fast_s3) as mnt:
        os.listdir(series_dir(mnt, row))
        s3server.counts(fast_s3, reset=True)
        subprocess.run(["cp", "-r", str(series_dir(mnt, row)), str(tmp_path / "copy")], check=True)
        counts = s3server.counts(fast_s3)
    copied = {p.name: p.read_bytes() for p in (tmp_path / "copy").iterdir()}
    assert copied == sample.series_objects(row)
    assert counts.get("GET", 0) == len(copied)


def test_a_warm_cache_serves_reads_with_the_endpoint_down(sample, fast_s3, tmp_path):
    rows = sample.rows[:4]
    with mounted(sample, tmp_path / "mnt", tmp_path / "cache", endpoint=fast_s3) as mnt:
        proc = run_idcfs("cache", "warm", *[str(series_dir(mnt, r)) for r in rows])
        assert proc.returncode == 0, proc.stderr
    with mounted(sample, tmp_path / "mnt", tmp_path / "cache", endpoint="http://127.0.0.1:9") as mnt:
        for row in rows:
            for name, data in sample.series_objects(row).items():
                assert (series_dir(mnt, row) / name).read_bytes() == data


def _settled_usage(blocks) -> int:
    """Bytes of finished blocks, once two walks agree. One walk is not a snapshot: it can count a
    block just before it is evicted and, further on, the block written in its place. Temporary
    files are left out for the same reason (a rename mid-walk shows one block under two names)."""
    def walk() -> int:
        total = 0
        for p in blocks.rglob("*"):
            try:
                if p.is_file() and not p.name.startswith(".tmp-"):
                    total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total

    before = walk()
    while (after := walk()) != before:
        time.sleep(0.05)
        before = after
    return after


def test_the_disk_cache_stays_within_its_bound(sample, fast_s3, tmp_path):
    bound = 3 * BLOCK_SIZE
    with mounted(sample, tmp_path / "mnt", tmp_path / "cache", "--cache-size", str(bound),
                 endpoint=fast_s3) as mnt:
        for i, (row, (name, data)) in enumerate(
                (r, item) for r in sample.rows for item in sample.series_objects(r).items()):
            assert (series_dir(mnt, row) / name).read_bytes() == data
            if i % 25 == 0 or len(data) > BLOCK_SIZE:
                assert _settled_usage(directory(tmp_path / "cache")) <= bound


def test_reads_stay_exact_when_the_cache_disk_fills_up_and_it_is_said(sample, fast_s3, tmp_path,
                                                                      tmpfs):
    log = tmp_path / "idcfs.log"
    with mounted(sample, tmp_path / "mnt", tmpfs / "cache", "--cache-size", "1G",
                 "--log-file", str(log), endpoint=fast_s3) as mnt:
        read = 0
        for row in sample.rows:
            for name, data in sample.series_objects(row).items():
                assert (series_dir(mnt, row) / name).read_bytes() == data
                read += len(data)
        assert read > 4 << 20  # more than the disk holds
        # The disk filled: which blocks were left out when it did depends on the writers' order.
        assert os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize < 2 << 20
    text = log.read_text()
    assert ("cannot write to the disk cache" in text
            or "the disk of the cache is nearly full" in text), text


def _any_block(blocks) -> bool:
    try:
        return any(p.is_file() and not p.name.startswith(".tmp-") for p in blocks.rglob("*"))
    except FileNotFoundError:  # a folder made or a file renamed as it was walked
        return False


def test_kill_9_during_heavy_reads_leaves_only_correct_blocks(sample, fast_s3, tmp_path):
    cache = tmp_path / "cache"
    with mounted(sample, tmp_path / "mnt", cache, endpoint=fast_s3) as mnt:
        readers = [subprocess.Popen(["cat", *[str(series_dir(mnt, r) / n)
                                              for n in sorted(sample.series_objects(r))]],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for r in sample.rows]
        wait_for(lambda: _any_block(directory(cache)))  # killed mid-way, once some are written
        for pid in daemon_pids(mnt):
            os.kill(pid, signal.SIGKILL)
        for reader in readers:
            reader.wait(30)
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
    disk = DiskBlocks(cache, 1 << 40)
    disk.scan()
    checked = 0
    for (bucket, key), data in sample.objects.items():
        obj = ObjectRef(bucket, key, len(data))
        for i in range(obj.blocks()):
            if found := disk.locate(obj, i):
                expected = data[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE]
                assert disk.get(obj, i, len(expected)) == expected, found
                checked += 1
    assert checked > 0
    with mounted(sample, tmp_path / "mnt", cache, endpoint=fast_s3) as mnt:
        for row in sample.rows[:3]:
            for name, data in sample.series_objects(row).items():
                assert (series_dir(mnt, row) / name).read_bytes() == data


def test_cache_stats_and_clear(sample, fast_s3, tmp_path):
    with mounted(sample, tmp_path / "mnt", tmp_path / "cache", endpoint=fast_s3) as mnt:
        biggest_file(sample, mnt)[0].read_bytes()
    stats = run_idcfs("cache", "stats", "--cache-dir", str(tmp_path / "cache"))
    assert stats.returncode == 0 and "blocks           3 " in stats.stdout, stats.stdout
    assert run_idcfs("cache", "clear", "--cache-dir", str(tmp_path / "cache")).returncode == 0
    stats = run_idcfs("cache", "stats", "--cache-dir", str(tmp_path / "cache"))
    assert "blocks           0 " in stats.stdout


@pytest.mark.parametrize("target", ["outside", "missing"])
def test_cache_warm_refuses_paths_outside_a_mount(tmp_path, target):
    path = tmp_path if target == "outside" else tmp_path / "missing"
    proc = run_idcfs("cache", "warm", str(path))
    assert proc.returncode == 1 and proc.stderr.startswith("idcfs: ")
