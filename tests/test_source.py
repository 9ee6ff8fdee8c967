"""The object source against a real local S3 server, and what it sends on the wire."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

import s3server
from conftest import Canned, HtmlPage, answering, in_blocks, set_fault
from idcfs.errors import SourceError
from idcfs.s3.check import check
from idcfs.s3.source import ObjectSource, _parts
from idcfs.s3.trust import botocore_bundle


def run(endpoint: str, method: str, *args):
    """A call of a fresh ObjectSource at endpoint (trusting its CA, if it has one)."""
    async def go():
        source = ObjectSource(endpoint, ca_bundle=getattr(endpoint, "ca_bundle", None))
        await source.start()
        try:
            return await getattr(source, method)(*args)
        finally:
            await source.close()

    return asyncio.run(go())


def test_listing_returns_every_object_across_pages_with_sizes(sample, s3_endpoint):
    row = max(sample.rows, key=lambda r: len(sample.series_objects(r)))
    listed = run(s3_endpoint, "list_series", row["aws_bucket"], f"{row['crdc_series_uuid']}/")
    expected = {name: (len(data), hashlib.md5(data).hexdigest())
                for name, data in sample.series_objects(row).items()}
    assert len(listed) > 1000
    assert {name: (size, etag) for name, size, etag in listed} == expected


def test_listing_an_unknown_series_is_an_error_not_an_empty_folder(sample, s3_endpoint):
    with pytest.raises(SourceError, match="no objects there"):
        run(s3_endpoint, "list_series", "idc-open-data", "no-such-uuid/")


def test_ranged_reads_return_exact_bytes_in_blocks(sample, s3_endpoint):
    (bucket, key), data = next(iter(sample.objects.items()))
    assert run(s3_endpoint, "get_blocks", bucket, key, 0, len(data), len(data)) == [data]
    assert run(s3_endpoint, "get_blocks", bucket, key, 0, len(data), 1000) == in_blocks(data, 1000)
    assert run(s3_endpoint, "get_blocks", bucket, key, 100, 1000, 300) == in_blocks(data[100:1100], 300)


def test_a_missing_object_is_an_error_naming_bucket_key_and_status(sample, s3_endpoint):
    with pytest.raises(SourceError, match=r"s3://idc-open-data/nope/x\.dcm .* HTTP 404"):
        run(s3_endpoint, "get_blocks", "idc-open-data", "nope/x.dcm", 0, 10, 10)


def test_a_range_past_the_end_is_an_error_not_a_short_read(sample, s3_endpoint):
    (bucket, key), data = next(iter(sample.objects.items()))
    with pytest.raises(SourceError):
        run(s3_endpoint, "get_blocks", bucket, key, len(data) - 10, 20, 20)


def test_an_endpoint_that_is_down_is_an_error_naming_it():
    with pytest.raises(SourceError, match="127.0.0.1:9"):
        run("http://127.0.0.1:9", "list_series", "idc-open-data", "x/")


class _Recorder(Canned):
    seen: list[dict] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        _Recorder.seen.append(dict(self.headers))
        self.answer(200, b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
                    b"<Name>idc-open-data</Name><KeyCount>1</KeyCount>"
                    b"<IsTruncated>false</IsTruncated>"
                    b"<Contents><Key>x/1.dcm</Key><Size>1</Size></Contents></ListBucketResult>")


class Unavailable(Canned):
    """503 to everything, counting the requests."""
    requests = 0

    def do_GET(self):  # noqa: N802 - http.server's naming
        Unavailable.requests += 1
        self.answer(503, b"<Error><Code>ServiceUnavailable</Code><Message>busy</Message></Error>")


@pytest.mark.parametrize("method,args", [("list_series", ("idc-open-data", "x/")),
                                         ("get_blocks", ("idc-open-data", "x/1.dcm", 0, 66, 66)),
                                         ("get_blocks", ("idc-open-data", "x/1.dcm", 10, 20, 20))])
def test_an_endpoint_answering_with_a_web_page_is_an_error_saying_so(method, args):
    with answering(HtmlPage) as endpoint, pytest.raises(SourceError, match="HTML page"):
        run(endpoint, method, *args)


def test_a_listing_makes_botocores_three_attempts_and_the_mount_check_one():
    with answering(Unavailable) as endpoint:
        Unavailable.requests = 0
        with pytest.raises(SourceError, match="503"):
            run(endpoint, "list_series", "idc-open-data", "x/")
        assert Unavailable.requests == 3  # botocore's
        Unavailable.requests = 0
        verdict = check(endpoint, None, "idc-open-data", "x/")
        assert verdict.problem == f"{endpoint} answered HTTP 503 ServiceUnavailable"
        assert not verdict.unreachable and Unavailable.requests == 1


def test_the_mount_check_passes_an_s3_endpoint_and_says_what_is_wrong_with_others(
        sample, s3_endpoint):
    """The check is one listing on the standard library alone (the S3 client is made after
    "ready")."""
    row = sample.rows[0]
    ok = check(s3_endpoint, None, row["aws_bucket"], f"{row['crdc_series_uuid']}/")
    assert ok.problem is None
    with answering(HtmlPage) as endpoint:
        page = check(endpoint, None, "idc-open-data", "x/")
    assert "HTML page" in page.problem and not page.unreachable
    with answering(IgnoresRange) as endpoint:  # a 200 that is no listing
        other = check(endpoint, None, "idc-open-data", "x/")
    assert other.problem == f"{endpoint} does not answer as S3 does: the endpoint's answer " \
                            "(application/dicom) is not an S3 response"
    down = check("http://127.0.0.1:9", None, "idc-open-data", "x/")
    assert "refused the connection" in down.problem and down.unreachable


def test_the_check_trusts_the_bundle_botocore_trusts():
    from botocore.httpsession import get_cert_path

    assert botocore_bundle() == get_cert_path(True)


class UnavailableForAWhile(Canned):
    """503 to everything, asking botocore to wait 1.5 s before it retries: longer than the
    hedge's threshold (1 s)."""
    requests = 0

    def do_GET(self):  # noqa: N802 - http.server's naming
        UnavailableForAWhile.requests += 1
        self.answer(503, b"<Error><Code>ServiceUnavailable</Code><Message>busy</Message></Error>",
                    headers={"x-amz-retry-after": "1500"})


