"""A mount's endpoint check: one unsigned listing of one key, on the standard library alone.

A mount says whether its endpoint answers before it reports ready, so that a wrong
--endpoint-url, a proxy or a network that inspects TLS is said at mount and not at the first
read. The S3 client (botocore, aiobotocore and aiohttp, with botocore's service models) costs
~0.4 s of every mount to import and make; the check does without it, with the same trust
(trust.py), proxies (HTTPS_PROXY/HTTP_PROXY, NO_PROXY, read as aiohttp reads them), User-Agent
and words for what went wrong (endpoint.py), and the daemon makes the S3 client once the mount
is ready. Blocking: run it in a thread.
"""

from __future__ import annotations

import http.client
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from urllib.parse import unquote, urlencode, urlsplit
from xml.etree import ElementTree

from botocore.exceptions import ProxyConnectionError

from .endpoint import (ERROR_BODY_LIMIT, describe, endpoint_name, error_of, html_page,
                       is_connection_failure, not_s3, object_url)
from .trust import tls_context, user_agent


@dataclass(frozen=True)
class Verdict:
    """problem: None if the endpoint answers a listing as S3 does, else one line saying what is
    wrong; unreachable: whether no answer came at all (the endpoint's health)."""

    problem: str | None
    unreachable: bool = False


def check(endpoint_url: str | None, ca_bundle: str | None, bucket: str, prefix: str,
          timeout: float = 5.0) -> Verdict:
    """One ListObjectsV2 of one key under prefix, one attempt (a retry's back-off after a
    refused connection would outlast the bound), each step bounded to timeout; the caller
    bounds the whole (timed_out)."""
    url = urlsplit(object_url(endpoint_url, bucket, ""))
    target = (url.path or "/") + "?" + urlencode(
        {"list-type": "2", "max-keys": "1", "prefix": prefix})
    proxy = _proxy(url)
    try:
        connection = _connection(url, proxy, ca_bundle, timeout)
        try:
            if proxy and url.scheme == "http":  # a plain-HTTP proxy is asked for the whole URL
                target = f"{url.scheme}://{url.netloc}{target}"
            connection.request("GET", target, headers={"User-Agent": user_agent(),
                                                       "Accept-Encoding": "identity"})
            answer = connection.getresponse()
            body = answer.read(ERROR_BODY_LIMIT)
            status, kind = answer.status, answer.getheader("Content-Type", "no content type")
        finally:
            connection.close()
    except TimeoutError:
        return timed_out(endpoint_url, timeout)
    except (OSError, http.client.HTTPException) as exc:
        failure = exc
        if proxy and _at_proxy(exc):
            failure = ProxyConnectionError(proxy_url=proxy.geturl(), error=exc)
        return Verdict(describe(failure, url.geturl()),
                       unreachable=is_connection_failure(failure))
    if status >= 300:
        code, _ = error_of(body, status)
        return Verdict(f"{endpoint_name(endpoint_url)} answered HTTP {status} {code}")
    if "html" in kind:
        return Verdict(f"{endpoint_name(endpoint_url)} does not answer as S3 does: "
                       f"{html_page(kind)}")
    if not _is_listing(body):
        return Verdict(f"{endpoint_name(endpoint_url)} does not answer as S3 does: "
                       f"{not_s3(kind)}")
    return Verdict(None)


def timed_out(endpoint_url: str | None, timeout: float) -> Verdict:
    return Verdict(f"no answer from {endpoint_name(endpoint_url)} within {timeout:g} s",
                   unreachable=True)


def _proxy(url):
    """The proxy for url's host from the environment, or None (urllib's reading of it, which is
    also aiohttp's)."""
    if urllib.request.proxy_bypass(url.hostname or ""):
        return None
    proxy = urllib.request.getproxies().get(url.scheme)
    return urlsplit(proxy if "://" in proxy else f"http://{proxy}") if proxy else None


def _connection(url, proxy, ca_bundle: str | None, timeout: float) -> http.client.HTTPConnection:
    """A connection to url's host, through the proxy if there is one (a CONNECT tunnel for
    HTTPS)."""
    port = url.port or (443 if url.scheme == "https" else 80)
    if proxy is None:
        if url.scheme == "https":
            return http.client.HTTPSConnection(url.hostname, port, timeout=timeout,
                                               context=tls_context(ca_bundle))
        return http.client.HTTPConnection(url.hostname, port, timeout=timeout)
    proxy_port = proxy.port or 80
    if url.scheme != "https":
        return http.client.HTTPConnection(proxy.hostname, proxy_port, timeout=timeout)
    connection = http.client.HTTPSConnection(proxy.hostname, proxy_port, timeout=timeout,
                                             context=tls_context(ca_bundle))
    headers = {}
    if proxy.username:
        credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + b64encode(credentials.encode()).decode()
    connection.set_tunnel(url.hostname, port, headers=headers)
    return connection


def _at_proxy(exc: BaseException) -> bool:
    """Whether the failure was reaching the proxy itself (not the endpoint behind it)."""
    return isinstance(exc, (ConnectionRefusedError, ConnectionResetError)) or \
        "Tunnel connection failed" in str(exc)


def _is_listing(body: bytes) -> bool:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return False
    ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    return root.tag == ns + "ListBucketResult" and root.find(ns + "IsTruncated") is not None
