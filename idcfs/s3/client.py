"""The aiobotocore client of a mount: unsigned, deaf to the user's AWS configuration, trusting
the system's certificates, and without flexible checksums."""

from __future__ import annotations

import os
import ssl
from xml.etree import ElementTree

import truststore
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.parsers import AioResponseParserFactory, AioRestXMLParser
from aiobotocore.session import AioSession
from botocore import UNSIGNED
from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES, ConstantProvider

from .trust import user_agent

DEFAULT_REGION = "us-east-1"  # all three of IDC's AWS buckets


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


class _ListingParser(AioRestXMLParser):
    """botocore's rest-xml parser, with ListObjectsV2's body parsed in one pass: its generic
    walk of the shapes was three quarters of the CPU of listing a 91,980-file series (92 pages).
    The fields idcfs reads come out as botocore gives them (IsTruncated a bool, Size an int,
    a ValueError for a Size that is not a number); any other body goes to botocore's own."""

    def _parse_payload(self, response, shape, member_shapes, final_parsed):
        if shape.name != "ListObjectsV2Output":
            return super()._parse_payload(response, shape, member_shapes, final_parsed)
        try:
            root = ElementTree.fromstring(response["body"])
        except ElementTree.ParseError:
            root = None
        if root is None or root.tag.rpartition("}")[2] != "ListBucketResult":
            return super()._parse_payload(response, shape, member_shapes, final_parsed)
        ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        contents = []
        for node in root.iterfind(ns + "Contents"):
            entry = {"Key": node.findtext(ns + "Key"), "ETag": node.findtext(ns + "ETag")}
            size = node.findtext(ns + "Size")
            if size is not None:
                entry["Size"] = int(size)
            contents.append(entry)
        if contents:
            final_parsed["Contents"] = contents
        for field in ("NextContinuationToken", "ContinuationToken", "Prefix", "Name"):
            value = root.findtext(ns + field)
            if value is not None:
                final_parsed[field] = value
        truncated = root.findtext(ns + "IsTruncated")
        if truncated is not None:
            final_parsed["IsTruncated"] = truncated.strip().lower() == "true"


class _ParserFactory(AioResponseParserFactory):
    def create_parser(self, protocol_name):
        if protocol_name == "rest-xml":
            return _ListingParser(**self._defaults)
        return super().create_parser(protocol_name)


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
    parsers = _ParserFactory()
    parsers.set_parser_defaults(timestamp_parser=_raw_timestamp)
    session.register_component("response_parser_factory", parsers)
    return session


def client_config(endpoint_url: str | None, max_connections: int, attempts: int,
                  connect_timeout: float, read_timeout: float) -> AioConfig:
    return AioConfig(
        signature_version=UNSIGNED,
        max_pool_connections=max_connections,
        retries={"total_max_attempts": attempts, "mode": "standard"},  # attempts, not retries
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        s3={"addressing_style": "path" if endpoint_url else "auto",
            "use_accelerate_endpoint": False, "us_east_1_regional_endpoint": "legacy"},
        use_fips_endpoint=False,
        use_dualstack_endpoint=False,
        ignore_configured_endpoint_urls=True,
        # No flexible checksums: botocore would send x-amz-checksum-mode on every GET (some
        # S3-compatible endpoints refuse it) and, with awscrt installed, check the CRC32C of
        # each answer, which GCS gives for the whole object on a ranged answer, so that every
        # ranged read from GCS failed. idcfs checks lengths, ranges and ETags itself.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        http_session_cls=_SystemTrust,
        user_agent=user_agent(),
    )