@pytest.mark.parametrize("method,args", [("list_series", ("idc-open-data", "x/")),
                                         ("get_blocks", ("idc-open-data", "x/1.dcm", 0, 66, 66))])
def test_a_request_backing_off_to_retry_is_not_raced_by_a_hedge(method, args):
    """An endpoint that is failing gets botocore's three attempts, not a second train of them
    from a hedge that took the back-off for a stall."""
    with answering(UnavailableForAWhile) as endpoint:
        UnavailableForAWhile.requests = 0
        with pytest.raises(SourceError, match="503"):
            run(endpoint, method, *args)
        assert UnavailableForAWhile.requests == 3


class IgnoresRange(Canned):
    """An endpoint that answers every GET with the whole 100-byte object, whatever the Range."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.answer(200, bytes(range(100)), "application/dicom")


def test_a_range_answered_with_the_whole_object_is_refused_unless_it_starts_at_0():
    with answering(IgnoresRange) as endpoint:
        assert run(endpoint, "get_blocks", "idc-open-data", "x/1.dcm", 0, 100, 64) == \
            in_blocks(bytes(range(100)), 64)
        with pytest.raises(SourceError, match="without the range"):
            run(endpoint, "get_blocks", "idc-open-data", "x/1.dcm", 10, 20, 20)


def test_a_body_longer_than_the_range_asked_for_is_an_error():
    with answering(IgnoresRange) as endpoint, pytest.raises(SourceError, match="more than 50 bytes for a range of 50"):
        run(endpoint, "get_blocks", "idc-open-data", "x/1.dcm", 0, 50, 64)


def test_requests_are_unsigned_even_with_credentials_in_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIAFILE\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    with answering(_Recorder) as endpoint:
        run(endpoint, "list_series", "idc-open-data", "x/")
    assert _Recorder.seen
    for headers in _Recorder.seen:
        names = {h.lower() for h in headers}
        assert "authorization" not in names
        assert "x-amz-security-token" not in names


def test_a_big_series_is_listed_in_parts_at_once_and_equals_its_listing_page_by_page(
        sample, fast_s3):
    """1005 objects: more than a page, so listed by the first character of the names, 16 parts
    at once, when the index's count is given; the same listing as without it."""
    row = max(sample.rows, key=lambda r: len(sample.series_objects(r)))
    bucket, prefix = row["aws_bucket"], f"{row['crdc_series_uuid']}/"
    count = len(sample.series_objects(row))
    whole = run(fast_s3, "list_series", bucket, prefix)
    s3server.counts(fast_s3, reset=True)
    parts = run(fast_s3, "list_series", bucket, prefix, count)
    assert parts == whole and len(parts) == count
    assert s3server.counts(fast_s3)["LIST"] == 16


