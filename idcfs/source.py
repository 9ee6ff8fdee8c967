"""The object source: IDC's buckets over the S3 API (AWS, GCS's XML API, or any endpoint).

Runs on asyncio (aiobotocore's loop, see bridge.py). Every request is unsigned: botocore is given
`signature_version=UNSIGNED`, which also stops it from looking up credentials at all, so no key
from the environment or ~/.aws is ever read or sent to a public bucket; and the session reads no
AWS configuration at all (see isolated_session). TLS trusts the system's certificate store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl

import aiohttp
import truststore
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession
from botocore import UNSIGNED, __version__ as botocore_version
from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES, ConstantProvider
from botocore.exceptions import BotoCoreError, ClientError

from . import __version__
from .errors import SourceError
from .endpoint import Health, describe, is_connection_failure
from .hedge import Hedging, Progress

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
BODY_ATTEMPTS = 3


def _raw_timestamp(value: str) -> str:
    return value


class _SystemTrust(AIOHTTPSession):
    """aiobotocore's HTTP session, trusting the system's certificate store as well as
    botocore's own bundle (botocore alone trusts only its bundle, so on a network that inspects
    TLS, whose root certificate is in the system store, every request failed). With a CA bundle
    given (--ca-bundle, AWS_CA_BUNDLE), that bundle alone is trusted, as botocore does."""

    def _get_ssl_context(self) -> ssl.SSLContext:
        if self._verify is True:
            return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        return super()._get_ssl_context()


def isolated_session() -> AioSession:
    """A botocore session that reads no AWS configuration: no profile, no config or credentials
    file, no AWS_* variable. An unsigned client of public buckets needs none of it, and each of
    them could send every request elsewhere (AWS_ENDPOINT_URL, endpoint_url, accelerate, FIPS,
    dual-stack) or stop the mount (AWS_PROFILE naming a missing profile, a malformed
    ~/.aws/config). Only idcfs's own options decide where requests go."""
    session = AioSession()
    store = session.get_component("config_store")
    for name, (_, _, default, _) in BOTOCORE_DEFAUT_SESSION_VARIABLES.items():
        store.set_config_provider(name, ConstantProvider(default))
    for name in ("config_file", "credentials_file"):
        store.set_config_provider(name, ConstantProvider(os.devnull))
    for section in ("s3", "proxies_config"):  # from the config file and AWS_S3_* variables
        store.set_config_provider(section, ConstantProvider({}))
    # Timestamps in responses (Last-Modified) are never used; botocore would parse each one
    # with dateutil, about a fifth of its CPU per GetObject. Keep them as the raw text.
    session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=_raw_timestamp
    )
    return session


