"""The tools under test, each run the way its users run it, with the CPU seconds of its own
processes read from /proc: the daemon of a mount (idcfs, s3fs-fuse, rclone mount), the client
process of a download (s5cmd, the plain-aiobotocore ceiling). The programs that read through a
mount (cp, dd, pydicom) are the same for every mount and are not counted."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from scratch import Scratch

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BUCKET = "idc-open-data"
TICK = os.sysconf("SC_CLK_TCK")
MOUNTS = ("idcfs", "s3fs", "rclone")
SAMPLE_SECONDS = 0.01  # how often a mount's resident set is sampled


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def memory_mb(pids: list[int], field: str) -> float:
    """A memory field of /proc/PID/status (VmRSS, VmHWM) added up over the processes, in MB:
    idcfs's daemon and its S3 process are one tool. (For VmHWM, each process's own peak: an
    upper bound of their peak together.) A process that has ended counts nothing."""
    kib = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        kib += sum(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith(f"{field}:"))
    return kib * 1024 / 1e6


def tool_pids(pattern: str) -> list[int]:
    """The processes whose command line matches pattern, and all their descendants: a tool's
    own helper processes count as the tool."""
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    found, todo = [], [int(p) for p in out.split()]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.append(pid)
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:
                pass
    return found


class Mount:
    """A fresh mount of one tool, with its own empty cache, unmounted on exit. Per tool, since the
    caller last took them: `peaks` holds the largest peak RSS (MB) of its processes added up
    (each process's own peak: an upper bound), `at_once` the largest RSS of its processes
    together sampled every SAMPLE_SECONDS (a lower bound: a peak between samples is missed)."""

    peaks: dict[str, float] = {}
    at_once: dict[str, float] = {}

    def __init__(self, tool: str, endpoint: str, ca: Path, work: Path, env: dict,
                 scratch: Scratch, extra: tuple[str, ...] = (),
                 cache: Path | None = None) -> None:
        """cache: an idcfs cache directory to use and keep (default: a new one in scratch,
        set aside at exit)."""
        self.tool = tool
        self.mnt = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=work / "mnt"))
        self._scratch = scratch
        self._own_cache = cache is None
        self.cache = cache or Path(tempfile.mkdtemp(prefix="cache-", dir=scratch.root))
        if tool == "idcfs":
            subprocess.run([str(BIN / "idcfs"), "mount", str(self.mnt), "--index",
                            str(work / "index"), "--endpoint-url", endpoint, "--ca-bundle", str(ca),
                            "--cache-dir", str(self.cache), *extra], check=True, env=env)
            self.pattern = f"idcfs mount {self.mnt} "
        elif tool == "s3fs":
            subprocess.run(["s3fs", BUCKET, str(self.mnt), "-o", f"url={endpoint}",
                            "-o", "use_path_request_style", "-o", "public_bucket=1", "-o", "ro",
                            "-o", "no_check_certificate"], check=True, env=env)  # no CA option
            self.pattern = f"s3fs {BUCKET} {self.mnt}"
        else:
            subprocess.run(["rclone", "mount", f":s3,provider=Other,endpoint='{endpoint}',"
                            f"env_auth=false:{BUCKET}", str(self.mnt), "--daemon", "--read-only",
                            "--ca-cert", str(ca)], check=True, env=env, stderr=subprocess.DEVNULL)
            self.pattern = f"rclone mount .* {self.mnt}"
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        if tool == "idcfs":
            # A cold run starts once the S3 client is made, as every run did when it was made
            # before "ready": its cost is a mount's, and bench/mount.py reports it.
            wait_for_s3_client(self.mnt, deadline)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, args=(tool_pids(self.pattern),),
                                         daemon=True)
        self._sampler.start()

    def _sample(self, pids: list[int]) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            mb = memory_mb(pids, "VmRSS")
            if mb > Mount.at_once.get(self.tool, 0.0):
                Mount.at_once[self.tool] = mb

    def path(self, idcfs_path: str, key: str) -> Path:
        """A file or folder: the idcfs path, or the object key in the bucket's own layout."""
        return self.mnt / (idcfs_path if self.tool == "idcfs" else key)

    def cpu(self) -> float:
        """The CPU seconds of the daemon so far (and its peak RSS, kept in `peaks`)."""
        pids = tool_pids(self.pattern)
        Mount.peaks[self.tool] = max(Mount.peaks.get(self.tool, 0.0), memory_mb(pids, "VmHWM"))
        return _cpu(pids)

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sampler.join()
        subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
        deadline = time.monotonic() + 15
        while tool_pids(self.pattern) and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)
        if self._own_cache:
            self._scratch.discard(self.cache)


def wait_for_s3_client(mountpoint: Path, deadline: float) -> None:
    """Until an idcfs mount has made its S3 client (right after "ready", ~0.3-0.5 s; the tree
    needs none), or the monotonic deadline."""
    stats = mountpoint / ".idcfs" / "stats"
    while time.monotonic() < deadline:
        if json.loads(stats.read_text()).get("s3_client", "ready") != "starting":
            return
        time.sleep(0.005)


def timed(command: list[str], env: dict | None = None,
          output: list[str] | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children); what it printed is added to
    output, if given (a few lines: the workload's digest of what it read)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, check=True, env=env, stderr=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL if output is None else subprocess.PIPE,
                          text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if output is not None:
        output.append(done.stdout)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def through(mount: Mount, command: list[str],
            output: list[str] | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the mount's daemon) of a command reading through it."""
    cpu = mount.cpu()
    wall, _ = timed(command, output=output)
    time.sleep(0.2)  # the daemon's last replies
    return wall, mount.cpu() - cpu


def s5cmd(endpoint: str, ca: Path, env: dict, *args: str,
          output: list[str] | None = None) -> tuple[float, float]:
    return timed([str(BIN / "s5cmd"), "--no-sign-request", "--endpoint-url", endpoint, *args],
                 env={**env, "SSL_CERT_FILE": str(ca)}, output=output)


def ceiling(endpoint: str, ca: Path, env: dict, *args: str) -> tuple[float, float]:
    """(wall, CPU seconds) of the plain-aiobotocore transfer, as bench/ceiling.py times it:
    without Python's start and aiobotocore's import, which a ceiling does not pay per
    transfer."""
    printed: list[str] = []
    timed([sys.executable, str(ROOT / "bench" / "ceiling.py"), args[0], endpoint, BUCKET,
           *args[1:]], env={**env, "AWS_CA_BUNDLE": str(ca)}, output=printed)
    wall, cpu = printed[-1].split()[-2:]
    return float(wall), float(cpu)
