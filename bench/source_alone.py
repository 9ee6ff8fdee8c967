"""idcfs's S3 source alone against s5cmd: where the series copy's time goes, if not to S3.

    python bench/source_alone.py [--profile 20ms] [--rounds 4] [--at-once 32] [--busy 0.25]

GETs every object of the benchmark's CT series through idcfs's own object source
(`ObjectSource.get_blocks`: the lean GET, botocore's retry rules, the MD5 of each object),
`--at-once` of them at a time (32: the mount's prefetch workers), with a fresh connection pool
per run, and no FUSE, no cache and no thread but the event loop's; alternating with s5cmd's copy
of the same series, through the benchmark's endpoint and link (bench/peers.py's profiles). Its
CPU is this process's. `--busy F` runs a second Python thread that holds the GIL a share F of the
time in 0.2 ms bursts, as the mount's FUSE thread does (its share of the GIL in a series copy is
about a quarter), to see what sharing the GIL costs the source.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import data  # noqa: E402
from conftest import make_ca  # noqa: E402
from endpoint import Endpoint  # noqa: E402
from peers import ENV, PROFILES, open_link, say, warm_endpoint  # noqa: E402
from tools import BUCKET, s5cmd  # noqa: E402

from idcfs.s3.endpoint import Health  # noqa: E402
from idcfs.s3.source import ObjectSource  # noqa: E402

BLOCK = 1 << 20


def hold_gil(share: float, stop: threading.Event) -> None:
    """Hold the GIL (pure Python) for 0.2 ms, then let go of it, a share of the time."""
    while not stop.is_set():
        until = time.perf_counter() + 0.0002
        while time.perf_counter() < until:
            pass
        time.sleep(0.0002 * (1 - share) / share)


async def fetch_all(endpoint: str, ca: Path, objects: list[tuple[str, int]], at_once: int,
                    busy: float) -> tuple[float, float]:
    """Wall and CPU seconds to GET every object whole, at_once at a time."""
    stop = threading.Event()
    if busy:
        threading.Thread(target=hold_gil, args=(busy, stop), daemon=True).start()
    source = ObjectSource(endpoint, 64, str(ca), Health())
    await source.start()
    limit = asyncio.Semaphore(at_once)

    async def one(key: str, size: int) -> None:
        async with limit:
            blocks = await source.get_blocks(BUCKET, key, 0, size, BLOCK)
        if sum(map(len, blocks)) != size:
            raise SystemExit(f"s3://{BUCKET}/{key}: {sum(map(len, blocks))} bytes, not {size}")

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(one(key, size) for key, size in objects))
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    stop.set()
    await source.close()
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="20ms", choices=sorted(PROFILES))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--at-once", type=int, default=32)
    parser.add_argument("--busy", type=float, default=0.0, help="share of the time, 0 to 0.9")
    args = parser.parse_args()
    if not 0 <= args.busy <= 0.9:
        parser.error("--busy is a share of the time from 0 to 0.9")
    work = Path.home() / ".cache" / "idcfs-bench"
    meta = data.prepare(work, say)
    ct = meta["ct"]
    files = sorted((work / "s3" / BUCKET / ct["uuid"]).iterdir())
    objects = [(f"{ct['uuid']}/{path.name}", path.stat().st_size) for path in files]
    ca = make_ca(Path(tempfile.mkdtemp(prefix="idcfs-bench-ca-")), "idcfs benchmark CA")
    server = Endpoint(work / "s3", ca.cert_pem, ca.key_pem)
    link, endpoint = open_link(server, args.profile)
    results: dict[str, list[tuple[float, float]]] = {"source": [], "s5cmd": []}
    try:
        with tempfile.TemporaryDirectory(prefix="source-alone-", dir=work) as scratch:
            for n in range(args.rounds):
                for tool in ("source", "s5cmd") if n % 2 == 0 else ("s5cmd", "source"):
                    warm_endpoint(files)
                    os.sync()
                    if tool == "s5cmd":
                        run = s5cmd(endpoint, ca.ca_pem, ENV, "cp", f"s3://{BUCKET}/{ct['uuid']}/*",
                                    f"{scratch}/{n}/")
                    else:
                        run = asyncio.run(fetch_all(endpoint, ca.ca_pem, objects, args.at_once,
                                                    args.busy))
                    results[tool].append(run)
                    say(f"{args.profile} round {n + 1}/{args.rounds} {tool}: wall {run[0]:.3f} s, "
                        f"cpu {run[1]:.3f} s")
    finally:
        if link:
            link.terminate()
            link.wait()
        server.stop()
    for tool, runs in results.items():
        walls, cpus = sorted(w for w, _ in runs), sorted(c for _, c in runs)
        print(f"{tool:7} wall {statistics.median(walls):.2f} s ({walls[0]:.2f}-{walls[-1]:.2f}), "
              f"cpu {statistics.median(cpus):.2f} s ({cpus[0]:.2f}-{cpus[-1]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
