"""A mount's endpoint check: one unsigned listing of one key, on aiohttp alone.

A mount says whether its endpoint answers before it reports ready, so that a wrong
--endpoint-url, a proxy or a network that inspects TLS is said at mount and not at the first
read. botocore, the S3 client of listings, costs ~0.3 s of every mount to import and to load its
service models; the check does without it, with what the GETs use (get.py: the same trust,
proxies, User-Agent and error names), and the daemon makes the S3 client once the mount is ready.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from xml.etree import ElementTree

import aiohttp

from .endpoint import describe, is_connection_failure
from .get import ERROR_BODY_LIMIT, as_botocore, error_of, object_url, proxy_for
from .trust import tls_context, user_agent


@dataclass(frozen=True)
class Verdict:
    """problem: None if the endpoint answers a listing as S3 does, else one line saying what is
    wrong; unreachable: whether no answer came at all (the endpoint's health)."""

    problem: str | None
    unreachable: bool = False


async def check(endpoint_url: str | None, ca_bundle: str | None, bucket: str, prefix: str,
                timeout: float = 5.0) -> Verdict:
    """One ListObjectsV2 of one key under prefix, one attempt, bounded to timeout (a retry's
    back-off after a refused connection would outlast the bound)."""
    where = endpoint_url or "https://s3.amazonaws.com"
    url = object_url(endpoint_url, bucket, "").with_query(
        {"list-type": "2", "prefix": prefix, "max-keys": "1"})
    proxy, proxy_auth = proxy_for(url)
    try:
        async with asyncio.timeout(timeout), aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1, ssl=tls_context(ca_bundle)),
                headers={"User-Agent": user_agent(), "Accept-Encoding": "identity"},
                auto_decompress=False) as session, \
                session.get(url, proxy=proxy, proxy_auth=proxy_auth) as answer:
            body = await answer.content.read(ERROR_BODY_LIMIT)
            status, kind = answer.status, answer.headers.get("Content-Type", "no content type")
    except TimeoutError:
        return Verdict(f"no answer from {where} within {timeout:g} s", unreachable=True)
    except (aiohttp.ClientError, OSError) as exc:
        failure = as_botocore(exc, str(url))
        return Verdict(describe(failure, where), unreachable=is_connection_failure(failure))
    if status >= 300:
        code, _ = error_of(body, status)
        return Verdict(f"{where} answered HTTP {status} {code}")
    if "html" in kind:
        return Verdict(f"{where} does not answer as S3 does: the endpoint answered with an HTML "
                       f"page ({kind}), not S3: a proxy or login page?")
    if not _is_listing(body):
        return Verdict(f"{where} does not answer as S3 does: the endpoint's answer ({kind}) is "
                       f"not an S3 response")
    return Verdict(None)


def _is_listing(body: bytes) -> bool:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return False
    ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    return root.tag == ns + "ListBucketResult" and root.find(ns + "IsTruncated") is not None
