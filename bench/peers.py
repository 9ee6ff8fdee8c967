"""idcfs against the tools a user would pick instead, over HTTPS, through links like a user's, in
one run.

Every tool reads the same IDC-shaped bucket (bench/data.py) from the same endpoint (nginx over
TLS, bench/endpoint.py), through the same link (bench/link.py: a latency per request, and one
bandwidth shared by all connections). Profiles:

    20ms       20 ms per request, no bandwidth limit (a cloud VM next to the bucket)
    20ms-1G    20 ms, 1 Gb/s
    40ms-1G    40 ms, 1 Gb/s (a campus)
    80ms-300M  80 ms, 300 Mb/s (a remote workstation)
    0ms        no link at all: CPU per byte and per file only

Peers: s5cmd (the downloader idc-index uses), s3fs-fuse and rclone mount (filesystems, with their
defaults), and plain aiobotocore (the ceiling for Python). Each row gives wall time, the CPU
seconds of the tool's own processes (the daemon of a mount and its helpers, the client of a
download), the peak RSS of a mount's processes (together, at the largest of samples every
10 ms; and each one's own peak, added up), the requests and the bytes the endpoint was asked
for (from its log), and the ratios against s5cmd.
Cold runs start from a fresh mount with an empty cache; idcfs and s5cmd are repeated (medians,
with the range), the slower peers are run once.

    .venv/bin/python bench/peers.py [--profiles 20ms,40ms-1G] [--repeat 3] [--peers-in PROFILES]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import data
from endpoint import Endpoint
from scratch import Scratch
from tools import BUCKET, Mount, ceiling, s5cmd, through, timed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import make_ca  # noqa: E402
from sample import free_port  # noqa: E402

PROFILES = {"0ms": (0, None), "20ms": (20, None), "20ms-1G": (20, 1000),
            "40ms-1G": (40, 1000), "80ms-300M": (80, 300)}
DEFAULT = "20ms,20ms-1G,40ms-1G,80ms-300M"
WORKLOADS = ("copy", "volume", "big-read", "readers", "loader", "slide", "listing")
READ_MB = 128  # what each concurrent reader reads of the 1 GiB object
ENV = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")
       and k not in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}


def open_link(server: Endpoint, profile: str) -> tuple[subprocess.Popen | None, str]:
    """The URL a tool reaches the endpoint at in a profile: the endpoint itself, or bench/link.py
    in front of it with the profile's latency and rate (returned too, to stop when done)."""
    latency, rate = PROFILES[profile]
    if not (latency or rate):
        return None, server.url
    port = free_port()
    link = subprocess.Popen([sys.executable, str(ROOT / "bench" / "link.py"), str(port),
                             str(server.port), str(latency), str(rate or 0)])
    time.sleep(0.5)
    return link, f"https://127.0.0.1:{port}"


def say(message: str) -> None:
    print(f"-- {message}", file=sys.stderr, flush=True)


def warm_endpoint(paths: list[Path]) -> None:
    """The endpoint's files in its page cache before a cold run, whichever tool ran last."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(8 << 20):
                pass


def digests(folder: Path) -> list[str]:
    """The MD5s of the files in a folder, sorted: equal for two copies of a series, whatever the
    files are called."""
    return sorted(hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir())


class WrongBytes(Exception):
    """A tool's copy differs from the objects."""


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


