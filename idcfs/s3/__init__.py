"""The object store: IDC's buckets over the S3 API (AWS, GCS's XML API, or any endpoint).

    source.py    ObjectSource: series listings and exact ranged reads, retried and hedged
    client.py    the aiobotocore client: unsigned, no AWS configuration, the system's CAs
    get.py       object GETs on aiohttp alone, with botocore's retry rules
    check.py     the mount's endpoint check, on the standard library, before the S3 stack
    trust.py     the certificates every connection trusts, and the User-Agent
    hedge.py     racing a second request against one that stalls
    endpoint.py  what went wrong, in words; the endpoint's health
"""
