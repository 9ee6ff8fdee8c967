"""Shared fixtures: local S3 servers with IDC-shaped sample data (over HTTPS with a test CA, as
real endpoints are), and real idcfs mounts."""

from __future__ import annotations

import http.server
import json
import os
import random
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent))
import s3server  # noqa: E402
import sample as sample_data  # noqa: E402

from idcfs.data_cache import DiskBlocks  # noqa: E402
from idcfs.index import files as index, naming  # noqa: E402
from idcfs.index.tree import Tree  # noqa: E402
from idcfs.mounts import is_mounted  # noqa: E402,F401 - shared with the tests
from idcfs.objects import ObjectRef  # noqa: E402

IDCFS = [sys.executable, "-m", "idcfs"]


class Endpoint(str):
    """An endpoint's URL, and the CA bundle that vouches for it when it speaks HTTPS."""

    ca_bundle: Path | None = None

    def __new__(cls, url: str, ca_bundle: Path | None = None) -> Endpoint:
        endpoint = super().__new__(cls, url)
        endpoint.ca_bundle = ca_bundle
        return endpoint


@dataclass(frozen=True)
class CertAuthority:
    """A certificate authority of the tests' own, and a server certificate it issued for
    127.0.0.1 and localhost."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path

    @property
    def server(self) -> tuple[Path, Path]:
        return self.cert_pem, self.key_pem


def make_ca(directory: Path, name: str) -> CertAuthority:
    import trustme

    ca = trustme.CA(organization_name=name)
    issued = ca.issue_cert("127.0.0.1", "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    found = CertAuthority(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(found.ca_pem))
    issued.private_key_pem.write_to_path(str(found.key_pem))
    found.cert_pem.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return found


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_ca(tmp_path_factory.mktemp("tls"), "idcfs test CA")


@contextmanager
def _until_done(server: subprocess.Popen, port: int,
                ca: CertAuthority | None = None) -> Iterator[Endpoint]:
    """The URL of a server process listening on port; the process is stopped however the
    caller ends."""
    try:
        yield (Endpoint(f"https://127.0.0.1:{port}", ca.ca_pem) if ca
               else Endpoint(f"http://127.0.0.1:{port}"))
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = sample_data.free_port()
    with _until_done(sample_data.start_moto(port), port) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def sample(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> sample_data.Sample:
    return sample_data.build_sample(s3_endpoint, tmp_path_factory.mktemp("sample") / "index")


@pytest.fixture(scope="session")
def tools_sample(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> sample_data.Sample:
    """Coherent series for the DICOM tool acceptance tests (tests/tools_sample.py)."""
    import tools_sample as tools

    return tools.build_tools_sample(s3_endpoint, tmp_path_factory.mktemp("tools") / "index")


@pytest.fixture(scope="session")
def tools_copy(tools_sample: sample_data.Sample, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tool sample's objects written to a local directory tree of the mount's shape."""
    root = tmp_path_factory.mktemp("local") / "copy"
    for row in tools_sample.rows:
        folder = series_dir(root, row)
        folder.mkdir(parents=True)
        for name, data in tools_sample.series_objects(row).items():
            (folder / name).write_bytes(data)
    return root


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own: a filesystem without O_DIRECT, and a disk that fills up."""
    disk = tmp_path / "tmpfs"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(disk)],
                   check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def series_dir(mount: Path, row: dict) -> Path:
    """A row's series folder under a mount of the default layout."""
    return (mount / naming.encode(row["collection_id"]) / naming.encode(row["PatientID"])
            / naming.encode(row["StudyInstanceUID"])
            / naming.encode(f"{row['Modality']}_{row['SeriesInstanceUID']}"))


def wait_for(predicate, timeout: float = 30) -> bool:
    """Whether predicate() came true within timeout seconds (polled every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def in_blocks(data: bytes, block_size: int) -> list[bytes]:
    """data cut into blocks, as an object source answers the block cache."""
    return [data[at:at + block_size] for at in range(0, len(data), block_size)]


def daemon_pids(mountpoint: Path) -> list[int]:
    """The idcfs daemon serving mountpoint (a list: empty once it is gone)."""
    out = subprocess.run(["pgrep", "-f", f"idcfs mount {mountpoint} "], capture_output=True,
                         text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def sample_daemon(pid: int) -> dict[str, int]:
    """Resident memory (KiB), open descriptors and how many of them are sockets."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue
    return {"rss_kib": rss, "fds": len(links),
            "sockets": sum(link.startswith("socket:") for link in links)}