class Bench:
    def __init__(self, work: Path, meta: dict, ca, server: Endpoint, repeat: int) -> None:
        self.work, self.meta, self.ca, self.server, self.repeat = work, meta, ca, server, repeat
        self.results: list[dict] = []
        self.store = work / "s3" / BUCKET
        self._digests: dict[str, list[str]] = {}  # of the objects of a series, made once
        self._expected: dict[str, str] = {}  # what a workload prints, run on the objects
        self._served: dict | None = None  # the endpoint's counts, taken before a run's checks
        self.scratch = Scratch(work / "tmp", say)

    def record(self, profile: str, workload: str, tool: str, runs: list[tuple[float, float]],
               served: dict, nbytes: int = 0, note: str = "") -> None:
        if not runs:  # the tool failed at it (said when it did)
            Mount.peaks.pop(tool, None)
            Mount.at_once.pop(tool, None)
            self.results.append({"profile": profile, "workload": workload, "tool": tool,
                                 "seconds": None, "runs": [], "cpu": None, "MB/s": None, "rss": None,
                                 "rss_at_once": None, "requests": 0, "MB_asked": 0,
                                 "note": "failed"})
            return
        walls = sorted(w for w, _ in runs)
        cpus = sorted(c for _, c in runs)
        rss, at_once = Mount.peaks.pop(tool, None), Mount.at_once.pop(tool, None)
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        self.results.append({
            "profile": profile, "workload": workload, "tool": tool, "seconds": round(wall, 3),
            "runs": [round(w, 3) for w in walls], "cpu": round(cpu, 2),
            "rss": round(rss) if rss else None, "rss_at_once": round(at_once) if at_once else None,
            "MB/s": round(nbytes / wall / 1e6, 1) if nbytes else None,
            "requests": sum(served.get(k, 0) for k in ("GET", "HEAD", "LIST")),
            "MB_asked": round(served.get("GET_bytes", 0) / 1e6, 1), "note": note})
        spread = f" ({walls[0]:.2f}-{walls[-1]:.2f})" if len(walls) > 1 else ""
        say(f"{profile:<10} {workload:<40} {tool:<11} {wall:7.2f} s{spread}  cpu {cpu:5.2f} s  "
            f"asked {served.get('GET_bytes', 0) / 1e6:7.1f} MB {note}")

    def counted(self, run) -> tuple[tuple[float, float], dict]:
        """(run's result, what the endpoint served for it): up to run's end_count(), if it
        calls it before checking what it read through a mount (a re-read a peer fetches again
        is not the workload's)."""
        self.server.reset()
        self._served = None
        result = run()
        served, self._served = self._served, None
        return result, served if served is not None else self.server.counts()

    def end_count(self) -> None:
        """What the endpoint served so far is the run's: what follows is its checks."""
        self._served = self.server.counts()

    def once(self, run) -> tuple[list[tuple[float, float]], dict]:
        """One run, counted: (its runs, what the endpoint served); no runs if what it read
        was not the objects' bytes (run checks that after its timing)."""
        try:
            result, served = self.counted(run)
        except WrongBytes as exc:
            say(f"WRONG BYTES: {exc}")
            return [], {}
        return [result], served

    def cold(self, files: list[Path], once, times: int) -> tuple[list, dict]:
        """times runs of once, each with the endpoint warm; no runs if the tool fails."""
        runs, served = [], {}
        for _ in range(times):
            warm_endpoint(files)
            try:
                result, served = self.counted(once)
            except subprocess.CalledProcessError as exc:
                say(f"failed: {' '.join(map(str, exc.cmd))[:120]} (status {exc.returncode})")
                return [], {}
            except WrongBytes as exc:
                say(f"WRONG BYTES: {exc}")
                return [], {}
            runs.append(result)
        return runs, served

    def verify(self, copy: Path, uuid: str, tool: str) -> None:
        """Every byte of a tool's copy of a series equals the objects (outside the timing)."""
        if uuid not in self._digests:
            self._digests[uuid] = digests(self.store / uuid)
        if digests(copy) != self._digests[uuid]:
            raise WrongBytes(f"{tool}'s copy of {uuid} differs from the objects")

    def verify_result(self, printed: list[str], command: list[str], tool: str) -> None:
        """What a workload printed of what it read (its digest of the pixels it loaded, the
        region it showed) equals what the same command prints run on the objects themselves,
        outside the timing: the bytes it read were the objects'."""
        key = " ".join(command)
        if key not in self._expected:
            self._expected[key] = subprocess.run(command, check=True, capture_output=True,
                                                 text=True).stdout
        if printed != [self._expected[key]]:
            raise WrongBytes(f"{tool}: {Path(command[1]).name} read other bytes than the "
                             f"objects hold")

    @staticmethod
    def verify_names(listed: list[str], names: list[str], tool: str) -> None:
        """A listing holds exactly the objects' names."""
        if sorted(listed) != names:
            raise WrongBytes(f"{tool}'s listing has {len(listed)} names, not the objects' "
                             f"{len(names)}" if len(listed) != len(names) else
                             f"{tool}'s listing names other files than the objects")

    def verify_read(self, path: Path, key: str, tool: str, nbytes: int | None = None) -> None:
        """The first nbytes (all) of a file as the mount serves it now equal the object's
        (outside the timing and the endpoint's counts)."""
        limit = [] if nbytes is None else ["-n", str(nbytes)]
        if subprocess.run(["cmp", "-s", *limit, str(path), str(self.store / key)]).returncode:
            raise WrongBytes(f"{tool}'s read of {key} differs from the object")

    def fresh(self, name: str) -> Path:
        return self.scratch.fresh(name)

    def mount(self, tool: str, endpoint: str, *extra: str) -> Mount:
        return Mount(tool, endpoint, self.ca.ca_pem, self.work, ENV, self.scratch, extra)

    # -- workloads ------------------------------------------------------------------------

    def series_copy(self, profile: str, endpoint: str, peers: bool) -> None:
        ct = self.meta["ct"]
        files = sorted((self.store / ct["uuid"]).iterdir())
        work = "cold cp -r of a 292-file CT series"

        def copy(tool: str):
            def once():
                target = self.fresh("copy")
                with self.mount(tool, endpoint) as m:
                    result = through(m, ["cp", "-r", str(m.path(ct["path"], ct["uuid"])),
                                         str(target)])
                self.verify(target, ct["uuid"], tool)
                return result
            return once

        for tool in ("idcfs", *(("s3fs", "rclone") if peers else ())):
            runs, served = self.cold(files, copy(tool), self.repeat if tool == "idcfs" else 1)
            self.record(profile, work, tool, runs, served, ct["bytes"])
        def download():
            target = self.fresh("copy")
            result = s5cmd(endpoint, self.ca.ca_pem, ENV, "cp", f"s3://{BUCKET}/{ct['uuid']}/*",
                           f"{target}/")
            self.verify(target, ct["uuid"], "s5cmd")
            return result
        runs, served = self.cold(files, download, self.repeat)
        self.record(profile, work, "s5cmd", runs, served, ct["bytes"])
        def plain_gets():
            target = self.fresh("copy")
            result = ceiling(endpoint, self.ca.ca_pem, ENV, "series", f"{ct['uuid']}/", str(target))
            self.verify(target, ct["uuid"], "aiobotocore")
            return result
        runs, served = self.cold(files, plain_gets, 1)
        self.record(profile, work, "aiobotocore", runs, served, ct["bytes"])

    def volume_load(self, profile: str, endpoint: str, peers: bool) -> None:
        ct = self.meta["ct"]
        files = sorted((self.store / ct["uuid"]).iterdir())
        work = "pydicom volume load of the series"
        load = [sys.executable, str(ROOT / "bench" / "load.py"), "volume"]
        objects = [*load, str(self.store / ct["uuid"])]
        for tool in ("idcfs", *(("s3fs", "rclone") if peers else ())):
            def once(tool=tool):
                printed: list[str] = []
                with self.mount(tool, endpoint) as m:
                    folder = m.path(ct["path"], ct["uuid"])
                    result = through(m, [*load, str(folder)], printed)
                    self.end_count()
                    self.verify(folder, ct["uuid"], tool)  # every file as the mount serves it
                self.verify_result(printed, objects, tool)
                return result
            runs, served = self.cold(files, once, 1)
            self.record(profile, work, tool, runs, served, ct["bytes"])

        def download_then_load():
            target, printed = self.fresh("volume"), []
            wall, cpu = s5cmd(endpoint, self.ca.ca_pem, ENV, "cp", f"s3://{BUCKET}/{ct['uuid']}/*",
                              f"{target}/")
            local, _ = timed([*load, str(target)], output=printed)
            self.verify(target, ct["uuid"], "s5cmd")
            self.verify_result(printed, objects, "s5cmd")
            return wall + local, cpu
        runs, served = self.cold(files, download_then_load, 1)
        self.record(profile, work, "s5cmd", runs, served, ct["bytes"], "download, then load")

    def big_read(self, profile: str, endpoint: str, peers: bool, warm: bool) -> None:
        sm = self.meta["sm"]
        files = [self.store / sm["key"]]
        work = "cold sequential read of 1 GiB"
        dd = ["dd", "of=/dev/null", "bs=1M"]

        for tool in ("idcfs", *(("s3fs", "rclone") if peers else ())):
            runs = []
            for i in range(min(2, self.repeat) if tool == "idcfs" else 1):
                warm_endpoint(files)
                with self.mount(tool, endpoint) as m:
                    def read(m=m, tool=tool):
                        result = through(m, [*dd, f"if={m.path(sm['path'], sm['key'])}"])
                        self.end_count()
                        self.verify_read(m.path(sm["path"], sm["key"]), sm["key"], tool)
                        return result  # ^ what it read (and cached), again
                    one, served = self.once(read)
                    if not one:
                        runs = []
                        break
                    runs += one
                    if tool == "idcfs" and warm and i == 0:
                        self.warm_rereads(profile, m)
            self.record(profile, work, tool, runs, served, data.BIG_SIZE)
        runs, served = self.cold(files, lambda: s5cmd(
            endpoint, self.ca.ca_pem, ENV, "cp", f"s3://{BUCKET}/{sm['key']}",
            str(self.fresh("big.dcm"))), 1)
        self.record(profile, work, "s5cmd", runs, served, data.BIG_SIZE)
        runs, served = self.cold(files, lambda: ceiling(endpoint, self.ca.ca_pem, ENV, "object",
                                                        sm["key"]), 1)
        self.record(profile, work, "aiobotocore", runs, served, data.BIG_SIZE)

    def warm_rereads(self, profile: str, m: Mount) -> None:
        sm, ct = self.meta["sm"], self.meta["ct"]
        big = m.path(sm["path"], sm["key"])

        def reread():
            result = through(m, ["dd", f"if={big}", "of=/dev/null", "bs=1M"])
            self.end_count()
            self.verify_read(big, sm["key"], "idcfs")  # from the page cache dd just filled
            return result
        self.record(profile, "warm re-read of 1 GiB (page cache)", "idcfs", *self.once(reread),
                    data.BIG_SIZE)
        drop_caches()
        self.record(profile, "warm re-read of 1 GiB (disk cache)", "idcfs", *self.once(reread),
                    data.BIG_SIZE)
        series = m.path(ct["path"], ct["uuid"])
        through(m, ["cp", "-r", str(series), str(self.fresh("copy"))])
        drop_caches()

        def recopy():
            target = self.fresh("copy")
            result = through(m, ["cp", "-r", str(series), str(target)])
            self.end_count()
            self.verify(target, ct["uuid"], "idcfs")
            return result
        self.record(profile, "warm cp -r of the series (disk cache)", "idcfs", *self.once(recopy),
                    ct["bytes"])

    def readers(self, profile: str, endpoint: str, peers: bool) -> None:
        sm = self.meta["sm"]
        for n in (4, 8):
            work = f"{n} readers of one object at once ({READ_MB} MiB each)"
            for tool in ("idcfs", *(("s3fs", "rclone") if peers else ())):
                def run(tool=tool):
                    with self.mount(tool, endpoint) as m:
                        cp = ["cp", "-r", str(m.path(self.meta["ct"]["path"], self.meta["ct"]["uuid"])),
                              str(self.fresh("copy"))]
                        subprocess.run(cp, check=True)  # "right after a series had been read"
                        command = ["sh", "-c", " & ".join(
                            [f"dd if='{m.path(sm['path'], sm['key'])}' of=/dev/null bs=1M "
                             f"count={READ_MB} 2>/dev/null"] * n) + " & wait"]
                        self.server.reset()  # the readers' requests, not the copy's
                        result = through(m, command)
                        self.end_count()
                        self.verify_read(m.path(sm["path"], sm["key"]), sm["key"], tool,
                                         READ_MB << 20)
                        return result
                runs, served = self.once(run)
                ratio = served.get("GET_bytes", 0) / (READ_MB << 20)
                self.record(profile, work, tool, runs, served, READ_MB << 20,
                            f"asked/read {ratio:.2f}x")

    def loader(self, profile: str, endpoint: str) -> None:
        series = self.meta["loader"]
        files = [p for s in series for p in (self.store / s["uuid"]).iterdir()]
        total = sum(s["bytes"] for s in series)
        work = f"loader: 8 workers, {len(series)} series with pydicom"
        load = [sys.executable, str(ROOT / "bench" / "load.py"), "loader", "8"]
        objects = [*load, *(str(self.store / s["uuid"]) for s in series)]

        def through_idcfs():
            printed: list[str] = []
            with self.mount("idcfs", endpoint) as m:
                result = through(m, [*load, *(str(m.path(s["path"], s["uuid"])) for s in series)],
                                 printed)
                self.end_count()
                for s in series:
                    self.verify(m.path(s["path"], s["uuid"]), s["uuid"], "idcfs")
            self.verify_result(printed, objects, "idcfs")
            return result
        runs, served = self.cold(files, through_idcfs, 1)
        self.record(profile, work, "idcfs", runs, served, total)

        def download():
            target = self.fresh("loader")
            target.mkdir(parents=True)
            commands = self.scratch.root / "loader.s5cmd"
            commands.write_text("".join(f"cp s3://{BUCKET}/{s['uuid']}/* {target}/{s['uuid']}/\n"
                                        for s in series))
            result = s5cmd(endpoint, self.ca.ca_pem, ENV, "run", str(commands))
            for s in series:
                self.verify(target / s["uuid"], s["uuid"], "s5cmd")
            return result
        runs, served = self.cold(files, download, 1)
        self.record(profile, work, "s5cmd", runs, served, total, "download only")
        if runs:  # what the load itself costs, without a network: the downloaded copy
            def local_load():
                target, printed = self.scratch.root / "loader", []
                result = timed([*load, *(str(target / s["uuid"]) for s in series)], output=printed)
                self.verify_result(printed, objects, "the local load")
                return result
            self.record(profile, work, "local disk", *self.once(local_load), total,
                        "the load alone, from the downloaded copy (CPU: the loader's)")

    def listing(self, profile: str, endpoint: str) -> None:
        big = self.meta["listing"]
        work = f"first ls of a {big['files']:,}-file series"
        cache = Path(tempfile.mkdtemp(prefix="cache-", dir=self.scratch.root))
        names = sorted(os.listdir(self.store / big["uuid"]))
        for what in (work, "ls of it after a remount (persisted)"):
            with Mount("idcfs", endpoint, self.ca.ca_pem, self.work, ENV, self.scratch,
                       cache=cache) as m:
                folder = m.path(big["path"], big["uuid"])

                def ls():
                    printed: list[str] = []
                    result = through(m, ["ls", str(folder)], printed)
                    self.verify_names(printed[0].split(), names, "idcfs")
                    return result
                self.record(profile, what, "idcfs", *self.once(ls))
        self.scratch.discard(cache)

        def s5cmd_ls():
            printed: list[str] = []
            result = s5cmd(endpoint, self.ca.ca_pem, ENV, "ls",
                           f"s3://{BUCKET}/{big['uuid']}/*", output=printed)
            self.verify_names([line.split()[-1].rsplit("/", 1)[-1]
                               for line in printed[0].splitlines() if line.strip()], names, "s5cmd")
            return result
        self.record(profile, work, "s5cmd", *self.once(s5cmd_ls))

    def slide(self, profile: str, endpoint: str, peers: bool) -> None:
        view = [sys.executable, str(ROOT / "bench" / "slide_view.py")]
        for table, slide in self.meta["slides"].items():
            files = sorted((self.store / slide["uuid"]).iterdir())
            work = (f"slide ({'BOT' if table == 'bot' else 'no offset table'}, level 0 "
                    f"{slide['level0'] / 1e9:.1f} GB): thumbnail + a region")
            objects = [*view, str(self.store / slide["uuid"] / "level0.dcm")]
            for tool in ("idcfs", *(("s3fs",) if peers else ())):
                def once(tool=tool):
                    printed: list[str] = []
                    with self.mount(tool, endpoint) as m:
                        result = through(m, [*view, str(m.path(slide["path"], slide["uuid"])
                                                        / "level0.dcm")], printed)
                    self.verify_result(printed, objects, tool)
                    return result
                runs, served = self.cold(files, once, 1)
                self.record(profile, work, tool, runs, served,
                            note=f"asked {100 * served.get('GET_bytes', 0) / slide['bytes']:.1f} % "
                                 f"of the slide")

            def download_then_view():
                target, printed = self.fresh("slide"), []
                wall, cpu = s5cmd(endpoint, self.ca.ca_pem, ENV, "cp",
                                  f"s3://{BUCKET}/{slide['uuid']}/*", f"{target}/")
                local, _ = timed([*view, str(target / "level0.dcm")], output=printed)
                self.verify_result(printed, objects, "s5cmd")
                return wall + local, cpu
            runs, served = self.cold(files, download_then_view, 1)
            self.record(profile, work, "s5cmd", runs, served, note="download, then view")


