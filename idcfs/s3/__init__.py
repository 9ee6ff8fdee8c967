"""The object store: IDC's buckets over the S3 API (AWS, GCS's XML API, or any endpoint).

    source.py    ObjectSource: series listings and exact ranged reads, retried and hedged
    client.py    the aiobotocore client: unsigned, no AWS configuration, the system's CAs
    hedge.py     racing a second request against one that stalls
    endpoint.py  what went wrong, in words; the endpoint's health
"""
