"""The benchmark's HTTPS endpoint: nginx serves the objects (TLS, ranges, sendfile-speed), and
tests/s3server.py answers the S3 calls behind it (listings, buckets). A Python endpoint doing
TLS itself took as much CPU as the tools it served, on the same 2 cores, and capped them all
alike; real S3 is not the bottleneck of a workstation's reads, so the endpoint must not be one.

Every request is counted from nginx's log: requests by kind, and the bytes each GET asked for
(its range, or the whole object), as tests/s3server.py counts them.
"""

from __future__ import annotations

import collections
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import s3server  # noqa: E402
from sample import free_port  # noqa: E402

CONFIG = """
{user}
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format counted '$request_method $uri "$args" "$http_range" $status $body_bytes_sent';
    access_log {work}/access.log counted;
    sendfile on;
    keepalive_requests 100000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    types {{ }}
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:tls:1m;
        location ~ ^/[^/]+/?$ {{ proxy_pass http://127.0.0.1:{api}; }}
        location / {{
            if ($args != "") {{ proxy_pass http://127.0.0.1:{api}; }}
            root {data};
            try_files $uri =404;  # a key is a file; a "folder" is no object, as in S3
        }}
    }}
}}
"""


class Endpoint:
    """nginx over TLS on 127.0.0.1:port in front of s3server; counts() as s3server's."""

    def __init__(self, data: Path, cert: Path, key: Path) -> None:
        if shutil.which("nginx") is None:
            raise SystemExit("bench: install nginx-light first (apt-get install nginx-light)")
        self.data = data
        self.work = Path(tempfile.mkdtemp(prefix="idcfs-bench-nginx-"))
        self.port, api = free_port(), free_port()
        self._api = s3server.start(data, api)
        (self.work / "nginx.conf").write_text(CONFIG.format(
            user="user root root;" if os.geteuid() == 0 else "",  # the data may be under ~root
            work=self.work, port=self.port, api=api, cert=cert, key=key, data=data))
        self._nginx = s3server.start_listening(
            ["nginx", "-c", str(self.work / "nginx.conf"), "-p", str(self.work)], self.port, "nginx")
        self.url = f"https://127.0.0.1:{self.port}"
        self._seen = 0

    def reset(self) -> None:
        self._seen = self._log_size()

    def _log_size(self) -> int:
        path = self.work / "access.log"
        return path.stat().st_size if path.exists() else 0

    def counts(self) -> dict[str, int]:
        """Requests since the last reset: GET, HEAD, LIST, and GET_bytes, the bytes asked for."""
        time.sleep(0.05)  # nginx writes a request's line once the answer is sent
        with open(self.work / "access.log", "rb") as log:
            log.seek(self._seen)
            lines = log.read().decode(errors="replace").splitlines()
        counts: collections.Counter = collections.Counter()
        for line in lines:
            method, uri, args, wanted, status = line.split(" ", 5)[:5]
            args, wanted = args.strip('"').strip("-"), wanted.strip('"').strip("-")
            if "list-type" in args or ("prefix" in args and method == "GET"):
                counts["LIST"] += 1
            elif method in ("GET", "HEAD") and not args:
                counts[method] += 1
                if method == "GET" and status in ("200", "206"):
                    counts["GET_bytes"] += self._asked(uri, wanted)
        return dict(counts)

    def _asked(self, uri: str, wanted: str) -> int:
        size = (self.data / uri.lstrip("/")).stat().st_size
        if not wanted.startswith("bytes="):
            return size
        start, _, end = wanted[6:].partition("-")
        if not start:
            return min(size, int(end))
        return min(size, int(end) + 1 if end else size) - int(start)

    def stop(self) -> None:
        self._nginx.terminate()
        self._api.terminate()
        self._nginx.wait(10)
        self._api.wait(10)
        shutil.rmtree(self.work, ignore_errors=True)