class ObjectSource:
    """Listing and ranged reads of immutable objects; one connection pool per mount.

    ca_bundle: a PEM file of the only CAs to trust; None trusts the system's store (and
    botocore's bundle)."""

    def __init__(self, endpoint_url: str | None, max_connections: int = 64,
                 ca_bundle: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        self.max_connections = max_connections
        self.ca_bundle = ca_bundle
        self.health = Health()
        self.hedging = Hedging()
        self._session = isolated_session()
        self._stack = contextlib.AsyncExitStack()
        self._client = None

    @property
    def where(self) -> str:
        return self.endpoint_url or "https://s3.amazonaws.com"

    def _client_for(self, attempts: int, connect_timeout: float, read_timeout: float):
        config = AioConfig(
            signature_version=UNSIGNED,
            max_pool_connections=self.max_connections,
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": "path" if self.endpoint_url else "auto",
                "use_accelerate_endpoint": False, "us_east_1_regional_endpoint": "legacy"},
            use_fips_endpoint=False,
            use_dualstack_endpoint=False,
            ignore_configured_endpoint_urls=True,
            # No flexible checksums: botocore would send x-amz-checksum-mode on every GET (some
            # S3-compatible endpoints refuse it) and, with awscrt installed, check the CRC32C
            # of each answer, which GCS gives for the whole object on a ranged answer, so that
            # every ranged read from GCS failed. idcfs checks lengths, ranges and ETags itself.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            http_session_cls=_SystemTrust,
            # A fixed User-Agent names idcfs to the endpoint's operators, and spares botocore
            # composing its own twice per request from a dozen sanitised parts (~12 % of its CPU
            # per GetObject, measured with cProfile over a series of 292 GETs).
            user_agent=f"idcfs/{__version__} botocore/{botocore_version}",
        )
        return self._session.create_client("s3", region_name=DEFAULT_REGION,
                                           endpoint_url=self.endpoint_url, config=config,
                                           verify=self.ca_bundle or True)

    async def start(self) -> None:
        self._client = await self._stack.enter_async_context(
            self._client_for(attempts=3, connect_timeout=10, read_timeout=30))

    async def close(self) -> None:
        await self._stack.aclose()

    def _error(self, what: str, bucket: str, key: str, exc: Exception) -> SourceError:
        if is_connection_failure(exc):
            self.health.failed(describe(exc, self.where))
        else:
            self.health.answered()
        return SourceError(f"{what} s3://{bucket}/{key} at {self.where} failed: "
                           f"{describe(exc, self.where)}")

    async def check(self, bucket: str, prefix: str, timeout: float = 5.0) -> str | None:
        """One cheap request (a listing of one key), bounded to timeout: None if the endpoint
        answers as S3 does, else one line saying what is wrong."""
        try:
            async with asyncio.timeout(timeout):
                # A client of its own that does not retry: botocore's backoff between retries
                # of a refused connection would outlast the bound.
                async with self._client_for(1, timeout, timeout) as client:
                    page = await client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        except TimeoutError:
            problem = f"no answer from {self.where} within {timeout:g} s"
            self.health.failed(problem)
            return problem
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
            problem = describe(exc, self.where)
            if is_connection_failure(exc):
                self.health.failed(problem)
            return f"{self.where} answered {problem}" if isinstance(exc, ClientError) else problem
        if "IsTruncated" not in page:
            return f"{self.where} does not answer as S3 does: {_not_s3(page)}"
        self.health.answered()
        return None

    async def list_series(self, bucket: str, prefix: str) -> list[tuple[str, int, str]]:
        """Every object under prefix as (name below the prefix, size, ETag), in key order.

        Page after page, each raced by a second request if it stalls; an answer that is not a
        well-formed listing of that prefix (a web page, garbage in a field, keys outside the
        prefix or twice) is an error naming the series, never a listing."""
        found: dict[str, tuple[str, int, str]] = {}
        token: str | None = None
        while True:
            page = await self._list_page(bucket, prefix, token)
            for name, size, etag in _entries(page, prefix, bucket, self.where):
                if name in found:
                    raise SourceError(f"listing s3://{bucket}/{prefix} at {self.where} failed: "
                                      f"{name} is listed twice")
                found[name] = (name, size, etag)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated"):
                break
            if not token:
                raise SourceError(f"listing s3://{bucket}/{prefix} at {self.where} failed: a "
                                  f"truncated page without a continuation token")
        if not found:  # every series has files: an empty answer must not be kept as its listing
            raise SourceError(f"listing s3://{bucket}/{prefix} at {self.where}: no objects there "
                              f"(is the endpoint or --source right for this index?)")
        return sorted(found.values())

    async def _list_page(self, bucket: str, prefix: str, token: str | None) -> dict:
        args = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}

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
                         block_size: int) -> list[bytes]:
        """Exactly length bytes of an object from start, as blocks of block_size (the last may
        be shorter); anything shorter or longer is an error.

        botocore retries failed requests (5xx, throttling, refused or reset connections); a body
        cut short or broken after the response began is retried here, with backoff and jitter;
        and a request that stops delivering is raced by a second one (hedge.py).
        """
        failure = SourceError(f"reading s3://{bucket}/{key} at {self.where}: no attempt made")
        for attempt in range(BODY_ATTEMPTS):
            if attempt:
                await asyncio.sleep(random.uniform(0, 0.2 * 2**attempt))
            try:
                return await self.hedging.race(
                    lambda progress: self._get_once(bucket, key, start, length, block_size,
                                                    progress),
                    f"reading s3://{bucket}/{key} at {start}")
            except _BodyFailed as exc:
                failure = exc.error
        raise failure

    async def _get_once(self, bucket: str, key: str, start: int, length: int, block_size: int,
                        progress: Progress) -> list[bytes]:
        """One GET of the range; _BodyFailed where another attempt may succeed.

        The body is read block by block, so each block is assembled once from what the socket
        delivered: reading it whole and cutting it into blocks afterwards copied every byte of
        a large read once more (~12 % of a cold 1 GiB read at 20 ms)."""
        last = start + length - 1
        try:
            resp = await self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{last}")
        except (ClientError, BotoCoreError) as exc:
            raise self._error("reading", bucket, key, exc) from exc
        except (ValueError, KeyError, TypeError) as exc:  # headers botocore could not parse
            raise SourceError(f"reading s3://{bucket}/{key} at {self.where} failed: a malformed "
                              f"answer ({type(exc).__name__}: {exc})") from exc
        progress.mark()
        self.hedging.first_byte(progress.since_start())
        self.health.answered()
        async with resp["Body"] as body:
            # S3 answers a ranged GET with that range (206, Content-Range). A 200 without one is
            # the whole object, right only for a range from 0, and only from S3: a web page from
            # a proxy or login portal comes that way too.
            answered = resp.get("ContentRange")
            if (answered is None and (start > 0 or "html" in resp.get("ContentType", ""))
                    or answered is not None and not answered.startswith(f"bytes {start}-{last}/")):
                raise SourceError(f"reading s3://{bucket}/{key} at {self.where} failed: "
                                  f"{_not_s3(resp)}")
            try:
                blocks = await _read_blocks(body, length, block_size, progress)
                longer = bool(await body.read(1))  # and not the rest of what may be a lot
            except (BotoCoreError, aiohttp.ClientError, asyncio.IncompleteReadError, OSError,
                    TimeoutError) as exc:
                raise _BodyFailed(self._error("reading", bucket, key, exc)) from exc
        received = sum(map(len, blocks))
        if received != length or longer:
            raise _BodyFailed(SourceError(
                f"reading s3://{bucket}/{key} at {self.where} returned "
                f"{'more than ' if longer else ''}{received} bytes for a range of {length}"))
        return blocks


