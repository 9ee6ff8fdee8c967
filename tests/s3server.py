"""A small, fast, read-only S3 endpoint serving a directory: <root>/<bucket>/<key>.

moto is too slow to measure a filesystem against (~150 MB/s, ~180 GETs/s here, and it reads the
whole object for every ranged GET). This serves files from disk with sendfile, answers ranged GETs,
HEAD, ListObjectsV2 and V1 (prefix, delimiter, pagination), GetBucketLocation and ListBuckets,
and refuses every write. Anonymous access only, path-style addressing. It counts requests and the
bytes its GETs were asked for, so tests and the benchmark can tell how many GETs and bytes a
workload caused: GET /_stats (JSON), POST /_stats/reset.

It serves HTTPS with --cert and --key, as real endpoints do. With --gcs it answers as Google
Cloud Storage's XML API does: listings in GCS's namespace, and on every GET, ranged or not, the
whole object's checksums (`x-goog-hash: crc32c=...,md5=...` and `x-amz-checksum-crc32c`), which
a client validating them against a range's bytes must not do.

    python tests/s3server.py ROOT [--port N] [--cert PEM --key PEM] [--gcs]

With IDCFS_S3SERVER_LOG=FILE in its environment it also appends each GET's key and range to
FILE (to see what a workload fetched, not only how much).
"""

from __future__ import annotations

import argparse
import base64
import bisect
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from email.utils import formatdate
from pathlib import Path
from xml.sax.saxutils import escape

from aiohttp import web

_XMLNS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
_GCS_XMLNS = 'xmlns="http://doc.s3.amazonaws.com/2006-03-01"'


def _error(status: int, code: str, message: str, resource: str = "") -> web.Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message><Resource>{escape(resource)}</Resource></Error>")
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


