"""Load: 32 processes read random files at random offsets (chosen by hypothesis, in
tests/load_reader.py) through one mount for a bounded time. Every read equals the reference bytes;
the daemon's memory, file descriptors and connections are sampled throughout and stay bounded.

The 20 s run of `make test` guards against gross leaks; a slow creep needs a longer run
(`IDCFS_LOAD_SECONDS=90`): that is how the malloc arena fragmentation (+30 MiB a minute) was found.

The caches are set small (8 MiB in memory, 24 MiB on disk, under the 33 MiB of the sample), so
the run keeps evicting and refetching, and large-file readahead, whole-object fetches, series
prefetch and single-flight all run at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import s3server
from conftest import daemon_pids, mounted, sample_daemon, sample_files, serving

READERS = 32
SECONDS = int(os.environ.get("IDCFS_LOAD_SECONDS", "20"))  # longer runs: IDCFS_LOAD_SECONDS=90
CONNECTIONS = 16
READER = Path(__file__).parent / "load_reader.py"


@pytest.fixture(scope="module")
def tools_fast_s3(tools_sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("tools-s3")
    s3server.write_tree(root, tools_sample.objects)
    with serving(root) as endpoint:
        yield endpoint


def thirds(samples: list[dict[str, int]], key: str) -> tuple[int, int]:
    """Peak of the middle and of the last third of the run (the first is the caches filling)."""
    third = max(1, len(samples) // 3)
    return max(s[key] for s in samples[third:-third]), max(s[key] for s in samples[-third:])


def test_32_concurrent_random_readers_get_exact_bytes_with_bounded_resources(
        tools_sample, tools_copy, tools_fast_s3, tmp_path):
    paths = [str(p) for p in sample_files(tools_sample)]
    with mounted(tools_sample, tmp_path / "mnt", tmp_path / "cache", "--memory-cache-size", "8M",
                 "--cache-size", "24M", "--max-connections", str(CONNECTIONS),
                 endpoint=tools_fast_s3) as mnt:
        (pid,) = daemon_pids(mnt)
        before = sample_daemon(pid)
        readers = [subprocess.Popen([sys.executable, str(READER), str(mnt), str(tools_copy),
                                     str(SECONDS), str(n), *paths],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for n in range(READERS)]
        samples = []
        try:
            while any(r.poll() is None for r in readers):
                samples.append(sample_daemon(pid))
                time.sleep(0.25)
                assert len(samples) < 4 * (SECONDS + 120), "readers did not finish: a hang"
        finally:
            for reader in readers:
                reader.kill()
        failures = [r.communicate() for r in readers if r.returncode != 0]
        assert not failures, failures[0]
        after = sample_daemon(pid)
        stats = json.loads((mnt / ".idcfs" / "stats").read_text())

    assert stats["errors"] == 0
    assert stats["fetches"] > 100  # the caches really were too small to hold the sample
    assert max(s["sockets"] for s in samples) <= CONNECTIONS + before["sockets"]
    rss_middle, rss_late = thirds(samples, "rss_kib")
    for s in [before, after, *samples]:
        s["files"] = s["fds"] - s["sockets"]
    print(f"daemon RSS {before['rss_kib'] // 1024} MiB before, peaks {rss_middle // 1024} -> "
          f"{rss_late // 1024} MiB; non-socket fds {before['files']} before, at most "
          f"{max(s['files'] for s in samples)}, {after['files']} after; {stats['fetches']} fetches")
    assert max(s["rss_kib"] for s in samples) < 400 * 1024
    assert rss_late < rss_middle + 24 * 1024, "memory grows with the length of the run"
    # Files open at once: blocks being written behind and read from disk (trio's thread limit).
    assert max(s["files"] for s in samples) <= before["files"] + 48
    assert after["files"] <= before["files"] + 2, "descriptors left open after the load"