def table(results: list[dict]) -> str:
    lines = []
    for profile in dict.fromkeys(r["profile"] for r in results):
        lines += [f"\n### {profile}: {describe(profile)}\n",
                  "| workload | tool | seconds (range) | CPU s | MB/s | peak RSS MB, at once "
                  "(peaks added up) | requests | "
                  "MB asked | speed vs s5cmd | CPU vs s5cmd | note |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        rows = [r for r in results if r["profile"] == profile]
        for r in rows:
            if r["seconds"] is None:
                lines.append(f"| {r['workload']} | {r['tool']} | failed | | | | | | | | |")
                continue
            ref = next((x for x in rows if x["workload"] == r["workload"] and x["tool"] == "s5cmd"
                        and x["seconds"]), None)
            speed = f"{ref['seconds'] / r['seconds']:.2f}x" if ref and r is not ref else ""
            cpu = f"{r['cpu'] / ref['cpu']:.2f}x" if ref and r is not ref and ref["cpu"] else ""
            spread = f" ({r['runs'][0]:.2f}-{r['runs'][-1]:.2f})" if len(r["runs"]) > 1 else ""
            lines.append(f"| {r['workload']} | {r['tool']} | {r['seconds']:.2f}{spread} | "
                         f"{r['cpu']:.2f} | {r['MB/s'] or ''} | {_rss(r)} | {r['requests']} | "
                         f"{r['MB_asked']} "
                         f"| {speed} | {cpu} | {r['note']} |")
    return "\n".join(lines)


def _rss(row: dict) -> str:
    """A mount's peak RSS: its processes' RSS together at the largest sample, and the peak of
    each added up; nothing for a download's process."""
    if not row["rss"]:
        return ""
    return f"{row['rss_at_once']} ({row['rss']})" if row["rss_at_once"] else str(row["rss"])


def describe(profile: str) -> str:
    latency, rate = PROFILES[profile]
    return (f"{latency} ms per request, " + (f"{rate} Mb/s shared" if rate else "no bandwidth limit")
            if latency or rate else "no link (CPU per byte and per file)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default=DEFAULT, help=f"comma-separated (default: {DEFAULT})")
    parser.add_argument("--peers-in", default="20ms,40ms-1G",
                        help="profiles in which s3fs-fuse and rclone run too (default: 20ms,40ms-1G)")
    parser.add_argument("--repeat", type=int, default=3, help="cold runs of idcfs and s5cmd")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated, a part of a run (default: all: {','.join(WORKLOADS)})")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "idcfs-bench")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    profiles = [p for p in args.profiles.split(",") if p]
    workloads = [w for w in args.workloads.split(",") if w]
    for kind, asked, known in (("profile", profiles, PROFILES), ("workload", workloads, WORKLOADS)):
        unknown = [p for p in asked if p not in known]
        if unknown:
            print(f"bench: unknown {kind}(s) {', '.join(unknown)}; known: {', '.join(known)}",
                  file=sys.stderr)
            return 1
    missing = [t for t in ("s3fs", "rclone", "fusermount3", "nginx") if shutil.which(t) is None]
    if missing:
        print(f"bench: install {' '.join(missing)} first (apt-get install s3fs rclone fuse3 "
              f"nginx-light)", file=sys.stderr)
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    meta = data.prepare(args.work, say)
    shutil.rmtree(args.work / "mnt", ignore_errors=True)
    (args.work / "mnt").mkdir()
    ca = make_ca(Path(tempfile.mkdtemp(prefix="idcfs-bench-ca-")), "idcfs benchmark CA")
    server = Endpoint(args.work / "s3", ca.cert_pem, ca.key_pem)
    # The endpoint computes an object's ETag when it first lists it; S3 has them all. Else the
    # first tool to list each series (idcfs, in the first profile) would wait for its MD5s.
    say("listing the whole bucket once, so that the endpoint has every ETag before the runs")
    s5cmd(server.url, ca.ca_pem, ENV, "ls", f"s3://{BUCKET}/*")
    bench = Bench(args.work, meta, ca, server, args.repeat)
    bench.scratch.discard_all()  # an interrupted run's leftovers, removed at the end
    started = time.monotonic()
    try:
        for n, profile in enumerate(profiles):
            link, endpoint = open_link(server, profile)
            peers = profile in args.peers_in.split(",")
            bench.scratch.next_profile()  # outside any run (bench/scratch.py)
            say(f"profile {profile} ({describe(profile)}), {n + 1} of {len(profiles)}, "
                f"{(time.monotonic() - started) / 60:.0f} min so far")
            try:
                run = {"copy": lambda: bench.series_copy(profile, endpoint, peers),
                       "volume": lambda: bench.volume_load(profile, endpoint, peers),
                       "big-read": lambda: bench.big_read(profile, endpoint, peers, warm=n == 0),
                       "readers": lambda: bench.readers(profile, endpoint, peers),
                       "loader": lambda: bench.loader(profile, endpoint),
                       "slide": lambda: bench.slide(profile, endpoint, peers),
                       "listing": lambda: n == 0 and bench.listing(profile, endpoint)}
                for workload in workloads:
                    run[workload]()
            finally:
                if link:
                    link.terminate()
                    link.wait()
    finally:
        server.stop()
        for mnt in (args.work / "mnt").iterdir():
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        bench.scratch.remove()
    say(f"done in {(time.monotonic() - started) / 60:.1f} min")
    print(table(bench.results))
    if args.json:
        args.json.write_text(json.dumps(bench.results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