def run_idcfs(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*IDCFS, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def force_unmount(path: Path) -> None:
    """Unmount whatever is left, so a failing test never leaves a mount behind."""
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, check=False)
    if is_mounted(path):
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True, check=False)


@contextmanager
def mounting(sample: sample_data.Sample, mountpoint: Path, cache_dir: Path, *extra: str,
             endpoint: str, env: dict | None = None
             ) -> Iterator[tuple[subprocess.CompletedProcess, Path]]:
    """`idcfs mount` in the background with the sample index: what the command answered, and
    the mountpoint, unmounted however the test ends. An HTTPS endpoint's CA is given with
    --ca-bundle."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    ca = getattr(endpoint, "ca_bundle", None)
    proc = run_idcfs("mount", str(mountpoint), "--index", str(sample.index_dir),
                     "--endpoint-url", endpoint, "--cache-dir", str(cache_dir),
                     *(["--ca-bundle", str(ca)] if ca else []), *extra, env=env)
    try:
        yield proc, mountpoint
    finally:
        if is_mounted(mountpoint):
            run_idcfs("umount", str(mountpoint))
        deadline = time.monotonic() + 10
        while is_mounted(mountpoint) and time.monotonic() < deadline:
            time.sleep(0.1)
        force_unmount(mountpoint)


@contextmanager
def mounted(sample: sample_data.Sample, mountpoint: Path, cache_dir: Path, *extra: str,
            endpoint: str, env: dict | None = None) -> Iterator[Path]:
    """idcfs mounted as `mounting` does it, the command having succeeded."""
    with mounting(sample, mountpoint, cache_dir, *extra, endpoint=endpoint, env=env) as (proc, mnt):
        assert proc.returncode == 0, proc.stderr
        assert is_mounted(mnt)
        yield mnt


@pytest.fixture(scope="module")
def mount(sample: sample_data.Sample, fast_s3: Endpoint,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("mount")
    with mounted(sample, base / "mnt", base / "cache", endpoint=fast_s3) as mnt:
        yield mnt


@contextmanager
def serving(root: Path, ca: CertAuthority | None = None, gcs: bool = False) -> Iterator[Endpoint]:
    """The counting read-only S3 server (tests/s3server.py) serving root/<bucket>/<key>, over
    HTTPS with a certificate of ca: its URL, stopped however the caller ends."""
    port = sample_data.free_port()
    with _until_done(s3server.start(root, port, ca.server if ca else None, gcs), port,
                     ca) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def sample_tree(sample: sample_data.Sample, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's objects, AWS and GCS buckets, laid out for tests/s3server.py."""
    root = tmp_path_factory.mktemp("fast-s3")
    s3server.write_tree(root, {**sample.objects, **sample.gcs_objects})
    return root


@pytest.fixture(scope="session")
def fast_s3(sample_tree: Path, test_ca: CertAuthority) -> Iterator[Endpoint]:
    """The sample's objects behind the counting read-only S3 server, over HTTPS."""
    with serving(sample_tree, test_ca) as endpoint:
        yield endpoint



@pytest.fixture(scope="session")
def gcs_s3(sample_tree: Path, test_ca: CertAuthority) -> Iterator[Endpoint]:
    """The same objects behind an endpoint that answers as GCS's XML API does."""
    with serving(sample_tree, test_ca, gcs=True) as endpoint:
        yield endpoint


