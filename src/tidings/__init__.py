"""tidings: a self-hosted real-time messaging server speaking the Hotsock wire protocol."""

from __future__ import annotations

__version__ = "0.1.0"
HOTSOCK_PROTOCOL_VERSION = "1.13.5"

__all__ = ["HOTSOCK_PROTOCOL_VERSION", "__version__"]
