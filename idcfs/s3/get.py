"""Object GETs on aiohttp alone, with botocore's retry rules.

Every request idcfs makes is unsigned, so a GET of an object is a URL and a Range header:
botocore's request pipeline (parameter validation, endpoint rules, event hooks, the response
parser) cost ~1.9 ms of CPU per GET here, more than the rest of a small file's fetch, and its
response object hides the stream it reads from. This sends the same request as botocore would
(path-style at an --endpoint-url, virtual-hosted at AWS; the same User-Agent, no checksum
headers), through a pool with the same trust (trust.tls_context) and proxies (HTTPS_PROXY,
NO_PROXY), and retries exactly as botocore's standard mode does: its own RetryPolicy,
ExponentialBackoff and RetryQuota decide, from the same RetryContext it would build. Listings
stay on botocore, where its parsing earns its cost.
"""

from __future__ import annotations

import asyncio
import urllib.request

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from botocore.retries import quota
from botocore.exceptions import (ConnectionClosedError, ConnectTimeoutError,
                                 EndpointConnectionError, ProxyConnectionError, ReadTimeoutError,
                                 SSLError)
from botocore.retries.standard import (ExponentialBackoff, RetryContext, RetryEventAdapter,
                                       RetryPolicy, RetryQuotaChecker, StandardRetryConditions,
                                       ThrottlingErrorDetector)
from yarl import URL

from .endpoint import ERROR_BODY_LIMIT, error_of, object_url
from .hedge import backing_off
from .trust import tls_context, user_agent

ATTEMPTS = 3  # botocore's standard mode


class HTTPError(Exception):
    """The endpoint answered with an error status (after botocore's retries)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}" + (f" ({message})" if message else ""))
        self.status, self.code = status, code


class _Answer:
    """What RetryContext reads of an HTTP response: its status and headers."""

    def __init__(self, status: int, headers) -> None:
        self.status_code, self.headers = status, headers


class ObjectGets:
    """A pool of connections for object GETs; one per mount."""

    def __init__(self, endpoint_url: str | None, max_connections: int,
                 ca_bundle: str | None = None, connect_timeout: float = 10,
                 read_timeout: float = 30) -> None:
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self._max_connections = max_connections
        self._ca_bundle = ca_bundle
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._operation = None  # botocore's model of GetObject, which its retry rules read
        detector = ThrottlingErrorDetector(RetryEventAdapter())
        self._policy = RetryPolicy(StandardRetryConditions(max_attempts=ATTEMPTS),
                                   ExponentialBackoff(service_name="s3",
                                                      throttling_detector=detector))
        self._quota = RetryQuotaChecker(quota.RetryQuota(), detector)
        self._proxies: dict[tuple[str, str | None], tuple[URL | None, aiohttp.BasicAuth | None]] = {}

    async def start(self, operation_model) -> None:
        """operation_model: botocore's S3 GetObject, for its retry rules."""
        self._operation = operation_model
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections,
                                           ssl=tls_context(self._ca_bundle)),
            timeout=self._timeout, auto_decompress=False,
            headers={"User-Agent": user_agent(), "Accept-Encoding": "identity"},
            skip_auto_headers=("Content-Type",))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _proxy(self, url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """HTTPS_PROXY/HTTP_PROXY and NO_PROXY for url's host, read once per host: aiohttp's
        trust_env reads them, and ~/.netrc in a thread, on every request."""
        host = (url.scheme, url.host)
        if host not in self._proxies:
            try:
                self._proxies[host] = get_env_proxy_for_url(url)
            except LookupError:
                self._proxies[host] = (None, None)
        return self._proxies[host]

    def url(self, bucket: str, key: str) -> URL:
        return URL(object_url(self.endpoint_url, bucket, key), encoded=True)

    async def open(self, bucket: str, key: str, start: int, last: int) -> aiohttp.ClientResponse:
        """The answer to GET bytes start..last (headers read, body not), after the retries
        botocore would make; HTTPError or a connection error (as botocore names it) if none
        succeeds. The caller reads the body and releases the answer."""
        url = self.url(bucket, key)
        request_context: dict = {}
        attempt = 1
        while True:
            try:
                proxy, proxy_auth = self._proxy(url)
                answer = await self._session.get(url, headers={"Range": f"bytes={start}-{last}"},
                                                 proxy=proxy, proxy_auth=proxy_auth)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                failure: Exception = _as_botocore(exc, str(url))
                context = RetryContext(attempt, operation_model=self._operation,
                                       caught_exception=failure, request_context=request_context)
            else:
                if answer.status < 300:
                    self._quota.release_retry_quota(request_context, _Answer(answer.status, {}))
                    return answer
                body = await _small_body(answer)
                code, message = error_of(body, answer.status)
                failure = HTTPError(answer.status, code, message)
                context = RetryContext(attempt, operation_model=self._operation,
                                       parsed_response={"Error": {"Code": code}},
                                       http_response=_Answer(answer.status, answer.headers),
                                       request_context=request_context)
            retry = self._policy.should_retry(context)
            if not (retry and self._quota.acquire_retry_quota(context)):
                raise failure
            delay = self._policy.compute_retry_delay(context)
            backing_off(delay)
            await asyncio.sleep(delay)
            attempt += 1


async def _small_body(answer: aiohttp.ClientResponse) -> bytes:
    try:
        return await answer.content.read(ERROR_BODY_LIMIT)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        return b""
    finally:
        answer.release()


def _as_botocore(exc: BaseException, url: str) -> Exception:
    """The botocore exception its HTTP layer raises for what aiohttp raised: what its retry
    rules classify, and what endpoint.describe explains."""
    if isinstance(exc, aiohttp.ClientSSLError):
        return SSLError(endpoint_url=url, error=exc)
    if isinstance(exc, (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)):
        proxy = urllib.request.getproxies().get(URL(url).scheme, "the proxy")
        return ProxyConnectionError(proxy_url=proxy, error=exc)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return ConnectionClosedError(endpoint_url=url, error=exc)
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        kind = ConnectTimeoutError if str(exc).lower().startswith("connect") else ReadTimeoutError
        return kind(endpoint_url=url, error=exc)
    return EndpointConnectionError(endpoint_url=url, error=exc)
