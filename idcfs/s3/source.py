"""The object source: IDC's buckets over the S3 API (AWS, GCS's XML API, or any endpoint).

Runs on asyncio, in the S3 process (serve.py). Every request is unsigned: botocore is given
`signature_version=UNSIGNED`, which also stops it from looking up credentials at all, so no key
from the environment or ~/.aws is ever read or sent to a public bucket; and the session reads no
AWS configuration at all, and TLS trusts the system's certificate store (client.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Awaitable

import aiohttp
from botocore import handlers
from botocore.exceptions import BotoCoreError, ClientError
from botocore.retries.standard import ExponentialBackoff, RetryContext

from ..errors import SourceError
from ..objects import Blocks
from .client import DEFAULT_REGION, client_config, isolated_session
from .endpoint import (Health, describe, endpoint_name, html_page, is_connection_failure,
                       not_s3)
from .get import HTTPError, ObjectGets
from .hedge import Hedging, Progress, backing_off

log = logging.getLogger(__name__)

BODY_ATTEMPTS = 3
PAGE = 1000  # objects in a ListObjectsV2 page
PARTS_SMALL = tuple("0123456789abcdef")
PARTS_LARGE = tuple(a + b for a in PARTS_SMALL for b in PARTS_SMALL)
# botocore's standard back-off at its longest (no jitter): how long a retried attempt may wait.
_LONGEST_BACKOFF = ExponentialBackoff(service_name="s3", random=lambda: 1.0)


class ObjectSource:
    """Listing and ranged reads of immutable objects; one connection pool per mount.

    ca_bundle: a PEM file of the only CAs to trust; None trusts the system's store (and
    botocore's bundle)."""

    def __init__(self, endpoint_url: str | None, max_connections: int = 64,
                 ca_bundle: str | None = None, health: Health | None = None) -> None:
        self.endpoint_url = endpoint_url
        # One bound for both pools (at least one connection each): a quarter for listings
        # (botocore's), the rest for GETs.
        self._listing_connections = max(1, max_connections // 4)
        self.ca_bundle = ca_bundle
        self.health = health or Health()
        self.hedging = Hedging()
        self._session = isolated_session()
        self._gets = ObjectGets(endpoint_url, max(1, max_connections - self._listing_connections),
                                ca_bundle)
        self._stack = contextlib.AsyncExitStack()
        self._client = None

    @property
    def where(self) -> str:
        return endpoint_name(self.endpoint_url)

    async def start(self) -> None:
        self._client = await self._stack.enter_async_context(self._session.create_client(
            "s3", region_name=DEFAULT_REGION, endpoint_url=self.endpoint_url,
            verify=self.ca_bundle or True,
            config=client_config(self.endpoint_url, self._listing_connections, attempts=3,
                                 connect_timeout=10, read_timeout=30)))
        # botocore parses every S3 body a second time to see whether a 200 is an error document
        # (a fifth of the CPU of listing a big series). S3 answers no listing that way, and a
        # body that is not a listing is refused by list_series whatever it is.
        self._client.meta.events.unregister("before-parse.s3.*", handlers._handle_200_error)
        self._client.meta.events.register("needs-retry.s3.ListObjectsV2", _hold_for_backoff)
        await self._gets.start(self._client.meta.service_model.operation_model("GetObject"))
        self._stack.push_async_callback(self._gets.close)

    async def close(self) -> None:
        await self._stack.aclose()

    def _error(self, what: str, bucket: str, key: str, exc: Exception) -> SourceError:
        if is_connection_failure(exc):
            self.health.failed(describe(exc, self.where))
        else:
            self.health.answered()
        return SourceError(f"{what} s3://{bucket}/{key} at {self.where} failed: "
                           f"{describe(exc, self.where)}")

    async def list_series(self, bucket: str, prefix: str,
                          expected: int = 0) -> list[tuple[str, int, str]]:
        """Every object under prefix as (name below the prefix, size, ETag), in key order.

        Page after page, each raced by a second request if it stalls; an answer that is not a
        well-formed listing of that prefix (a web page, garbage in a field, keys outside the
        prefix or twice) is an error naming the series, never a listing.

        A series the index says holds more objects than a page (expected) is listed in parts
        at once, by the first one or two characters of the names (IDC's are random UUIDs, so the
        parts are even), and merged: the largest series, 91,980 files, took 92 pages one after
        another. The parts cover only names that begin with a hexadecimal digit, so the merged
        listing is kept only if it holds exactly as many objects as the index says; otherwise
        the series is listed page after page, as any other."""
        if expected > PAGE:
            parts = _parts(expected, self._listing_connections)
            listed = await asyncio.gather(*(self._list_all(bucket, prefix, prefix + part)
                                            for part in parts))
            found = [entry for part in listed for entry in part]
            if len(found) == expected:
                return sorted(found)
            log.info("listing s3://%s/%s in parts found %d objects, the index says %d: "
                     "listing it whole", bucket, prefix, len(found), expected)
        found = await self._list_all(bucket, prefix, prefix)
        if not found:  # every series has files: an empty answer must not be kept as its listing
            raise SourceError(f"listing s3://{bucket}/{prefix} at {self.where}: no objects there "
                              f"(is the endpoint or --source right for this index?)")
        return sorted(found)

    async def _list_all(self, bucket: str, prefix: str, under: str) -> list[tuple[str, int, str]]:
        """The objects whose keys begin with under (itself within prefix), page after page."""
        found: dict[str, tuple[str, int, str]] = {}
        token: str | None = None
        while True:
            page = await self._list_page(bucket, under, token)
            for name, size, etag in _entries(page, prefix, under, bucket, self.where):
                if name in found:
                    raise SourceError(f"listing s3://{bucket}/{prefix} at {self.where} failed: "
                                      f"{name} is listed twice")
                found[name] = (name, size, etag)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated"):
                return list(found.values())
            if not token:
                raise SourceError(f"listing s3://{bucket}/{prefix} at {self.where} failed: a "
                                  f"truncated page without a continuation token")

    async def _list_page(self, bucket: str, prefix: str, token: str | None) -> dict:
        args = {"Bucket": bucket, "Prefix": prefix}
        if token:
            args["ContinuationToken"] = token

        async def once(progress: Progress) -> dict:
            page = await self._client.list_objects_v2(**args)
            progress.mark()
            return page

        try:
            page = await self.hedging.race(once, f"listing s3://{bucket}/{prefix}")
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._error("listing", bucket, prefix, exc) from exc
        except (ValueError, KeyError, TypeError) as exc:  # a field botocore could not parse
            raise SourceError(f"listing s3://{bucket}/{prefix} at {self.where} failed: a "
                              f"malformed answer ({type(exc).__name__}: {exc})") from exc
        if "IsTruncated" not in page:  # botocore parses anything, an HTML page too
            raise SourceError(f"listing s3://{bucket}/{prefix} at {self.where} failed: "
                              f"{_not_s3(page)}")
        self.health.answered()
        return page

    async def get_blocks(self, bucket: str, key: str, start: int, length: int,
                         block_size: int, into: list[memoryview] | None = None) -> Blocks:
        """Exactly length bytes of an object from start, as blocks of block_size (the last may
        be shorter), with their MD5 when they are the whole object; anything shorter or longer
        is an error.

        into: where to put the blocks (a writable view of block_size bytes for each); the blocks
        returned are then views of it. The first attempt of a race writes there as the bytes
        arrive; a second one, racing it, into bytes of its own, copied there if it wins, so
        that a loser never overwrites the winner's bytes.

        botocore retries failed requests (5xx, throttling, refused or reset connections); a body
        cut short or broken after the response began is retried here, with backoff and jitter;
        and a request that stops delivering is raced by a second one (hedge.py).
        """
        failure = SourceError(f"reading s3://{bucket}/{key} at {self.where}: no attempt made")
        for attempt in range(BODY_ATTEMPTS):
            if attempt:
                await asyncio.sleep(random.uniform(0, 0.2 * 2**attempt))
            places = [into]  # the first attempt of this race takes them

            def one_attempt(progress: Progress) -> Awaitable[Blocks]:
                mine = places.pop() if places else None
                return self._get_once(bucket, key, start, length, block_size, progress, mine)

            try:
                blocks = await self.hedging.race(one_attempt,
                                                 f"reading s3://{bucket}/{key} at {start}")
            except _BodyFailed as exc:
                failure = exc.error
                continue
            if into is None or not blocks or isinstance(blocks[0], memoryview):
                return blocks
            placed = Blocks(view[:len(block)] for view, block in zip(into, blocks))
            for view, block in zip(placed, blocks):
                view[:] = block
            placed.md5 = blocks.md5
            return placed
        raise failure

    async def _get_once(self, bucket: str, key: str, start: int, length: int, block_size: int,
                        progress: Progress, into: list[memoryview] | None) -> Blocks:
        """One GET of the range; _BodyFailed where another attempt may succeed.

        The body is read block by block, so each block is assembled once from what the socket
        delivered: reading it whole and cutting it into blocks afterwards copied every byte of
        a large read once more (~12 % of a cold 1 GiB read at 20 ms)."""
        last = start + length - 1
        try:
            answer = await self._gets.open(bucket, key, start, last)
        except (HTTPError, BotoCoreError) as exc:
            raise self._error("reading", bucket, key, exc) from exc
        progress.mark()
        self.hedging.first_byte(progress.since_start())
        self.health.answered()
        async with answer:
            # S3 answers a ranged GET with that range (206, Content-Range). A 200 without one is
            # the whole object, right only for a range from 0, and only from S3: a web page from
            # a proxy or login portal comes that way too.
            answered = answer.headers.get("Content-Range")
            kind = answer.headers.get("Content-Type", "no content type")
            if "html" in kind:
                raise SourceError(f"reading s3://{bucket}/{key} at {self.where} failed: "
                                  f"{html_page(kind)}")
            if answered is None and start > 0:
                raise SourceError(f"reading s3://{bucket}/{key} at {self.where} failed: the "
                                  f"endpoint answered a ranged read without the range (no "
                                  f"Content-Range)")
            if answered is not None and not answered.startswith(f"bytes {start}-{last}/"):
                raise SourceError(f"reading s3://{bucket}/{key} at {self.where} failed: the "
                                  f"endpoint answered with {answered}, not the range asked for")
            # The whole object: hashed as it arrives, for the ETag check (data_cache/fetch.py).
            whole = start == 0 and (answered is None or answered.endswith(f"/{length}"))
            try:
                blocks = await _read_blocks(answer.content, length, block_size, progress,
                                            hashlib.md5() if whole else None, into)
                longer = bool(await answer.content.read(1))  # not the rest of what may be a lot
            except (aiohttp.ClientError, asyncio.IncompleteReadError, OSError,
                    TimeoutError) as exc:
                raise _BodyFailed(self._error("reading", bucket, key, exc)) from exc
        received = sum(map(len, blocks))
        if received != length or longer:
            raise _BodyFailed(SourceError(
                f"reading s3://{bucket}/{key} at {self.where} returned "
                f"{'more than ' if longer else ''}{received} bytes for a range of {length}"))
        return blocks


def _parts(expected: int, connections: int) -> tuple[str, ...]:
    """The name prefixes to list a series of expected objects by: those that take the fewest
    rounds of requests over the listing connections (a part is listed page after page), the
    fewer parts if both take as many. 256 parts of the 91,980-file series over 16 connections
    were 16 rounds of one page each; 16 parts are 6 rounds of full pages, and 160 fewer
    requests to send and answer."""
    def rounds(parts: tuple[str, ...]) -> int:
        return -(-len(parts) // connections) * -(-expected // (len(parts) * PAGE))

    return min((PARTS_SMALL, PARTS_LARGE), key=rounds)


def _hold_for_backoff(attempts: int, operation, response=None, caught_exception=None,
                      request_dict=None, **_) -> None:
    """botocore asks whether to retry each answer of a listing: the attempt may now sleep up to
    the longest back-off of botocore's rules before its next try (the jitter is botocore's own,
    unseen here). An answer that is not retried ends the attempt at once, so the hold never
    delays a hedge that matters."""
    http, parsed = response if response else (None, None)
    backing_off(_LONGEST_BACKOFF.delay_amount(RetryContext(
        attempts, operation_model=operation, http_response=http, parsed_response=parsed,
        caught_exception=caught_exception,
        request_context=(request_dict or {}).get("context", {}))))


class _BodyFailed(Exception):
    """A body cut short, too long or broken after the answer began: worth another attempt."""

    def __init__(self, error: SourceError) -> None:
        super().__init__(str(error))
        self.error = error


async def _read_blocks(body, length: int, block_size: int, progress: Progress,
                       digest=None, into: list[memoryview] | None = None) -> Blocks:
    """Up to length bytes of body in blocks of block_size (fewer if the body ends early), and
    their MD5 if digest is given; into: views to write the blocks into, one per block."""
    blocks = Blocks()
    for index, at in enumerate(range(0, length, block_size)):
        need = min(block_size, length - at)
        view, parts, filled = into[index] if into else None, [], 0
        while need and (chunk := await body.read(need)):
            progress.mark()
            if digest is not None:
                digest.update(chunk)
            if view is None:
                parts.append(chunk)
            else:
                view[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
            need -= len(chunk)
        blocks.append(b"".join(parts) if view is None else view[:filled])
        if need:
            break
    if digest is not None:
        blocks.md5 = digest.hexdigest()
    return blocks


def _entries(page: dict, prefix: str, under: str, bucket: str, where: str):
    """(name below prefix, size, ETag) of a listing page's objects, each checked: a key under
    what was listed, a size that is a number of bytes. A key equal to the prefix (a folder
    marker) is no file."""
    for obj in page.get("Contents", ()):
        key, size = obj.get("Key"), obj.get("Size")
        if not isinstance(key, str) or not key.startswith(under):
            raise SourceError(f"listing s3://{bucket}/{prefix} at {where} failed: a key outside "
                              f"the prefix ({key!r})")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise SourceError(f"listing s3://{bucket}/{prefix} at {where} failed: {key} has no "
                              f"size in bytes ({size!r})")
        if key != prefix:
            etag = obj.get("ETag")
            yield key[len(prefix):], size, etag.strip('"') if isinstance(etag, str) else ""


def _not_s3(response: dict) -> str:
    """Why an answer that HTTP calls a success is not the S3 answer asked for."""
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    kind = headers.get("content-type", "no content type")
    if "html" in kind:
        return html_page(kind)
    if "ContentRange" in response:
        return f"the endpoint answered with {response['ContentRange']}, not the range asked for"
    if "Body" in response:
        return "the endpoint answered a ranged read without the range (no Content-Range)"
    return not_s3(kind)
