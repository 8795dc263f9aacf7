"""Elastic Cloud ID → the deployment's Elasticsearch URL, decoded as the official Python client does.

A Cloud ID is ``<name>:<base64 of "host[:port]$es_uuid$kibana_uuid">``; the Elasticsearch endpoint is
``https://<es_uuid>.<host>`` on the port given in the ID (443 when none). The decoding follows
``elastic_transport.client_utils.parse_cloud_id`` (elastic-transport-python, used by elasticsearch-py's
``Elasticsearch(cloud_id=...)``): the name before the first ``:`` is optional and ignored, base64 is
decoded leniently (``binascii.a2b_base64``), a host is required, and an ID without an Elasticsearch
uuid has no Elasticsearch endpoint.
"""

import binascii

CLOUD_ID_FORMAT = "'<deployment name>:<base64 of host$es_uuid$kibana_uuid>'"


class CloudIdError(ValueError):
    """The Cloud ID cannot be decoded to an Elasticsearch endpoint."""


def elasticsearch_url(cloud_id: str) -> str:
    """The HTTPS URL of the Elasticsearch endpoint named by ``cloud_id``."""
    _, _, encoded = cloud_id.strip().partition(":")
    try:
        parts = binascii.a2b_base64(encoded.encode("ascii")).decode("ascii").split("$")
        host = parts[0]
        port = None
        if ":" in host:
            host, _, port_text = host.rpartition(":")
            port = int(port_text)
    except (ValueError, UnicodeError):  # binascii.Error is a ValueError
        raise CloudIdError(f"cloud_id is not a valid Elastic Cloud ID (expected {CLOUD_ID_FORMAT})") from None
    es_uuid = parts[1] if len(parts) > 1 else ""
    if not host or not es_uuid:
        raise CloudIdError(
            f"cloud_id names no Elasticsearch endpoint (expected {CLOUD_ID_FORMAT}, with an Elasticsearch uuid)"
        )
    return f"https://{es_uuid}.{host}" + (f":{port}" if port is not None else "")
