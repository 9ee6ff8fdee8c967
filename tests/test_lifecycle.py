"""Starting, stopping and remounting the daemon for real."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import (IDCFS, daemon_pids, force_unmount, is_mounted, mounted, mounting, run_idcfs,
                      series_dir, wait_for)


@pytest.fixture
def foreground(sample, fast_s3, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [*IDCFS, "mount", str(mnt), "--foreground", "--index", str(sample.index_dir),
         "--endpoint-url", fast_s3, "--ca-bundle", str(fast_s3.ca_bundle),
         "--cache-dir", str(tmp_path / "cache")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert wait_for(lambda: is_mounted(mnt)), proc.stderr.read() if proc.poll() else ""
        yield proc, mnt
    finally:
        force_unmount(mnt)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_foreground_mount_serves_until_unmounted(sample, foreground):
    proc, mnt = foreground
    path, data = next((series_dir(mnt, r), r) for r in sample.rows)
    name, content = next(iter(sample.series_objects(data).items()))
    assert (path / name).read_bytes() == content
    assert run_idcfs("umount", str(mnt)).returncode == 0
    assert proc.wait(30) == 0
    assert not is_mounted(mnt)
    assert "mounted" in proc.stderr.read()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_unmounts_cleanly(foreground, signum):
    proc, mnt = foreground
    proc.send_signal(signum)
    assert proc.wait(30) == 0, proc.stderr.read()
    assert not is_mounted(mnt)


def test_background_mount_answers_as_soon_as_the_command_returns(sample, fast_s3, tmp_path):
    with mounted(sample, tmp_path / "mnt", tmp_path / "cache", endpoint=fast_s3) as mnt:
        assert sorted(os.listdir(mnt)) == sorted({r["collection_id"] for r in sample.rows} | {".idcfs"})


def test_a_remount_lists_series_from_the_cache_without_the_endpoint(sample, fast_s3, tmp_path):
    row = sample.rows[0]
    with mounted(sample, tmp_path / "mnt", tmp_path / "cache", endpoint=fast_s3) as mnt:
        first = sorted(os.listdir(series_dir(mnt, row)))
    with mounted(sample, tmp_path / "mnt", tmp_path / "cache", endpoint="http://127.0.0.1:9") as mnt:
        assert sorted(os.listdir(series_dir(mnt, row))) == first == sorted(sample.series_objects(row))
        with pytest.raises(OSError) as failure:
            (series_dir(mnt, row) / first[0]).read_bytes()
        assert failure.value.errno == 5  # EIO: the bytes need the endpoint, which is down


def test_o_options_work_like_long_options(sample, fast_s3, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    options = (f"index={sample.index_dir},endpoint_url={fast_s3},"
               f"ca_bundle={fast_s3.ca_bundle},cache_dir={tmp_path / 'c'}")
    proc = run_idcfs("mount", str(mnt), "-o", options)
    try:
        assert proc.returncode == 0, proc.stderr
        row = sample.rows[2]
        name, data = next(iter(sample.series_objects(row).items()))
        assert (series_dir(mnt, row) / name).read_bytes() == data
    finally:
        run_idcfs("umount", str(mnt))
        force_unmount(mnt)


def test_a_stale_mount_is_reported_and_cleared_by_umount(sample, fast_s3, tmp_path):
    mnt = tmp_path / "mnt"
    with mounted(sample, mnt, tmp_path / "cache", endpoint=fast_s3):
        daemon = subprocess.run(["pgrep", "-f", f"idcfs mount {mnt}"], capture_output=True,
                                text=True, check=True).stdout.split()
        for pid in daemon:
            os.kill(int(pid), signal.SIGKILL)
        assert wait_for(lambda: _stale(mnt), 10)
        again = run_idcfs("mount", str(mnt), "--index", str(sample.index_dir))
        assert again.returncode != 0
        assert f"idcfs umount {mnt}" in again.stderr
        assert run_idcfs("umount", str(mnt)).returncode == 0
        assert not is_mounted(mnt)


def _stale(path) -> bool:
    try:
        os.listdir(path)
    except OSError as exc:
        return exc.errno == 107  # ENOTCONN
    return False


def test_sigterm_the_moment_the_mount_appears_still_unmounts_cleanly(sample, fast_s3, tmp_path):
    """The readiness check stats the mount from a thread; a signal then must not deadlock."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for _ in range(5):
        proc = subprocess.Popen(
            [*IDCFS, "mount", str(mnt), "--foreground", "--index", str(sample.index_dir),
             "--endpoint-url", fast_s3, "--ca-bundle", str(fast_s3.ca_bundle),
         "--cache-dir", str(tmp_path / "cache")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: is_mounted(mnt))
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert not is_mounted(mnt)
        finally:
            force_unmount(mnt)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_mountpoint_with_a_space_in_its_path_mounts_shows_in_status_and_unmounts(
        sample, fast_s3, tmp_path):
    mnt = tmp_path / "IDC data"
    with mounted(sample, mnt, tmp_path / "cache", endpoint=fast_s3):
        assert is_mounted(mnt)
        assert str(mnt) in run_idcfs("status").stdout
        again = run_idcfs("mount", str(mnt), "--index", str(sample.index_dir))
        assert "already a mount point" in again.stderr
        assert run_idcfs("umount", str(mnt)).returncode == 0
        assert not is_mounted(mnt)


def children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(child) for task in tasks.iterdir()
            for child in (task / "children").read_text().split()]


