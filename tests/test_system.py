"""idcfs as administrators run it: mount(8) and fstab, systemd units and readiness, status."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IDCFS, force_unmount, is_mounted, mounted, run_idcfs, series_dir

ROOT = Path(__file__).resolve().parent.parent
HELPER = Path("/sbin/mount.fuse.idcfs")


@pytest.fixture(scope="module")
def helper():
    """The mount(8) helper as `make install-system` installs it (removed again if we added it)."""
    ours = Path(sys.executable).parent / "mount.fuse.idcfs"
    added = not HELPER.exists()
    if added:
        if HELPER.is_symlink():  # left dangling by an install from a checkout since deleted
            HELPER.unlink()
        HELPER.symlink_to(ours)
    yield HELPER
    if added:
        HELPER.unlink()


def _options(sample, endpoint, cache) -> str:
    return f"ro,index={sample.index_dir},endpoint_url={endpoint},cache_dir={cache}"


def _read_one(sample, mnt) -> None:
    row = sample.rows[2]
    name, data = next(iter(sample.series_objects(row).items()))
    assert (series_dir(mnt, row) / name).read_bytes() == data


def test_mount_t_fuse_idcfs_mounts_through_the_helper(sample, s3_endpoint, tmp_path, helper):
    mnt = tmp_path / "idc"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "fuse.idcfs", "idcfs", str(mnt), "-o",
                        _options(sample, s3_endpoint, tmp_path / "c")], check=True, timeout=60)
        assert is_mounted(mnt)
        _read_one(sample, mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        force_unmount(mnt)


def test_fstab_lines_mount_with_mount_a_and_by_their_mountpoint(sample, s3_endpoint, tmp_path, helper):
    auto, manual = tmp_path / "auto", tmp_path / "manual"
    auto.mkdir()
    manual.mkdir()
    fstab = tmp_path / "fstab"
    opts = _options(sample, s3_endpoint, tmp_path / "c")
    fstab.write_text(
        f"idcfs {auto} fuse.idcfs {opts},idc_version=25 0 0\n"
        f"idcfs {manual} fuse.idcfs {opts},noauto,x-systemd.automount,_netdev,nofail 0 0\n")
    try:
        subprocess.run(["mount", "-a", "-T", str(fstab)], check=True, timeout=60)
        assert is_mounted(auto) and not is_mounted(manual)
        subprocess.run(["mount", "-T", str(fstab), str(manual)], check=True, timeout=60)
        assert is_mounted(manual)
        _read_one(sample, auto)
        _read_one(sample, manual)
    finally:
        for mnt in (auto, manual):
            subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
            force_unmount(mnt)


@pytest.mark.parametrize("unit", ["idcfs@.service", "user/idcfs@.service"])
def test_systemd_units_pass_systemd_analyze_verify(tmp_path, unit):
    """Verified as installed: ExecStart pointing at this checkout's idcfs."""
    text = (ROOT / "systemd" / unit).read_text()
    text = text.replace("/usr/local/bin/idcfs", str(Path(sys.executable).parent / "idcfs"))
    copy = tmp_path / Path(unit).name
    copy.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True,
                          env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    assert proc.returncode == 0, proc.stderr
    assert "Type=notify" in text and "Restart=on-failure" in text


def test_the_daemon_tells_systemd_it_is_ready_only_once_the_mount_answers(sample, s3_endpoint, tmp_path):
    address = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(60)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [*IDCFS, "mount", str(mnt), "--foreground", "--index", str(sample.index_dir),
         "--endpoint-url", s3_endpoint, "--cache-dir", str(tmp_path / "c")],
        env={**os.environ, "NOTIFY_SOCKET": address}, stderr=subprocess.DEVNULL)
    try:
        ready = listener.recv(4096).decode()
        assert ready.startswith("READY=1") and "IDC version 25" in ready
        assert sorted(os.listdir(mnt))  # it answers the moment it says so
        proc.send_signal(signal.SIGTERM)
        assert listener.recv(4096).decode() == "STOPPING=1"
        assert proc.wait(30) == 0
    finally:
        listener.close()
        force_unmount(mnt)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_lists_mounts_with_version_and_health(sample, s3_endpoint, tmp_path):
    with mounted(sample, tmp_path / "a", tmp_path / "c", "--idc-version", "24",
                 endpoint=s3_endpoint) as good, \
         mounted(sample, tmp_path / "b", tmp_path / "c", endpoint=s3_endpoint) as dying:
        pids = subprocess.run(["pgrep", "-f", f"idcfs mount {dying} "], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            os.kill(int(pid), signal.SIGKILL)
        out = run_idcfs("status").stdout
        lines = {line.split()[0]: line for line in out.splitlines()[1:]}
        assert lines[str(good)].split()[1:4] == ["24", "aws", "ok"]
        assert "stale" in lines[str(dying)] and f"idcfs umount {dying}" in lines[str(dying)]




@pytest.fixture
def shared_dir():
    """A directory other users can reach (pytest's own tmp_path is private to root)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="idcfs-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_nobody(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command],
                          capture_output=True, timeout=60)


def test_files_are_private_to_the_mounting_user_unless_allow_other(sample, s3_endpoint, shared_dir):
    row = sample.rows[2]
    for options, readable in ((), False), (("-o", "allow_other"), True):
        mnt = shared_dir / f"mnt{int(readable)}"
        mnt.mkdir()
        mnt.chmod(0o755)
        with mounted(sample, mnt, shared_dir / "cache", *options, endpoint=s3_endpoint):
            name, data = next(iter(sample.series_objects(row).items()))
            proc = _as_nobody("cat", str(series_dir(mnt, row) / name))
            assert (proc.returncode == 0) == readable, proc.stderr
            if readable:
                assert proc.stdout == data
            else:
                assert b"Permission denied" in proc.stderr


def test_uid_gid_and_umask_options_set_owner_and_modes(sample, s3_endpoint, tmp_path):
    with mounted(sample, tmp_path / "m", tmp_path / "c", "-o", "uid=1234,gid=4321,umask=027",
                 endpoint=s3_endpoint) as mnt:
        folder = series_dir(mnt, sample.rows[2])
        for path, mode in ((folder, 0o550), (next(folder.iterdir()), 0o440)):
            st = path.stat()
            assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1234, 4321, mode)


def test_allow_other_without_user_allow_other_is_explained(monkeypatch, tmp_path):
    from idcfs import checks as cli

    conf = tmp_path / "fuse.conf"
    conf.write_text("# user_allow_other\n")
    monkeypatch.setattr(cli, "FUSE_CONF", str(conf))
    monkeypatch.setattr(cli.os, "getuid", lambda: 1000)
    with pytest.raises(cli.UsageError, match="user_allow_other"):
        cli.allow_other({"allow_other"})
    conf.write_text("user_allow_other\n")
    cli.allow_other({"allow_other"})


def test_a_storm_of_failures_is_logged_as_counts_not_line_by_line(caplog):
    from idcfs.failures import FailureLog

    now = [1000.0]
    failures = FailureLog(burst=3, period=10, clock=lambda: now[0])
    with caplog.at_level("ERROR", logger="idcfs"):
        for i in range(50):
            failures.log(RuntimeError(f"reading s3://b/k{i} failed: HTTP 503"))
            now[0] += 0.1
        now[0] += 6  # the period is over
        failures.log(RuntimeError("reading s3://b/last failed: HTTP 503"))
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:3] == [f"reading s3://b/k{i} failed: HTTP 503" for i in range(3)]
    assert messages[3] == "47 more failed requests in the last 10 s were not logged one by one"
    assert messages[4] == "reading s3://b/last failed: HTTP 503"