class _BodyFailed(Exception):
    """A body cut short, too long or broken after the answer began: worth another attempt."""

    def __init__(self, error: SourceError) -> None:
        super().__init__(str(error))
        self.error = error


async def _read_blocks(body, length: int, block_size: int, progress: Progress) -> list[bytes]:
    """Up to length bytes of body in blocks of block_size; fewer if the body ends early."""
    blocks = []
    for at in range(0, length, block_size):
        need, parts = min(block_size, length - at), []
        while need and (chunk := await body.read(need)):
            progress.mark()
            parts.append(chunk)
            need -= len(chunk)
        blocks.append(b"".join(parts))
        if need:
            break
    return blocks


def _entries(page: dict, prefix: str, bucket: str, where: str):
    """(name, size, ETag) of a listing page's objects, each checked: a key under the prefix, a
    size that is a number of bytes. A key equal to the prefix (a folder marker) is no file."""
    for obj in page.get("Contents", ()):
        key, size = obj.get("Key"), obj.get("Size")
        if not isinstance(key, str) or not key.startswith(prefix):
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
        return f"the endpoint answered with an HTML page ({kind}), not S3: a proxy or login page?"
    if "ContentRange" in response:
        return f"the endpoint answered with {response['ContentRange']}, not the range asked for"
    if "Body" in response:
        return "the endpoint answered a ranged read without the range (no Content-Range)"
    return f"the endpoint's answer ({kind}) is not an S3 response"
