"""What every connection to the object store trusts and says it is, without botocore's HTTP layer.

The endpoint check (check.py) runs before a mount is ready and must not wait for botocore's
import (~0.3 s with its service models); the GETs' pool (get.py) and botocore's own connections
(client.py) trust the same certificates and send the same User-Agent.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import botocore
import truststore

from .. import __version__


def botocore_bundle() -> str:
    """The CA bundle botocore trusts by default, as botocore.httpsession.get_cert_path(True)
    finds it: certifi's if certifi is installed, else the one botocore ships (a test holds the
    two equal). Importing botocore.httpsession to ask would cost the check ~0.1 s."""
    try:
        import certifi
    except ImportError:
        return str(Path(botocore.__file__).with_name("cacert.pem"))
    return certifi.where()


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The trust of every connection: the system's store and botocore's bundle, or only the CA
    bundle given (the same as client._SystemTrust gives botocore's own connections)."""
    if ca_bundle:
        return ssl.create_default_context(cafile=ca_bundle)
    context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(botocore_bundle())
    return context


def user_agent() -> str:
    """A fixed User-Agent names idcfs to the endpoint's operators, and spares botocore composing
    its own twice per request from a dozen sanitised parts (~12 % of its CPU per GetObject,
    measured with cProfile over a series of 292 GETs)."""
    return f"idcfs/{__version__} botocore/{botocore.__version__}"
