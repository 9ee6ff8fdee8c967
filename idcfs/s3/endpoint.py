"""Why a request to the object store failed, in words a person can act on, and how it is doing.

botocore wraps what went wrong on the wire (a name that does not resolve, a refused connection, a
certificate nobody vouches for, a proxy that is down) in exceptions whose text is a URL and a repr.
`describe` digs out the cause and names the fix where there is one: a certificate that is not
trusted is almost always a network that inspects TLS, whose root belongs in the system store.
"""

from __future__ import annotations

import re
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from urllib.parse import quote, urlparse

from botocore.exceptions import (BotoCoreError, ClientError, ConnectTimeoutError,
                                 EndpointConnectionError, ProxyConnectionError, ReadTimeoutError,
                                 SSLError)

AWS = "https://s3.amazonaws.com"  # where requests go without --endpoint-url
ERROR_BODY_LIMIT = 64 << 10  # what is read of an error document, at most
_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,512})</Message>")

TRUST_HINT = ("if this network inspects TLS, add its root certificate to the system's store "
              "(Debian: copy it to /usr/local/share/ca-certificates/ and run "
              "update-ca-certificates) or give --ca-bundle FILE")


def _causes(exc: BaseException):
    """exc, what botocore wrapped in it, and their causes and contexts."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        kwargs = getattr(e, "kwargs", None)
        inner = kwargs.get("error") if isinstance(kwargs, dict) else None
        todo += [inner, e.__cause__, e.__context__, getattr(e, "os_error", None),
                 getattr(e, "certificate_error", None)]


def _find(exc: BaseException, kind: type | tuple[type, ...]):
    return next((e for e in _causes(exc) if isinstance(e, kind)), None)


def describe(exc: BaseException, url: str) -> str:
    """One line saying what went wrong talking to url (the endpoint; the request's own URL, where
    botocore kept it, names the host that was tried)."""
    url = next((e.kwargs["endpoint_url"] for e in _causes(exc)
                if isinstance(getattr(e, "kwargs", None), dict) and e.kwargs.get("endpoint_url")),
               url)
    host = urlparse(url).netloc or url
    if isinstance(exc, ClientError):
        meta = exc.response.get("ResponseMetadata", {})
        code = exc.response.get("Error", {}).get("Code", "?")
        return f"HTTP {meta.get('HTTPStatusCode', '?')} {code}"
    if hasattr(exc, "status") and hasattr(exc, "code"):  # get.HTTPError
        return str(exc)
    cert = (_find(exc, ssl.SSLCertVerificationError)
            or _find(exc, _aiohttp("ClientConnectorCertificateError")))
    if cert is not None:
        reason = getattr(cert, "verify_message", None) or str(cert)
        return f"the certificate of {host} is not trusted ({reason}): {TRUST_HINT}"
    if isinstance(exc, ProxyConnectionError) or _find(exc, _aiohttp("ClientProxyConnectionError")):
        proxy = getattr(exc, "kwargs", {}).get("proxy_url", "the proxy")
        return (f"cannot connect through the proxy {proxy} (HTTPS_PROXY/HTTP_PROXY; NO_PROXY "
                f"lists hosts reached directly): {_innermost(exc)}")
    if _find(exc, _aiohttp("ClientHttpProxyError")) is not None:
        return f"the proxy refused to connect to {host}: {_innermost(exc)}"
    if _find(exc, socket.gaierror) is not None or _find(exc, _dns_error()) is not None:
        return (f"cannot resolve {urlparse(url).hostname or host}: no network or no DNS here, or a "
                f"wrong --endpoint-url")
    if _find(exc, ConnectionRefusedError) is not None:
        return f"{host} refused the connection (nothing listens there: a wrong --endpoint-url?)"
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError, TimeoutError)) \
            or _find(exc, (TimeoutError, ConnectTimeoutError, ReadTimeoutError)) is not None:
        return f"no answer from {host} in time (a firewall dropping the connection, or no route)"
    if isinstance(exc, SSLError) or _find(exc, ssl.SSLError) is not None:
        return f"TLS with {host} failed: {_innermost(exc)}"
    if isinstance(exc, EndpointConnectionError):
        return f"cannot connect to {host}: {_innermost(exc)}"
    if isinstance(exc, BotoCoreError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _dns_error() -> tuple[type, ...]:
    return _aiohttp("ClientConnectorDNSError") or (socket.gaierror,)


def _aiohttp(name: str) -> tuple[type, ...]:
    """aiohttp's exception class of that name, if aiohttp is loaded: no exception can be one of
    its own before (the endpoint check, check.py, runs on the standard library)."""
    module = sys.modules.get("aiohttp")
    kind = getattr(module, name, None)
    return (kind,) if isinstance(kind, type) else ()


def _innermost(exc: BaseException) -> str:
    """The text of the deepest cause: the one that says what the socket said."""
    last = exc
    for e in _causes(exc):
        last = e
    text = getattr(last, "strerror", None) or str(last) or type(last).__name__
    return text


def is_connection_failure(exc: BaseException) -> bool:
    """Whether the request never got an answer from the endpoint (not an HTTP error)."""
    return not isinstance(exc, ClientError) and not hasattr(exc, "status") and _find(
        exc, (EndpointConnectionError, ProxyConnectionError, SSLError, ConnectTimeoutError,
              ReadTimeoutError, *_aiohttp("ClientConnectionError"), OSError,
              TimeoutError)) is not None


def endpoint_name(endpoint_url: str | None) -> str:
    """The endpoint as a person would name it."""
    return endpoint_url or AWS


def html_page(kind: str) -> str:
    """Why an answer with this Content-Type is no S3 answer."""
    return f"the endpoint answered with an HTML page ({kind}), not S3: a proxy or login page?"


def not_s3(kind: str) -> str:
    """Why a success that is neither a page nor what S3 answers is no S3 answer."""
    return f"the endpoint's answer ({kind}) is not an S3 response"


def object_url(endpoint_url: str | None, bucket: str, key: str) -> str:
    """Where botocore would send a request for key (the bucket itself for ""), percent-encoded:
    path-style at an endpoint URL (without a trailing slash), virtual-hosted at AWS."""
    path = quote(key, safe="/~")
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{bucket}" + (f"/{path}" if key else "")
    return f"https://{bucket}.s3.amazonaws.com/{path}"


def error_of(body: bytes, status: int) -> tuple[str, str]:
    """An S3 error document's Code and Message (the status's name if it has none)."""
    code, message = _CODE.search(body), _MESSAGE.search(body)
    name = code.group(1).decode(errors="replace") if code else {
        403: "Forbidden", 404: "NotFound", 416: "InvalidRange", 429: "TooManyRequests",
        500: "InternalError", 503: "ServiceUnavailable"}.get(status, "Error")
    return name, message.group(1).decode(errors="replace") if message else ""


@dataclass
class Health:
    """How the endpoint answered lately: what `idcfs status` and /.idcfs/stats show."""

    state: str = "unchecked"  # "ok", "unreachable", or "unchecked" until the first answer
    problem: str = ""
    since: float = 0.0

    def answered(self) -> None:
        if self.state != "ok":
            self.state, self.problem, self.since = "ok", "", time.time()

    def failed(self, problem: str) -> None:
        if self.state != "unreachable" or problem != self.problem:
            self.state, self.problem, self.since = "unreachable", problem, time.time()

    def as_dict(self) -> dict:
        return {"state": self.state, "problem": self.problem, "since": round(self.since, 3)}