class Canned(http.server.BaseHTTPRequestHandler):
    """A quiet HTTP endpoint whose do_GET gives one fixed answer (a web page, an error, a body
    of the wrong length): what no well-behaved S3 endpoint says."""

    def answer(self, status: int, body: bytes, content_type: str | None = None,
               headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class HtmlPage(Canned):
    """What a captive portal or a misconfigured proxy answers: 200 and a web page, to anything."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.answer(200, b"<!DOCTYPE html><html><body>Please log in to continue</body></html>",
                    "text/html; charset=utf-8")


@contextmanager
def answering(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local plain-HTTP endpoint answering with handler, for as long as the block runs."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


# The small index of the tree and filesystem tests.

def index_rows(*paths: tuple[str, str, str, str, str]) -> list[dict]:
    """Index rows of (collection, patient, study, modality, series UID), with the other columns a
    tree needs."""
    return [
        {"collection_id": c, "PatientID": p, "StudyInstanceUID": s, "Modality": m,
         "SeriesInstanceUID": u, "crdc_series_uuid": f"uuid-{i}",
         "aws_bucket": "idc-open-data" if i % 2 else "idc-open-data-cr",
         "instanceCount": 2, "series_size_MB": 1.5}
        for i, (c, p, s, m, u) in enumerate(paths)
    ]


# Small index rows with the anomalies of real ones: a study under two patients, a patient in two
# collections, a name with a slash, an empty name.
ROWS = index_rows(
    ("nlst", "100", "1.1", "CT", "1.1.1"),
    ("nlst", "100", "1.1", "CT", "1.1.2"),
    ("nlst", "100", "1.2", "SEG", "1.2.1"),
    ("nlst", "200", "1.1", "CT", "1.1.9"),       # the same study under a second patient
    ("acrin", "100", "9.1", "MR", "9.1.1"),      # the same patient in a second collection
    ("acrin", "a/b", "9.2", "MR", "9.2.1"),
    ("acrin", "", "9.3", "MR", "9.3.1"),
)


def build_tree(tmp_path: Path, rows: list[dict]) -> Tree:
    """The tree of an index of rows, built and mapped as a mount does."""
    (tmp_path / "index").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "index" / "idc_index.parquet")
    return Tree(index.load(tmp_path / "index", tmp_path / "cache"))


# The block cache's counting fake source (the cache and prefetch tests).

BS = 1024


class CountingSource:
    """Objects of random bytes; counts every ranged GET and can be switched off."""

    def __init__(self, sizes: dict[str, int]) -> None:
        rng = random.Random(5)
        self.data = {k: bytes(rng.getrandbits(8) for _ in range(n)) for k, n in sizes.items()}
        self.gets: list[tuple[str, int, int]] = []
        self.down = False

    def ref(self, key: str) -> ObjectRef:
        return ObjectRef("idc-open-data", key, len(self.data[key]))

    async def __call__(self, obj: ObjectRef, start: int, length: int, block_size: int) -> list[bytes]:
        if self.down:
            raise ConnectionError("endpoint down")
        self.gets.append((obj.key, start, length))
        await trio.sleep(0.01)
        return in_blocks(self.data[obj.key][start:start + length], block_size)


def slow_disk(monkeypatch, seconds_per_block: float) -> None:
    """A cache disk that takes seconds_per_block to write each block."""
    def slow_put(self, items, put=DiskBlocks.put_objects):
        time.sleep(seconds_per_block * sum(len(blocks) for _, blocks in items))
        put(self, items)

    monkeypatch.setattr(DiskBlocks, "put_objects", slow_put)


def sample_files(sample: sample_data.Sample) -> list[Path]:
    """Every object, as a path relative to the root of the tree."""
    return [series_dir(Path(), row) / name
            for row in sample.rows for name in sorted(sample.series_objects(row))]


@pytest.fixture(scope="module")
def proxy(fast_s3: Endpoint, test_ca: CertAuthority) -> Iterator[Endpoint]:
    """The sample's endpoint behind the fault proxy (tests/faultproxy.py), no faults set."""
    port = sample_data.free_port()
    proc = s3server.start_listening(
        [sys.executable, str(Path(__file__).parent / "faultproxy.py"), str(port), fast_s3,
         *map(str, test_ca.server), str(test_ca.ca_pem)],
        port, "fault proxy")
    yield Endpoint(f"https://127.0.0.1:{port}", test_ca.ca_pem)
    proc.kill()  # a stalled answer would hold up a graceful shutdown for a minute
    proc.wait()


def set_fault(proxy: str, **fault) -> None:
    """Make the proxy break requests (faultproxy.py says how); no fault: clear them."""
    method = "POST" if fault else "DELETE"
    request = urllib.request.Request(f"{proxy}/_faults", method=method,
                                     data=json.dumps(fault).encode() if fault else None)
    urllib.request.urlopen(request, context=ssl._create_unverified_context()).read()