class Store:
    """The served tree, indexed once at start (the data is immutable, like IDC's)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys: dict[str, list[str]] = {}
        self.sizes: dict[tuple[str, str], tuple[int, float]] = {}
        self._etags: dict[tuple[str, str], str] = {}
        for bucket in sorted(p.name for p in root.iterdir() if p.is_dir()):
            base = root / bucket
            keys = []
            for dirpath, _, names in os.walk(base):
                for name in names:
                    path = Path(dirpath) / name
                    key = path.relative_to(base).as_posix()
                    st = path.stat()
                    keys.append(key)
                    self.sizes[(bucket, key)] = (st.st_size, st.st_mtime)
            self.keys[bucket] = sorted(keys)

        self._crc32c: dict[tuple[str, str], int] = {}
        self.entries: dict[tuple[str, str], str] = {}  # listing entries, made once

    def etag(self, bucket: str, key: str) -> str:
        """The content's MD5, as S3 gives it for objects uploaded in one part (computed once)."""
        if (bucket, key) not in self._etags:
            digest = hashlib.md5()
            with open(self.root / bucket / key, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            self._etags[(bucket, key)] = f'"{digest.hexdigest()}"'
        return self._etags[(bucket, key)]

    def gcs_hashes(self, bucket: str, key: str) -> dict[str, str]:
        """The whole object's checksums as GCS sends them with every GET, ranged or not."""
        from awscrt.checksums import crc32c  # the test suite's own dependency (boto3[crt])

        if (bucket, key) not in self._crc32c:
            crc = 0
            with open(self.root / bucket / key, "rb") as f:
                while chunk := f.read(1 << 20):
                    crc = crc32c(chunk, crc)
            self._crc32c[(bucket, key)] = crc
        crc = base64.b64encode(self._crc32c[(bucket, key)].to_bytes(4, "big")).decode()
        md5 = base64.b64encode(bytes.fromhex(self.etag(bucket, key).strip('"'))).decode()
        return {"x-goog-hash": f"crc32c={crc},md5={md5}", "x-amz-checksum-crc32c": crc,
                "x-goog-stored-content-length": str(self.sizes[(bucket, key)][0])}


def _contents(store: Store, bucket: str, key: str) -> str:
    """An object's entry in a listing (made once: listing a 91,980-object series again should
    cost what it costs S3, not what formatting it costs Python)."""
    made = store.entries.get((bucket, key))
    if made is None:
        size, mtime = store.sizes[(bucket, key)]
        iso = datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        made = store.entries[(bucket, key)] = (
            f"<Contents><Key>{escape(key)}</Key><LastModified>{iso}</LastModified>"
            f"<ETag>{escape(store.etag(bucket, key))}</ETag><Size>{size}</Size>"
            f"<StorageClass>STANDARD</StorageClass></Contents>")
    return made


def _list(store: Store, bucket: str, query, v2: bool, xmlns: str) -> web.Response:
    keys = store.keys[bucket]
    prefix = query.get("prefix", "")
    delimiter = query.get("delimiter", "")
    max_keys = min(1000, int(query.get("max-keys", "1000")))
    after = query.get("continuation-token" if v2 else "marker", "") or query.get("start-after", "")
    i = bisect.bisect_right(keys, after) if after else bisect.bisect_left(keys, prefix)
    contents, prefixes, last, truncated = [], [], "", False
    while i < len(keys) and keys[i].startswith(prefix):
        if len(contents) + len(prefixes) >= max_keys:
            truncated = True
            break
        key = keys[i]
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut >= 0:
            common = key[:cut + len(delimiter)]
            prefixes.append(common)
            last = common
            i = bisect.bisect_left(keys, common + "\U0010ffff")
            continue
        contents.append(key)
        last = key
        i += 1
    parts = [f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult {xmlns}>',
             f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>",
             f"<MaxKeys>{max_keys}</MaxKeys><IsTruncated>{str(truncated).lower()}</IsTruncated>"]
    if delimiter:
        parts.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
    if v2:
        parts.append(f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount>")
        if truncated:
            parts.append(f"<NextContinuationToken>{escape(last)}</NextContinuationToken>")
    else:
        parts.append(f"<Marker>{escape(query.get('marker', ''))}</Marker>")
        if truncated:
            parts.append(f"<NextMarker>{escape(last)}</NextMarker>")
    parts.extend(_contents(store, bucket, k) for k in contents)
    parts.extend(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes)
    parts.append("</ListBucketResult>")
    return web.Response(body="".join(parts).encode(), content_type="application/xml")


def make_app(root: Path, gcs: bool = False) -> web.Application:
    store = Store(root)
    counts: Counter = Counter()

    async def stats(request: web.Request) -> web.Response:
        if request.method == "POST":
            counts.clear()
        return web.json_response(dict(counts))

    async def service(request: web.Request) -> web.Response:
        buckets = "".join(f"<Bucket><Name>{escape(b)}</Name><CreationDate>2020-01-01T00:00:00.000Z"
                          f"</CreationDate></Bucket>" for b in store.keys)
        return web.Response(body=(f'<?xml version="1.0" encoding="UTF-8"?><ListAllMyBucketsResult '
                                  f"{_XMLNS}><Owner><ID>idc</ID></Owner><Buckets>{buckets}</Buckets>"
                                  "</ListAllMyBucketsResult>").encode(), content_type="application/xml")

    async def bucket(request: web.Request) -> web.Response:
        name = request.match_info["bucket"]
        if name not in store.keys:
            return _error(404, "NoSuchBucket", "The specified bucket does not exist", name)
        if request.method not in ("GET", "HEAD"):
            return _error(403, "AccessDenied", "read-only endpoint", name)
        if request.method == "HEAD":
            return web.Response()
        if "location" in request.query:
            return web.Response(body=(f'<?xml version="1.0" encoding="UTF-8"?><LocationConstraint '
                                      f"{_XMLNS}></LocationConstraint>").encode(),
                                content_type="application/xml")
        v2 = request.query.get("list-type") == "2"
        counts["LIST"] += 1
        return _list(store, name, request.query, v2, _GCS_XMLNS if gcs else _XMLNS)

    async def obj(request: web.Request) -> web.StreamResponse:
        name, key = request.match_info["bucket"], request.match_info["key"]
        if request.method not in ("GET", "HEAD"):
            return _error(403, "AccessDenied", "read-only endpoint", f"{name}/{key}")
        if name not in store.keys:
            return _error(404, "NoSuchBucket", "The specified bucket does not exist", name)
        if (name, key) not in store.sizes:
            if request.method == "HEAD":
                return web.Response(status=404)
            return _error(404, "NoSuchKey", "The specified key does not exist.", f"{name}/{key}")
        counts[request.method] += 1
        counts[f"{request.method} {name}/{key}"] += 1
        if "x-amz-checksum-mode" in request.headers:  # flexible checksums asked for
            counts["checksum_mode"] += 1
        size, mtime = store.sizes[(name, key)]
        headers = {"ETag": store.etag(name, key), "Last-Modified": formatdate(mtime, usegmt=True),
                   "Accept-Ranges": "bytes", "Content-Type": "application/dicom"}
        if gcs:
            headers.update(store.gcs_hashes(name, key))
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(size)})
        wanted = request.http_range
        if wanted.start is not None and wanted.start >= size:
            return _error(416, "InvalidRange", "The requested range is not satisfiable", key)
        start = 0 if wanted.start is None else max(0, size + wanted.start if wanted.start < 0
                                                   else wanted.start)
        counts["GET_bytes"] += (size if wanted.stop is None else min(size, wanted.stop)) - start
        if os.environ.get("IDCFS_S3SERVER_LOG"):
            with open(os.environ["IDCFS_S3SERVER_LOG"], "a") as trace:
                print(f"GET {key} {start}-{wanted.stop}", file=trace)
        return web.FileResponse(store.root / name / key, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/_stats", stats)
    app.router.add_route("*", "/_stats/reset", stats)
    app.router.add_route("GET", "/", service)
    app.router.add_route("*", "/{bucket}", bucket)
    app.router.add_route("*", "/{bucket}/", bucket)
    app.router.add_route("*", "/{bucket}/{key:.+}", obj)
    return app


def start_listening(command: list[str], port: int, name: str) -> subprocess.Popen:
    """Start a server process and return once it accepts connections on 127.0.0.1:port."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start") from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{name} did not start in 30 s")


def start(root: Path, port: int, tls: tuple[Path, Path] | None = None,
          gcs: bool = False) -> subprocess.Popen:
    """This server as a child process on 127.0.0.1:port, ready to answer; HTTPS with tls
    (certificate chain, key), answering as GCS does with gcs."""
    command = [sys.executable, __file__, str(root), "--port", str(port)]
    if tls:
        command += ["--cert", str(tls[0]), "--key", str(tls[1])]
    return start_listening(command + ["--gcs"] * gcs, port, "s3server")


def counts(endpoint: str, reset: bool = False) -> dict[str, int]:
    """What the server has answered since the last reset (GET, HEAD, LIST, "GET bucket/key" per
    object, and GET_bytes: the bytes its GETs asked for), optionally resetting the counts. Our own test server on loopback:
    its certificate is not what this checks."""
    request = urllib.request.Request(f"{endpoint}/_stats", method="POST" if reset else "GET")
    with urllib.request.urlopen(request, context=ssl._create_unverified_context()) as response:
        return json.load(response)


def write_tree(root: Path, objects: dict[tuple[str, str], bytes]) -> None:
    """Lay objects out as the server serves them."""
    for (bucket, key), data in objects.items():
        path = root / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def main() -> int:
    parser = argparse.ArgumentParser(description="read-only S3 endpoint over a directory")
    parser.add_argument("root", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--cert", type=Path, help="serve HTTPS with this certificate chain")
    parser.add_argument("--key", type=Path, help="the certificate's private key")
    parser.add_argument("--gcs", action="store_true", help="answer as GCS's XML API does")
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    scheme = "https" if context else "http"
    print(f"serving {args.root} on {scheme}://{args.host}:{sock.getsockname()[1]}",
          file=sys.stderr, flush=True)
    web.run_app(make_app(args.root, args.gcs), sock=sock, ssl_context=context, print=None,
                access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