def test_a_big_series_is_listed_in_the_parts_that_take_the_fewest_rounds_of_requests():
    """The 91,980-file series over 16 listing connections: 16 parts of 6 pages each (6 rounds),
    not 256 parts of one page (16 rounds); over 64 connections, 256 parts take 4 rounds."""
    assert len(_parts(91_980, connections=16)) == 16
    assert len(_parts(91_980, connections=64)) == 256
    assert len(_parts(1_005, connections=16)) == 16
    assert len(_parts(1_005, connections=1)) == 16  # as many rounds either way: fewer requests


def test_parts_that_miss_objects_fall_back_to_the_listing_page_by_page(sample, fast_s3):
    """A count the parts do not reach (names that begin with no hexadecimal digit, or an index
    that is wrong) is never trusted: the series is listed whole."""
    row = max(sample.rows, key=lambda r: len(sample.series_objects(r)))
    bucket, prefix = row["aws_bucket"], f"{row['crdc_series_uuid']}/"
    count = len(sample.series_objects(row))
    listed = run(fast_s3, "list_series", bucket, prefix, count + 7)
    assert [name for name, _, _ in listed] == sorted(sample.series_objects(row))


@pytest.mark.parametrize("stall", [False, True])
def test_blocks_asked_into_given_memory_land_there_even_when_a_hedge_wins(sample, fast_s3, proxy,
                                                                          stall):
    """The S3 process's shared memory: the blocks returned are views of it, holding the
    object's bytes. When the first attempt stalls half-way, the hedge's bytes are copied there
    after the race, never written beside a loser still writing."""
    (bucket, key), data = max(sample.objects.items(), key=lambda item: len(item[1]))
    block = 64 << 10
    memory = bytearray(-(-len(data) // block) * block)
    into = [memoryview(memory)[at:at + block] for at in range(0, len(memory), block)]
    set_fault(proxy, **({"mode": "stall", "count": 1, "match": key.split("/")[1]} if stall else {}))
    s3server.counts(fast_s3, reset=True)
    try:
        blocks = run(proxy, "get_blocks", bucket, key, 0, len(data), block, into)
    finally:
        set_fault(proxy)
    assert s3server.counts(fast_s3)[f"GET {bucket}/{key}"] == (2 if stall else 1)
    assert all(isinstance(b, memoryview) and b.obj is memory for b in blocks)
    assert [bytes(b) for b in blocks] == in_blocks(data, block)
    assert bytes(memory[:len(data)]) == data
    assert blocks.md5 == hashlib.md5(data).hexdigest()
