"""The object source as the daemon sees it: a process of its own (s3/serve.py), asked from trio.

Each request goes to the S3 process as a small message on a socket pair; a read's blocks come back
through memory the two processes share (a memfd): the daemon sets aside a place for each block
before it asks, the S3 process writes the body there as it arrives, and the daemon reads each
block out once it has the answer. It reads with pread, not through a mapping: the kernel copies
the bytes without holding the daemon's GIL, and the shared pages count in the S3 process's memory
alone. Requests and answers are matched by number, so any number are in flight at once. A
request whose reader gave up (the kernel interrupted it) is cancelled in the S3 process too; its
places stay set aside until the S3 process says it has stopped.

If the S3 process ends (killed, or a bug), the requests in flight fail, and a request a few
seconds later starts a new one: a fault there costs the reads of that moment an EIO, never the
mount.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import time

import trio

from .errors import SourceError
from .objects import Blocks
from .s3.endpoint import Health
from .wire import CANCEL, FAILED, GET, HEADER, LIST, frame, unframe

log = logging.getLogger(__name__)

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2

START_SECONDS = 60.0  # for a new S3 process to import its libraries and make its client
STOP_SECONDS = 5.0  # for it to end once told, or to stop a cancelled request, before it is killed
COMMAND = (sys.executable, "-m", "idcfs.s3.serve")  # then its settings, as JSON
RESTART_AFTER = 5.0  # seconds after an S3 process ended before another is started
IDLE_SECONDS = 10.0  # with no read for this long, the shared memory's pages go back


class Places:
    """The shared memory, in places of one block each, given out first come, first served."""

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.used_at = float("-inf")  # when places were last taken or given back
        self.written = False  # places were taken since the memory's pages were last returned
        self._free = [i * size for i in range(count)]
        self._waiting: collections.deque[tuple[int, trio.Event, list[int]]] = collections.deque()

    @property
    def in_use(self) -> int:
        return self.count - len(self._free)

    async def take(self, n: int) -> list[int]:
        """n places (their offsets), once there are; n must not exceed count."""
        self.used_at, self.written = time.monotonic(), True
        if not self._waiting and len(self._free) >= n:
            return self._pop(n)
        entry: tuple[int, trio.Event, list[int]] = (n, trio.Event(), [])
        self._waiting.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():
                self.give_back(entry[2])
            else:
                self._waiting.remove(entry)
                self._grant()
            raise
        return entry[2]

    def give_back(self, offsets: list[int]) -> None:
        self.used_at = time.monotonic()
        self._free.extend(offsets)
        self._grant()

    def _grant(self) -> None:
        while self._waiting and len(self._free) >= self._waiting[0][0]:
            n, event, offsets = self._waiting.popleft()
            offsets.extend(self._pop(n))
            event.set()

    def _pop(self, n: int) -> list[int]:
        taken, self._free[-n:] = self._free[-n:], []
        return taken


class _Request:
    __slots__ = ("done", "value", "failure", "places", "abandoned")

    def __init__(self, places: list[int]) -> None:
        self.done = trio.Event()
        self.value = None
        self.failure: str | None = None
        self.places = places  # set aside for its blocks, given back when it is done with them
        self.abandoned = False  # its asker gave up; the places are given back on its answer


class _Child:
    """One S3 process: its socket, and the requests it has not answered yet."""

    def __init__(self, process: subprocess.Popen, sock: trio.socket.SocketType) -> None:
        self.process = process
        self.sock = sock
        self.requests: dict[int, _Request] = {}
        self.sending = trio.Lock()
        self.started = False  # it said it is ready
        self.hedged = 0  # requests it raced with a second one
        self.ended = False


class SourceProcess:
    """Listings and ranged reads of immutable objects, by the mount's S3 process."""

    def __init__(self, settings: dict, health: Health, block_size: int,
                 memory_size: int = 48 << 20, restart_after: float = RESTART_AFTER) -> None:
        """settings: endpoint_url, max_connections, ca_bundle and log_level for the process;
        memory_size: the memory shared for blocks in flight (at least 16 blocks): the
        prefetcher's bound on what it has in flight (prefetch/policy.py) and room beside it for
        reads on demand. Every page ever written stays resident while reads go on."""
        self.restart_after = restart_after
        self.health = health
        self.block_size = block_size
        self.places = Places(max(16, memory_size // block_size), block_size)
        self._settings = settings
        self._memory_fd = os.memfd_create("idcfs-blocks")
        os.ftruncate(self._memory_fd, self.places.count * block_size)
        self._numbers = itertools.count(1)
        self._child: _Child | None = None
        self._starting = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._ended_at = float("-inf")
        self._hedged_before = 0  # by the S3 processes that ended
        self.problem = ""  # why the last S3 process ended, or could not start

    def return_idle_memory(self) -> bool:
        """Give the shared memory's pages back to the system once no read has used it for
        IDLE_SECONDS (a mount that sits idle does not keep its last burst's bytes); whether it
        did. Only while every place is free: nothing is being written there then."""
        places = self.places
        if (not places.written or places.in_use
                or time.monotonic() - places.used_at < IDLE_SECONDS):
            return False
        places.written = False
        _punch_hole(self._memory_fd, places.count * self.block_size)
        return True

    @property
    def hedged(self) -> int:
        """Requests raced by a second one, by every S3 process of the mount."""
        return self._hedged_before + (self._child.hedged if self._child else 0)

    @property
    def state(self) -> str:
        """"starting" until the first S3 process is ready, then "ready", or "failed" while none
        is (self.problem says why)."""
        child = self._child
        if child is not None and child.started and not child.ended:
            return "ready"
        return "starting" if child is None and not self.problem else "failed"

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the S3 process; SourceError if it cannot make its client."""
        self._nursery = nursery
        await self._running()

    async def _running(self) -> _Child:
        """The S3 process that answers: the one running, or a new one. Within a few seconds of
        the end of the last one, the reason it ended: a process that cannot start, or ends
        again at once, is not restarted for every request."""
        child = self._child
        if child is not None and not child.ended:  # every request: no lock, no checkpoint
            return child
        async with self._starting:
            if self._child is None or self._child.ended:
                if time.monotonic() - self._ended_at < self.restart_after:
                    raise SourceError(self.problem)
                with trio.CancelScope(shield=True):  # never leave a process half started
                    try:
                        self._child = await self._spawn()
                    except SourceError as exc:
                        self._note_end(str(exc))
                        raise
            return self._child

    def _note_end(self, problem: str) -> None:
        self.problem, self._ended_at = problem, time.monotonic()

    async def _spawn(self) -> _Child:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        settings = {**self._settings, "socket": theirs.fileno(), "memory": self._memory_fd,
                    "memory_size": self.places.count * self.block_size}
        with theirs:
            try:
                process = subprocess.Popen(
                    [*COMMAND, json.dumps(settings)],
                    pass_fds=(theirs.fileno(), self._memory_fd), stdin=subprocess.DEVNULL)
            except OSError as exc:
                ours.close()
                raise SourceError(f"cannot start the S3 process: {exc}") from exc
        child = _Child(process, trio.socket.from_stdlib_socket(ours))
        ready = child.requests[0] = _Request([])
        self._nursery.start_soon(self._receive, child)
        with trio.move_on_after(START_SECONDS):
            await ready.done.wait()
        if ready.failure is None and not ready.done.is_set():
            ready.failure = f"the S3 process did not start in {START_SECONDS:.0f} s"
        if ready.failure is not None:
            process.kill()
            raise SourceError(ready.failure)
        child.started = True
        return child

    async def _receive(self, child: _Child) -> None:
        """Every answer of one S3 process, to its request; when it ends, fail what it had."""
        buffer = bytearray()
        unexpected = True  # its end, not the mount's
        try:
            while True:
                chunk = await child.sock.recv(1 << 18)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= HEADER.size:
                    end = HEADER.size + HEADER.unpack_from(buffer)[0]
                    if len(buffer) < end:
                        break
                    message = unframe(bytes(buffer[HEADER.size:end]))
                    del buffer[:end]
                    self._answered(child, *message)
        except trio.Cancelled:  # the mount is ending
            unexpected = False
            raise
        except OSError as exc:
            log.debug("the S3 process's socket failed: %s", exc)
            child.process.kill()
        except Exception:  # noqa: BLE001 - a bug here must not take the mount down
            log.exception("an answer of the S3 process could not be taken")
            child.process.kill()
        finally:
            child.ended = True
            self._hedged_before += child.hedged
            child.hedged = 0
            child.sock.close()  # it ends when it sees the socket closed
            unexpected = unexpected and child.started
            if unexpected:  # its exit status, if it has one already (it has, when it was killed)
                self._note_end(f"the S3 process ended ({_status(child.process.poll())})")
            with trio.CancelScope(shield=True):
                status = await trio.to_thread.run_sync(_ended, child.process, STOP_SECONDS)
            if unexpected:
                self.problem = f"the S3 process ended ({status})"
                log.error("the S3 process ended (%s): reads in flight fail, and the requests "
                          "after them start a new one", status)
            for request in child.requests.values():
                self._finish(request, None, f"the S3 process ended ({status})")
            child.requests.clear()

    def _answered(self, child: _Child, number: int, kind: str, value, status) -> None:
        request = child.requests.pop(number, None)
        if status is not None:
            health, child.hedged = status
            if health["since"] > self.health.since:
                self.health.state, self.health.problem = health["state"], health["problem"]
                self.health.since = health["since"]
        if request is not None:
            self._finish(request, value if kind != FAILED else None,
                         value if kind == FAILED else None)

    def _finish(self, request: _Request, value, failure: str | None) -> None:
        request.value, request.failure = value, failure
        if request.abandoned:
            self.places.give_back(request.places)
        request.done.set()

    async def _ask(self, message: tuple, request: _Request):
        """Send a request and wait for its answer; cancelled, it is cancelled there too."""
        child = await self._running()
        number = next(self._numbers)
        child.requests[number] = request
        sent = False
        try:
            async with child.sending:
                await _send_all(child.sock, frame((number, *message)))
                sent = True
            await request.done.wait()
        except BaseException as exc:
            if not request.done.is_set():
                if sent and not child.ended:
                    request.abandoned = True
                    with trio.CancelScope(shield=True):
                        await self._cancel(child, number)
                    self._nursery.start_soon(self._stopped_or_killed, child, request)
                else:
                    child.requests.pop(number, None)
            if isinstance(exc, (OSError, trio.ClosedResourceError)):
                raise SourceError(f"the S3 process cannot be asked: {exc}") from exc
            raise
        if request.failure is not None:
            raise SourceError(request.failure)
        return request.value

    @staticmethod
    async def _stopped_or_killed(child: _Child, request: _Request) -> None:
        """A cancelled request's answer, or the end of an S3 process that no longer answers
        (its loop stuck): its end fails what it had and gives their places back, and the next
        request starts a new one."""
        with trio.move_on_after(STOP_SECONDS):
            await request.done.wait()
        if not request.done.is_set() and not child.ended:
            log.error("the S3 process did not stop a cancelled request within %.0f s: ending it",
                      STOP_SECONDS)
            child.process.kill()

    @staticmethod
    async def _cancel(child: _Child, number: int) -> None:
        """Tell the S3 process to stop a request. It is sent shielded, so an S3 process that
        does not take it (stuck, its socket full) is ended after STOP_SECONDS instead of holding
        the reader."""
        with trio.move_on_after(STOP_SECONDS) as waited:
            async with child.sending:
                try:
                    await _send_all(child.sock, frame((number, CANCEL)))
                except (OSError, trio.ClosedResourceError):
                    pass  # it has ended: its end fails the request and gives the places back
        if waited.cancelled_caught and not child.ended:
            log.error("the S3 process did not take a cancel within %.0f s: ending it",
                      STOP_SECONDS)
            child.process.kill()

    async def list_series(self, bucket: str, prefix: str,
                          expected: int = 0) -> list[tuple[str, int, str]]:
        """As ObjectSource.list_series, in the S3 process."""
        return await self._ask((LIST, bucket, prefix, expected), _Request([]))

    async def get_blocks(self, bucket: str, key: str, start: int, length: int,
                         block_size: int) -> Blocks:
        """As ObjectSource.get_blocks, in the S3 process. A range longer than half the shared
        memory is asked in parts; then the caller hashes it (the MD5 is not the parts')."""
        if block_size != self.block_size:
            raise ValueError(f"block size {block_size} is not the shared memory's")
        most = max(1, self.places.count // 2) * block_size
        if length > most:
            blocks = Blocks()
            for at in range(start, start + length, most):
                blocks += await self.get_blocks(bucket, key, at, min(most, start + length - at),
                                                block_size)
            return blocks
        request = _Request(await self.places.take(-(-length // block_size)))
        try:
            sizes, md5 = await self._ask(
                (GET, bucket, key, start, length, block_size, request.places), request)
            fd = self._memory_fd
            blocks = Blocks(os.pread(fd, size, at) for at, size in zip(request.places, sizes))
            blocks.md5 = md5
            return blocks
        finally:
            if not request.abandoned:
                self.places.give_back(request.places)

    def close(self) -> None:
        """End the S3 process (from outside the event loop, once it stopped)."""
        child, self._child = self._child, None
        if child is not None and not child.ended:
            child.sock.close()
            _ended(child.process, STOP_SECONDS)


def _ended(process: subprocess.Popen, seconds: float) -> str:
    """How the process ended, once it has (killed if it does not within seconds)."""
    try:
        code = process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    return _status(code)


def _status(code: int | None) -> str:
    if code is None:
        return "its exit status not known yet"
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def _punch_hole(fd: int, size: int) -> None:
    """Free the pages of fd's first size bytes; its size and the mappings of it stay (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    if libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, size) != 0:
        log.debug("the shared memory's pages stay: %s", os.strerror(ctypes.get_errno()))


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view):]
