"""tidings: a self-hosted real-time messaging server speaking the Hotsock wire protocol.

The package also carries the backend SDK: ``Issuer`` signs tokens, ``Publisher`` and
``AsyncPublisher`` publish through ``POST /publish``, and ``webhooks.verify`` checks the
signature of a backend event delivery; ``Client`` is an asyncio WebSocket client that reconnects
and resumes its channels.
"""

from __future__ import annotations

__version__ = "0.1.0"
HOTSOCK_PROTOCOL_VERSION = "1.13.5"

from tidings.errors import TidingsError  # noqa: E402
from tidings.sdk import (  # noqa: E402
    AsyncPublisher,
    Client,
    ClientError,
    Issuer,
    Publisher,
    PublishError,
    PublishResult,
    WebhookVerificationError,
    webhooks,
)

__all__ = [
    "HOTSOCK_PROTOCOL_VERSION",
    "AsyncPublisher",
    "Client",
    "ClientError",
    "Issuer",
    "PublishError",
    "PublishResult",
    "Publisher",
    "TidingsError",
    "WebhookVerificationError",
    "__version__",
    "webhooks",
]