def test_the_background_daemon_is_one_process_of_its_own_session_that_passes_on_its_notes(
        sample, fast_s3, tmp_path):
    """`idcfs mount` forks the daemon: a single process, detached from the terminal, whose
    notes (here: manifest entries the release lacks) still reach the person who mounted. Its
    helper, the tree's build, has ended and been reaped once it is ready; its one child is its
    S3 process, which logs where it does."""
    row = sample.rows[0]
    manifest = tmp_path / "cohort.txt"
    manifest.write_text(f"{row['crdc_series_uuid']}\n1.2.3.4.5\n")
    with mounting(sample, tmp_path / "mnt", tmp_path / "cache", "--idc-version", "25",
                  "--manifest", str(manifest), endpoint=fast_s3) as (proc, mnt):
        assert proc.returncode == 0, proc.stderr
        assert ("idcfs: note: 1 of 2 manifest entries are not in IDC version 25"
                in proc.stderr), proc.stderr
        assert sorted(os.listdir(mnt)) == [".idcfs", row["collection_id"]]
        pids = subprocess.run(["pgrep", "-f", f"idcfs mount {mnt} "], capture_output=True,
                              text=True).stdout.split()
        assert len(pids) == 1, pids
        daemon = int(pids[0])
        assert os.getsid(daemon) == daemon != os.getsid(0)
        assert os.readlink(f"/proc/{daemon}/fd/0") == os.devnull
        assert os.readlink(f"/proc/{daemon}/fd/2") == str(tmp_path / "cache" / "idcfs.log")
        assert wait_for(lambda: len(children(daemon)) == 1)
        s3 = children(daemon)[0]
        assert "-m idcfs.s3.serve" in Path(f"/proc/{s3}/cmdline").read_text().replace("\0", " ")
        assert os.readlink(f"/proc/{s3}/fd/2") == str(tmp_path / "cache" / "idcfs.log")


@pytest.mark.parametrize("case", ["bad option", "bad index"])
def test_a_mount_that_fails_its_checks_leaves_no_process_behind(sample, fast_s3, tmp_path, case):
    """A bad --filter fails in the daemon's checks of its options, an index that is not one in
    its load of the tree; either way the one line reaches the person and the daemon is gone."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if case == "bad option":
        extra = ["--index", str(sample.index_dir), "--filter", "no_such_column = 1"]
    else:
        index = tmp_path / "index"
        index.mkdir()
        (index / "idc_index.parquet").write_bytes(b"not parquet")
        extra = ["--index", str(index)]
    proc = run_idcfs("mount", str(mnt), *extra, "--endpoint-url", fast_s3,
                     "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 1 and proc.stderr.startswith("idcfs: "), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert wait_for(lambda: not daemon_pids(mnt), timeout=10)


@pytest.mark.parametrize("end", ["unmount", "kill -9 of the daemon"])
def test_the_s3_process_ends_with_its_mount(sample, fast_s3, tmp_path, end):
    with mounting(sample, tmp_path / "mnt", tmp_path / "cache", endpoint=fast_s3) as (proc, mnt):
        assert proc.returncode == 0, proc.stderr
        row = sample.rows[0]
        name, data = next(iter(sample.series_objects(row).items()))
        assert (series_dir(mnt, row) / name).read_bytes() == data  # read by the S3 process
        daemon = daemon_pids(mnt)[0]
        s3 = children(daemon)[0]
        if end == "unmount":
            assert run_idcfs("umount", str(mnt)).returncode == 0
        else:
            os.kill(daemon, signal.SIGKILL)
        assert wait_for(lambda: not Path(f"/proc/{s3}").exists(), timeout=10)


def test_a_killed_s3_process_costs_the_reads_of_that_moment_and_the_mount_serves_on(
        sample, fast_s3, tmp_path):
    """Reads that need the object store fail with EIO until a new S3 process is started, 5 s
    after; what the cache holds is read throughout, and the stats say what happened."""
    with mounted(sample, tmp_path / "mnt", tmp_path / "cache", endpoint=fast_s3) as mnt:
        files = [(series_dir(mnt, row) / name, data) for row in sample.rows[:3]
                 for name, data in list(sample.series_objects(row).items())[:1]]
        assert files[0][0].read_bytes() == files[0][1]
        daemon = daemon_pids(mnt)[0]
        first = children(daemon)[0]
        os.kill(first, signal.SIGKILL)
        stats = mnt / ".idcfs" / "stats"
        assert wait_for(lambda: json.loads(stats.read_text())["s3_client"] == "failed", 5)
        assert wait_for(lambda: "killed by signal 9"
                        in json.loads(stats.read_text())["s3_client_problem"], 5)
        assert files[0][0].read_bytes() == files[0][1]  # from the cache
        with pytest.raises(OSError) as failed:
            files[1][0].read_bytes()
        assert failed.value.errno == errno.EIO
        assert wait_for(lambda: reads(*files[2]), timeout=15)
        assert json.loads(stats.read_text())["s3_client"] == "ready"
        assert children(daemon) != [first]


def reads(path: Path, data: bytes) -> bool:
    """Whether path reads as data now (False if the read fails)."""
    try:
        return path.read_bytes() == data
    except OSError:
        return False
