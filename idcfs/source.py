"""The object source: IDC's buckets over the S3 API (AWS, GCS's XML API, or any endpoint).

Runs on asyncio (aiobotocore's loop, see bridge.py). Every request is unsigned: botocore is given
`signature_version=UNSIGNED`, which also stops it from looking up credentials at all, so no key
from the environment or ~/.aws is ever read or sent to a public bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import aiohttp

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import UNSIGNED, __version__ as botocore_version
from botocore.exceptions import BotoCoreError, ClientError

from . import __version__

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
BODY_ATTEMPTS = 3


def _raw_timestamp(value: str) -> str:
    return value


class SourceError(Exception):
    """A request to the object store failed; the message names endpoint, bucket, key and cause."""


class ObjectSource:
    """Listing and ranged reads of immutable objects; one connection pool per mount."""

    def __init__(self, endpoint_url: str | None, max_connections: int = 64) -> None:
        self.endpoint_url = endpoint_url
        self.max_connections = max_connections
        self._stack = contextlib.AsyncExitStack()
        self._client = None

    @property
    def where(self) -> str:
        return self.endpoint_url or "https://s3.amazonaws.com"

    async def start(self) -> None:
        config = AioConfig(
            signature_version=UNSIGNED,
            max_pool_connections=self.max_connections,
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=30,
            s3={"addressing_style": "path"} if self.endpoint_url else None,
            # A fixed User-Agent names idcfs to the endpoint's operators, and spares botocore
            # composing its own twice per request from a dozen sanitised parts (~12 % of its CPU
            # per GetObject, measured with cProfile over a series of 292 GETs).
            user_agent=f"idcfs/{__version__} botocore/{botocore_version}",
        )
        session = get_session()
        # Timestamps in responses (Last-Modified) are never used; botocore would parse each one
        # with dateutil, about a fifth of its CPU per GetObject. Keep them as the raw text.
        session.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=_raw_timestamp
        )
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "s3", region_name=DEFAULT_REGION, endpoint_url=self.endpoint_url, config=config
            )
        )

    async def close(self) -> None:
        await self._stack.aclose()

    def _error(self, what: str, bucket: str, key: str, exc: Exception) -> SourceError:
        if isinstance(exc, ClientError):
            meta = exc.response.get("ResponseMetadata", {})
            code = exc.response.get("Error", {}).get("Code", "?")
            cause = f"HTTP {meta.get('HTTPStatusCode', '?')} {code}"
        else:
            cause = f"{type(exc).__name__}: {exc}"
        return SourceError(f"{what} s3://{bucket}/{key} at {self.where} failed: {cause}")

    async def list_series(self, bucket: str, prefix: str) -> list[tuple[str, int, str]]:
        """Every object under prefix as (name below the prefix, size, ETag), in key order."""
        found: list[tuple[str, int, str]] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                if "IsTruncated" not in page:  # botocore parses anything, an HTML page too
                    raise SourceError(f"listing s3://{bucket}/{prefix} at {self.where} failed: "
                                      f"{_not_s3(page)}")
                for obj in page.get("Contents", ()):
                    found.append((obj["Key"][len(prefix):], int(obj["Size"]),
                                  obj.get("ETag", "").strip('"')))
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._error("listing", bucket, prefix, exc) from exc
        if not found:  # every series has files: an empty answer must not be kept as its listing
            raise SourceError(f"listing s3://{bucket}/{prefix} at {self.where}: no objects there "
                              f"(is the endpoint or --source right for this index?)")
        return found

    async def get_blocks(self, bucket: str, key: str, start: int, length: int,
                         block_size: int) -> list[bytes]:
        """Exactly length bytes of an object from start, as blocks of block_size (the last may
        be shorter); anything shorter or longer is an error.

        The body is read block by block, so each block is assembled once from what the socket
        delivered: reading it whole and cutting it into blocks afterwards copied every byte of
        a large read once more (~12 % of a cold 1 GiB read at 20 ms).

        botocore retries failed requests (5xx, throttling, refused or reset connections); a body
        cut short or broken after the response began is retried here, with backoff and jitter.
        """
        failure = SourceError(f"reading s3://{bucket}/{key} at {self.where}: no attempt made")
        for attempt in range(BODY_ATTEMPTS):
            if attempt:
                await asyncio.sleep(random.uniform(0, 0.2 * 2**attempt))
            try:
                resp = await self._client.get_object(
                    Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
                )
                async with resp["Body"] as body:
                    blocks = await _read_blocks(body, length, block_size)
                    longer = bool(await body.read(1))  # and not the rest of what may be a lot
            except (ClientError, BotoCoreError) as exc:
                raise self._error("reading", bucket, key, exc) from exc
            except (aiohttp.ClientError, asyncio.IncompleteReadError, OSError, TimeoutError) as exc:
                failure = self._error("reading", bucket, key, exc)
                continue
            # S3 answers a ranged GET with that range (206, Content-Range). A 200 without one is
            # the whole object, right only for a range from 0, and only from S3: a web page from
            # a proxy or login portal comes that way too.
            answered = resp.get("ContentRange")
            if (answered is None and (start > 0 or "html" in resp.get("ContentType", ""))
                    or answered is not None
                    and not answered.startswith(f"bytes {start}-{start + length - 1}/")):
                raise SourceError(f"reading s3://{bucket}/{key} at {self.where} failed: "
                                  f"{_not_s3(resp)}")
            received = sum(map(len, blocks))
            if received == length and not longer:
                return blocks
            failure = SourceError(f"reading s3://{bucket}/{key} at {self.where} returned "
                                  f"{'more than ' if longer else ''}{received} bytes for a "
                                  f"range of {length}")
        raise failure


async def _read_blocks(body, length: int, block_size: int) -> list[bytes]:
    """Up to length bytes of body in blocks of block_size; fewer if the body ends early."""
    blocks = []
    for at in range(0, length, block_size):
        need, parts = min(block_size, length - at), []
        while need and (chunk := await body.read(need)):
            parts.append(chunk)
            need -= len(chunk)
        blocks.append(b"".join(parts))
        if need:
            break
    return blocks


def _not_s3(response: dict) -> str:
    """Why an answer that HTTP calls a success is not the S3 answer asked for."""
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    kind = headers.get("content-type", "no content type")
    if "html" in kind:
        return f"the endpoint answered with an HTML page ({kind}), not S3: a proxy or login page?"
    if "ContentRange" in response:
        return f"the endpoint answered with {response['ContentRange']}, not the range asked for"
    if "Body" in response:
        return "the endpoint answered a ranged read without the range (no Content-Range)"
    return f"the endpoint's answer ({kind}) is not an S3 response"
