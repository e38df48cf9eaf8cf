"""The uplink to the upstream MQTT broker (see :mod:`passerelle.uplink.link`)."""

from .client import AckedClient, PublishRefused
from .link import TokenBucket, Uplink, UplinkSettings, UplinkStats, tls_context

__all__ = [
    "AckedClient",
    "PublishRefused",
    "TokenBucket",
    "Uplink",
    "UplinkSettings",
    "UplinkStats",
    "tls_context",
]
