"""idcfs against the tools a user would pick instead, on one local endpoint, in one run.

Peers: s5cmd (the bulk downloader idc-index uses), s3fs-fuse and rclone mount (filesystems, with
their default settings), and plain aiobotocore parallel GETs (the ceiling for Python). All read the
same IDC-shaped bucket from the same fast local S3 endpoint (tests/s3server.py), directly or
through a proxy adding a fixed latency per request (bench/latency_proxy.py).

Data: a 292-file CT series of ~0.5 MB slices (real DICOM, re-tagged with a real nlst row) and a
1 GiB slide-microscopy object, under their real index rows' crdc_series_uuids.

Cold runs of the series copy and of the 1 GiB read are repeated (each from a fresh mount, with
the endpoint's files in its page cache) and the median is reported with the range: on 2 shared
cores single runs vary by 20-50 %.

Every run also counts, at the endpoint, the requests it caused and the bytes its GETs asked for
(of the last run, for the repeated ones): a tool that fetches more than its reader wants, or a
warm read that still goes to the network, shows there. Asked for, not sent: a client may close
the connection before the end of the range it asked for (rclone asks for 128 MiB windows).

    .venv/bin/python bench/peers.py [--latency 0,20] [--repeat 3] [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
from pydicom.data import get_testdata_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import s3server  # noqa: E402
import sample  # noqa: E402

BUCKET = "idc-open-data"
CT_FILES = 292
BIG_SIZE = 1 << 30
RANDOM_READS = 200
BIN = Path(sys.executable).parent
ENV = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}


def say(message: str) -> None:
    print(f"-- {message}", file=sys.stderr, flush=True)


# -- data ----------------------------------------------------------------------------------------

def prepare(work: Path) -> dict:
    """The bucket tree and index, made once and reused by later runs."""
    meta_path = work / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    say(f"making benchmark data in {work} (once)")
    con = duckdb.connect()
    real = str(sample.REAL_INDEX)
    ct = con.execute(f"SELECT * FROM read_parquet('{real}') WHERE collection_id = 'nlst' AND "
                     "Modality = 'CT' ORDER BY abs(instanceCount - 292) LIMIT 1").to_arrow_table()
    sm = con.execute(f"SELECT * FROM read_parquet('{real}') WHERE Modality = 'SM' "
                     "AND aws_bucket = 'idc-open-data' ORDER BY SeriesInstanceUID LIMIT 1").to_arrow_table()
    ct_row, sm_row = ct.to_pylist()[0], sm.to_pylist()[0]
    rng = np.random.default_rng(11)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct_dir = work / "s3" / BUCKET / ct_row["crdc_series_uuid"]
    ct_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for n in range(CT_FILES):
        ds = base.copy()
        ds.Rows = ds.Columns = 512
        ds.PixelData = rng.integers(0, 4096, 512 * 512, dtype="<u2").tobytes()
        ds.PatientID, ds.StudyInstanceUID = ct_row["PatientID"], ct_row["StudyInstanceUID"]
        ds.SeriesInstanceUID, ds.InstanceNumber = ct_row["SeriesInstanceUID"], n + 1
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[ct_row["SeriesInstanceUID"], str(n)])
        out = io.BytesIO()
        ds.save_as(out)
        (ct_dir / f"{uuid.uuid5(sample.NAMESPACE, f'ct{n}')}.dcm").write_bytes(out.getvalue())
        total += len(out.getvalue())
    ct_row.update(instanceCount=CT_FILES, series_size_MB=total / 1e6)
    sm_dir = work / "s3" / BUCKET / sm_row["crdc_series_uuid"]
    sm_dir.mkdir(parents=True, exist_ok=True)
    big = sm_dir / f"{uuid.uuid5(sample.NAMESPACE, 'sm')}.dcm"
    with open(big, "wb") as out:
        for _ in range(BIG_SIZE // (64 << 20)):
            out.write(rng.bytes(64 << 20))
    sm_row.update(instanceCount=1, series_size_MB=BIG_SIZE / 1e6)
    (work / "index").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist([ct_row, sm_row], schema=pq.read_schema(sample.REAL_INDEX)),
                   work / "index" / "idc_index.parquet")
    meta = {
        "ct": {"uuid": ct_row["crdc_series_uuid"], "bytes": total,
               "path": f"{ct_row['collection_id']}/{ct_row['PatientID']}/{ct_row['StudyInstanceUID']}"
                       f"/CT_{ct_row['SeriesInstanceUID']}",
               "patient": f"{ct_row['collection_id']}/{ct_row['PatientID']}"},
        "sm": {"uuid": sm_row["crdc_series_uuid"], "key": f"{sm_row['crdc_series_uuid']}/{big.name}",
               "path": f"{sm_row['collection_id']}/{sm_row['PatientID']}/{sm_row['StudyInstanceUID']}"
                       f"/SM_{sm_row['SeriesInstanceUID']}/{big.name}"},
    }
    meta_path.write_text(json.dumps(meta))
    return meta


# -- processes -----------------------------------------------------------------------------------

def run(command: list[str], **kw) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=ENV, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - started


def peak_rss_mb(pattern: str) -> float:
    pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    peak = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except FileNotFoundError:
            pass
    return peak


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


class Mount:
    """A FUSE peer or idcfs, mounted fresh for each cold measurement."""

    def __init__(self, tool: str, endpoint: str, work: Path, meta: dict, cache: Path | None = None):
        self.tool, self.endpoint, self.meta = tool, endpoint, meta
        self.mnt = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=work / "mnt"))
        self.cache = cache or Path(tempfile.mkdtemp(prefix="cache-", dir=work / "tmp"))
        if tool == "idcfs":
            subprocess.run([str(BIN / "idcfs"), "mount", str(self.mnt), "--index", str(work / "index"),
                            "--endpoint-url", endpoint, "--cache-dir", str(self.cache)], check=True)
            self.pattern = f"idcfs mount {self.mnt} "
        elif tool == "s3fs":
            subprocess.run(["s3fs", BUCKET, str(self.mnt), "-o", f"url={endpoint}",
                            "-o", "use_path_request_style", "-o", "public_bucket=1", "-o", "ro"],
                           check=True, env=ENV)
            self.pattern = f"s3fs {BUCKET} {self.mnt}"
        else:
            subprocess.run(["rclone", "mount", f":s3,provider=Other,endpoint='{endpoint}',"
                            f"env_auth=false:{BUCKET}", str(self.mnt), "--daemon", "--read-only"],
                           check=True, env=ENV, stderr=subprocess.DEVNULL)
            self.pattern = f"rclone mount .* {self.mnt}"
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mnt) and time.monotonic() < deadline:
            time.sleep(0.05)

    def series(self) -> Path:
        return self.mnt / (self.meta["ct"]["path"] if self.tool == "idcfs" else self.meta["ct"]["uuid"])

    def big(self) -> Path:
        return self.mnt / (self.meta["sm"]["path"] if self.tool == "idcfs" else self.meta["sm"]["key"])

    def listing_root(self) -> Path:
        return self.mnt / (self.meta["ct"]["patient"] if self.tool == "idcfs" else self.meta["ct"]["uuid"])

    def rss(self) -> float:
        return peak_rss_mb(self.pattern)

    def __enter__(self) -> "Mount":
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
        deadline = time.monotonic() + 10
        while subprocess.run(["pgrep", "-f", self.pattern], capture_output=True).returncode == 0 \
                and time.monotonic() < deadline:
            time.sleep(0.05)


# -- workloads -----------------------------------------------------------------------------------

def random_reads(path: Path, seed: int = 3) -> float:
    size = path.stat().st_size
    rng = random.Random(seed)
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(RANDOM_READS):
            assert len(os.pread(fd, 65536, rng.randrange(0, size - 65536))) == 65536
    finally:
        os.close(fd)
    return time.perf_counter() - started


def header_scan(folder: Path) -> float:
    started = time.perf_counter()
    for name in sorted(os.listdir(folder)):
        pydicom.dcmread(folder / name, stop_before_pixels=True)
    return time.perf_counter() - started


def dd(path: Path) -> float:
    return run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], stderr=subprocess.DEVNULL)


def warm_server(files: list[Path]) -> None:
    """Have the endpoint's files in the page cache before a cold run, whichever tool ran last:
    cold means the client starts from nothing, and every tool finds the server the same way."""
    for path in files:
        with open(path, "rb") as f:
            while f.read(8 << 20):
                pass


def measure(latency: int, endpoint: str, server: str, work: Path, meta: dict, results: list,
            repeat: int) -> None:
    """Every workload against endpoint (the server, or the latency proxy in front of it); what
    each run asked of the server is counted at server, its own address."""
    tmp = work / "tmp"

    def record(workload: str, tool: str, seconds: float | list[float], served: dict,
               nbytes: int = 0, rss: float = 0.0):
        runs = sorted(seconds) if isinstance(seconds, list) else [seconds]
        median = statistics.median(runs)
        results.append({"latency_ms": latency, "workload": workload, "tool": tool,
                        "seconds": round(median, 4), "runs": [round(x, 4) for x in runs],
                        "MB/s": round(nbytes / median / 1e6, 1) if nbytes else None,
                        "peak_rss_MB": round(rss, 1) or None,
                        "requests": sum(served.get(k, 0) for k in ("GET", "HEAD", "LIST")),
                        "MB_asked": round(served.get("GET_bytes", 0) / 1e6, 1)})
        spread = f"  ({runs[0]:.3f}-{runs[-1]:.3f})" if len(runs) > 1 else ""
        say(f"{latency:>3} ms  {workload:<34} {tool:<11} {median:8.3f} s{spread}")

    def fresh(name: str) -> Path:
        path = tmp / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def counted(timed) -> tuple[float, dict]:
        """The seconds timed() reports, and what the server answered meanwhile."""
        s3server.counts(server, reset=True)
        seconds = timed()
        return seconds, s3server.counts(server)

    def cold(files: list[Path], once) -> tuple[list[float], dict, float]:
        """once(last) repeated from a fresh start: its times, what the server answered in the
        last run, and the highest peak RSS it reported."""
        times, peak = [], 0.0
        for i in range(repeat):
            warm_server(files)
            seconds, served, rss = once(i == repeat - 1)
            times.append(seconds)
            peak = max(peak, rss)
        return times, served, peak

    ct_bytes = meta["ct"]["bytes"]
    ct_files = sorted((work / "s3" / BUCKET / meta["ct"]["uuid"]).iterdir())
    big_file = [work / "s3" / BUCKET / meta["sm"]["key"]]

    def mounted_cp(tool: str) -> tuple[float, dict, float]:
        with Mount(tool, endpoint, work, meta) as m:
            return *counted(lambda: run(["cp", "-r", str(m.series()), str(fresh("copy"))])), m.rss()

    def s5cmd(source: str, target: str) -> tuple[float, dict, float]:
        return *counted(lambda: run([str(BIN / "s5cmd"), "--no-sign-request", "--endpoint-url",
                                     endpoint, "cp", f"s3://{BUCKET}/{source}", target])), 0.0

    def ceiling(*args: str) -> tuple[float, dict, float]:
        return *counted(lambda: run([sys.executable, str(ROOT / "bench" / "ceiling.py"), args[0],
                                     endpoint, BUCKET, *args[1:]])), 0.0

    # Cold copy of a CT series.
    for tool in ("idcfs", "s3fs", "rclone"):
        times, served, peak = cold(ct_files, lambda last, tool=tool: mounted_cp(tool))
        record("cold cp -r of a 292-file CT series", tool, times, served, ct_bytes, peak)
    series = meta["ct"]["uuid"]
    times, served, _ = cold(ct_files, lambda last: s5cmd(f"{series}/*", f"{fresh('copy')}/"))
    record("cold cp -r of a 292-file CT series", "s5cmd", times, served, ct_bytes)
    times, served, _ = cold(ct_files, lambda last: ceiling("series", f"{series}/", str(fresh("copy"))))
    record("cold cp -r of a 292-file CT series", "aiobotocore", times, served, ct_bytes)

    # Cold sequential read of 1 GiB; after the last idcfs run, warm re-reads through its mount.
    def warm(m: Mount) -> None:
        record("warm re-read of 1 GiB (page cache)", "idcfs", *counted(lambda: dd(m.big())),
               BIG_SIZE, m.rss())
        drop_caches()
        record("warm re-read of 1 GiB (disk cache)", "idcfs", *counted(lambda: dd(m.big())),
               BIG_SIZE, m.rss())
        run(["cp", "-r", str(m.series()), str(fresh("copy"))])
        drop_caches()
        record("warm cp -r of the series (disk cache)", "idcfs",
               *counted(lambda: run(["cp", "-r", str(m.series()), str(fresh("copy"))])),
               ct_bytes, m.rss())

    def mounted_dd(tool: str, last: bool) -> tuple[float, dict, float]:
        with Mount(tool, endpoint, work, meta) as m:
            seconds, served = counted(lambda: dd(m.big()))
            if tool == "idcfs" and last:
                warm(m)
            return seconds, served, m.rss()

    for tool in ("idcfs", "s3fs", "rclone"):
        times, served, peak = cold(big_file, lambda last, tool=tool: mounted_dd(tool, last))
        record("cold sequential read of 1 GiB", tool, times, served, BIG_SIZE, peak)
    times, served, _ = cold(big_file, lambda last: s5cmd(meta["sm"]["key"], str(fresh("big.dcm"))))
    record("cold sequential read of 1 GiB", "s5cmd", times, served, BIG_SIZE)
    drop_caches()
    record("re-read of 1 GiB from local disk (reference)", "local disk",
           *counted(lambda: dd(tmp / "big.dcm")), BIG_SIZE)
    times, served, _ = cold(big_file, lambda last: ceiling("object", meta["sm"]["key"]))
    record("cold sequential read of 1 GiB", "aiobotocore", times, served, BIG_SIZE)

    # Random 64 KiB reads, pydicom header scan, recursive listing: fresh mounts, cold.
    for tool in ("idcfs", "s3fs", "rclone"):
        with Mount(tool, endpoint, work, meta) as m:
            record(f"{RANDOM_READS} random 64 KiB reads in 1 GiB", tool,
                   *counted(lambda: random_reads(m.big())), 0, m.rss())
            record("pydicom header scan of the series", tool,
                   *counted(lambda: header_scan(m.series())), 0, m.rss())
        with Mount(tool, endpoint, work, meta) as m:
            record("ls -lR of a patient (cold)", tool,
                   *counted(lambda: run(["ls", "-lR", str(m.listing_root())])), 0, m.rss())
            record("find -name '*.dcm' (again)", tool,
                   *counted(lambda: run(["find", str(m.listing_root()), "-name", "*.dcm"])), 0,
                   m.rss())
    record(f"{RANDOM_READS} random 64 KiB reads in 1 GiB", "aiobotocore",
           *ceiling("random", meta["sm"]["key"], str(RANDOM_READS), "3")[:2])


def table(results: list) -> str:
    lines = []
    for latency in sorted({r["latency_ms"] for r in results}):
        lines.append(f"\n### {latency} ms per request\n")
        lines.append("| workload | tool | seconds | runs | MB/s | peak RSS MB | requests | MB asked for "
                     "| tool's time / idcfs's |")
        lines.append("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        rows = [r for r in results if r["latency_ms"] == latency]
        for r in rows:
            mine = next((x for x in rows if x["workload"] == r["workload"] and x["tool"] == "idcfs"), None)
            ratio = f"{r['seconds'] / mine['seconds']:.2f}×" if mine and r is not mine else ""
            runs = "-".join(f"{x:.3f}" for x in (r["runs"][0], r["runs"][-1])) if len(r["runs"]) > 1 else ""
            lines.append(f"| {r['workload']} | {r['tool']} | {r['seconds']:.3f} | {runs} | "
                         f"{r['MB/s'] or ''} | {r['peak_rss_MB'] or ''} | {r['requests']} | "
                         f"{r['MB_asked']} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", default="0,20", help="ms per request, comma-separated")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "idcfs-bench")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--repeat", type=int, default=3,
                        help="cold runs of the series copy and the 1 GiB read per tool; the "
                             "median is reported (default: 3)")
    args = parser.parse_args()
    missing = [t for t in ("s3fs", "rclone", "fusermount3") if shutil.which(t) is None]
    if missing:
        print(f"bench: install {' '.join(missing)} first (apt-get install s3fs rclone fuse3)",
              file=sys.stderr)
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    meta = prepare(args.work)
    for sub in ("mnt", "tmp"):
        shutil.rmtree(args.work / sub, ignore_errors=True)
        (args.work / sub).mkdir()
    port = sample.free_port()
    server = s3server.start(args.work / "s3", port)
    results: list = []
    try:
        for latency in (int(x) for x in args.latency.split(",")):
            proxy = None
            endpoint = f"http://127.0.0.1:{port}"
            if latency:
                proxy_port = sample.free_port()
                proxy = subprocess.Popen([sys.executable, str(ROOT / "bench" / "latency_proxy.py"),
                                          str(proxy_port), str(port), str(latency)])
                time.sleep(0.5)
                endpoint = f"http://127.0.0.1:{proxy_port}"
            try:
                measure(latency, endpoint, f"http://127.0.0.1:{port}", args.work, meta, results,
                        args.repeat)
            finally:
                if proxy:
                    proxy.terminate()
                    proxy.wait()
    finally:
        server.terminate()
        server.wait()
        for mnt in (args.work / "mnt").iterdir():
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        shutil.rmtree(args.work / "tmp", ignore_errors=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
