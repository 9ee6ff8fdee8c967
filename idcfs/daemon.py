"""The mounted daemon: wires the layers together, serves FUSE, unmounts cleanly.

Readiness is announced only after the mount has answered a stat of its own root, so whoever
started it (the CLI in the background, later systemd) never sees a mount that does not work yet.
SIGTERM, SIGINT and SIGHUP end the FUSE loop and unmount; an unmount from outside
(`idcfs umount`) ends it too.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import socket
import subprocess
import time

import pyfuse3
import trio

from .index import files as index
from .logs import setup_logging
from .data_cache import BlockCache, DiskBlocks
from .config import MountConfig
from .failures import FailureLog
from .fs import Attributes, Operations
from .listings import Listings
from .namespace import Namespace
from .namespace.about import AboutNodes
from .namespace.tree_nodes import TreeNodes
from .prefetch import Policy, Reader
from .index.selection import BadSelection
from .errors import SourceError
from .s3.check import check, timed_out
from .s3.endpoint import Health, endpoint_name
from .source_process import SourceProcess
from .index.tree import Tree

log = logging.getLogger("idcfs")

STOP_GRACE_SECONDS = 5
CHECK_SECONDS = 5.0  # the endpoint check before "ready", at most
READ_AHEAD_KB = 4096
BASE_FUSE_OPTIONS = {"fsname=idcfs", "subtype=idcfs", "ro", "default_permissions"}


class MountFailed(Exception):
    """The kernel refused the mount; the message says where and why."""


def _announce(ready_fd: int | None, message: str) -> None:
    """The last word to the process waiting for the mount: "ready", or why it failed."""
    if ready_fd is not None:
        os.write(ready_fd, message.encode())
        os.close(ready_fd)


def _warn_starter(ready_fd: int | None, warning: str) -> None:
    """A warning the waiting `idcfs mount` prints before it returns (the mount goes on)."""
    if ready_fd is not None:
        os.write(ready_fd, f"warning: {warning}\n".encode())


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) how the daemon is doing; nothing when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)


async def _serve(cfg: MountConfig, mount: _Mount, ready_fd: int | None, started: float) -> None:
    # Signals are caught from before the mount exists until after it is gone, so a SIGTERM at any
    # moment unmounts instead of killing the daemon and leaving a stale mount behind.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        try:
            pyfuse3.init(mount.ops, str(cfg.mountpoint), BASE_FUSE_OPTIONS | set(cfg.fuse_options))
        except RuntimeError as exc:
            raise MountFailed(f"cannot mount {cfg.mountpoint}: {exc}") from exc
        try:
            async with trio.open_nursery() as nursery:
                mount.reader.start(nursery)
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
                nursery.start_soon(_guarded, mount.check_endpoint)
                nursery.start_soon(_guarded, _ready_when_answering, cfg, mount, ready_fd, started,
                                   nursery)
                nursery.start_soon(_guarded, _return_freed_memory, mount.source)
                await pyfuse3.main(min_tasks=4, max_tasks=cfg.max_connections * 2)
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)


async def _guarded(task, *args) -> None:
    """A background task of the daemon that may fail without taking the mount with it."""
    try:
        await task(*args)
    except Exception:  # noqa: BLE001 - the mount serves on; the log says what failed
        log.exception("%s failed", task.__name__)


async def _ready_when_answering(cfg: MountConfig, mount: _Mount, ready_fd: int | None,
                                started: float, nursery: trio.Nursery) -> None:
    try:
        await _announce_when_answering(cfg, mount, ready_fd, started)
    finally:  # then the S3 process; whatever happened, requests waiting for it are let go
        await mount.make_source(nursery)


async def _announce_when_answering(cfg: MountConfig, mount: _Mount, ready_fd: int | None,
                                   started: float) -> None:
    # Abandoned if cancelled: once the FUSE loop stops (a signal right after mounting), a stat of
    # the mountpoint only returns when the mount is gone, and must not hold up the shutdown.
    st = await trio.to_thread.run_sync(os.stat, cfg.mountpoint, abandon_on_cancel=True)
    _raise_readahead(st.st_dev)
    status = f"IDC version {cfg.selection.idc_version} mounted at {cfg.mountpoint}"
    # The endpoint check ran while the mount was made; it is bounded to a few seconds.
    problem = await mount.checked()
    if problem:
        warning = f"{problem}; mounted anyway (what the cache holds is served)"
        log.warning("%s", warning)
        _warn_starter(ready_fd, warning)
        status += f"; endpoint: {problem}"
    log.info("mounted %s in %.2f s", cfg.mountpoint, time.monotonic() - started)
    _announce(ready_fd, "ready")
    sd_notify(f"READY=1\nSTATUS={status}")


def _raise_readahead(device: int) -> None:
    """Let the kernel read ahead (and so send reads of up to 1 MiB) instead of 128 KiB a time.

    Every FUSE request costs a trip through Python; the default readahead of a FUSE mount splits
    a sequential read into 128 KiB requests, eight times as many as needed. Only root may raise it
    (through the mount's backing device in sysfs); others keep the kernel's default.
    """
    path = f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("kernel readahead left at its default (%s: %s)", path, exc.strerror)


async def _stop_on_signal(signals, scope: trio.CancelScope) -> None:
    """Let requests in flight finish for a moment, then stop whatever is left."""
    async for signum in signals:
        log.info("%s received: unmounting", signal.Signals(signum).name)
        sd_notify("STOPPING=1")
        pyfuse3.terminate()
        await trio.sleep(STOP_GRACE_SECONDS)
        scope.cancel()
        return


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Blocks are 1 MiB byte strings allocated by one thread and freed by another; with glibc's
    default of one malloc arena per thread (up to 8 per core) the arenas fragment and the
    daemon's RSS creeps up for as long as it serves (+30 MiB a minute under the load test; with
    two arenas it stays flat). Must run before the daemon starts threads. glibc only."""
    try:
        ctypes.CDLL(None).mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        log.debug("not glibc: malloc arenas left as they are")


async def _return_freed_memory(source: SourceProcess, every: float = 2.0) -> None:
    """Give the pages that Python has freed back to the system every few seconds, so that one
    workload's peak is not carried into the next (the benchmark's sequence of a 1 GiB read, disk
    cache re-reads and a series copy peaked at 480-580 MB without it, 440-470 MB with it), and
    those of the memory shared with the S3 process once it is idle. malloc_trim costs well under
    a millisecond here (glibc only)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        trim = None
    while True:
        await trio.sleep(every)
        if trim is not None:
            trim(0)
        source.return_idle_memory()


class _Mount:
    """The layers of one mount, made on the event loop that serves it.

    The S3 client runs in a process of its own (source_process.py), started once the mount is
    ready (make_source): botocore's import and service models were ~0.3 s of every mount.
    Listings and reads that come before it wait for it; the endpoint check before "ready" does
    without it (check.py)."""

    def __init__(self, cfg: MountConfig, tree: Tree) -> None:
        self.health = Health()
        self.listings = Listings(self._list, cfg.cache_dir)
        self.disk = DiskBlocks(cfg.cache_dir, cfg.cache_size)
        self.cache = BlockCache(self._get_blocks, self.disk, cfg.memory_cache_size)
        self.reader = Reader(self.cache, concurrency=max(4, cfg.max_connections // 2),
                             policy=Policy().within_memory(cfg.memory_cache_size))
        nodes = TreeNodes(tree, self.listings, self.reader, cfg.request_timeout, FailureLog())
        self.ops = Operations(Namespace(nodes, AboutNodes(tree.files.meta, _options(cfg, tree),
                                                          self.stats)),
                              Attributes(cfg.uid, cfg.gid, cfg.umask, tree.timestamp_ns))
        self.source = SourceProcess(
            {"endpoint_url": cfg.endpoint_url, "max_connections": cfg.max_connections,
             "ca_bundle": cfg.ca_bundle, "log_level": cfg.log_level}, self.health,
            self.cache.block_size)
        self._source_made = trio.Event()
        self._cfg = cfg
        self._tree = tree
        self._problem: str | None = None
        self._checked = trio.Event()

    async def make_source(self, nursery: trio.Nursery) -> None:
        try:
            await self.source.start(nursery)
        except SourceError as exc:
            log.error("%s", exc)
        finally:
            self._source_made.set()

    async def _list(self, ref):
        await self._source_made.wait()
        return await self.source.list_series(ref.bucket, ref.prefix, ref.instances)

    async def _get_blocks(self, obj, start: int, length: int, block_size: int):
        await self._source_made.wait()
        return await self.source.get_blocks(obj.bucket, obj.key, start, length, block_size)

    async def check_endpoint(self) -> None:
        """One cheap request while the mount is made: is the endpoint there?"""
        try:
            if self._tree.rows:
                first, cfg = self._tree.series(0), self._cfg
                verdict = timed_out(cfg.endpoint_url, CHECK_SECONDS)
                with trio.move_on_after(CHECK_SECONDS):
                    verdict = await trio.to_thread.run_sync(
                        check, cfg.endpoint_url, cfg.ca_bundle, first.bucket, first.prefix,
                        CHECK_SECONDS, abandon_on_cancel=True)
                self._problem = verdict.problem
                if verdict.unreachable:
                    self.health.failed(verdict.problem)
                elif verdict.problem is None:
                    self.health.answered()
        finally:
            self._checked.set()

    async def checked(self) -> str | None:
        await self._checked.wait()
        return self._problem

    def stats(self) -> dict:
        cache, disk, source, ops = self.cache, self.disk, self.source, self.ops
        return {**cache.stats, "listings_fetched": self.listings.fetched, "errors": ops.errors,
                "endpoint": endpoint_name(self._cfg.endpoint_url),
                "endpoint_health": self.health.as_dict(),
                "s3_client": source.state, "s3_client_problem": source.problem,
                "hedged_requests": source.hedged,
                "handler_errors": ops.unexpected,
                "disk_write_failures": cache.writer.failed,
                "disk_cache_bytes": disk.used, "disk_cache_limit": disk.limit,
                "disk_cache_blocks": disk.count, "damaged_blocks_refetched": disk.corrupt,
                "disk_write_errors": disk.write_errors,
                "blocks_not_written_disk_busy": cache.writer.skipped}


def _options(cfg: MountConfig, tree: Tree) -> dict:
    sel = cfg.selection
    return {"idc_version": sel.idc_version, "source": sel.source,
            "endpoint_url": endpoint_name(cfg.endpoint_url),
            "collections": list(sel.collections), "licenses": list(sel.licenses),
            "exclude_licenses": list(sel.exclude_licenses), "filter": sel.filter,
            "manifest": sel.manifest, "mountpoint": str(cfg.mountpoint),
            "cache_dir": str(cfg.cache_dir), "series": tree.rows}


def run(cfg: MountConfig, ready_fd: int | None = None,
        build: subprocess.Popen | None = None) -> int:
    """Mount and serve until unmounted or signalled; the exit status of the daemon."""
    setup_logging(cfg.log_level)
    _limit_malloc_arenas()
    started = time.monotonic()
    try:
        tree = Tree(index.load(cfg.index_dir, cfg.cache_dir, cfg.selection, build))
    except (index.BadIndex, BadSelection) as exc:
        log.error("%s", exc)
        _announce(ready_fd, str(exc))
        return 1
    log.info("IDC version %s from %s: %d series, read from %s (%s)", cfg.selection.idc_version,
             cfg.index_dir, tree.rows, cfg.selection.source, cfg.endpoint_url or "AWS S3")
    mount = _Mount(cfg, tree)
    try:
        mount.disk.scan_in_background()
        _freeze_what_start_up_made()
        trio.run(_serve, cfg, mount, ready_fd, started)
    except MountFailed as exc:
        log.error("%s", exc)
        _announce(ready_fd, str(exc))
        return 1
    finally:
        mount.source.close()
        mount.cache.writer.drain()
    log.info("unmounted %s", cfg.mountpoint)
    return 0


def _freeze_what_start_up_made() -> None:
    """Everything made so far (the index, the libraries) lives as long as the mount: out of the
    collector's sight, its full collections stop walking those objects again and again while
    requests allocate (~4 % of the CPU of fetching a series, perf)."""
    gc.freeze()
