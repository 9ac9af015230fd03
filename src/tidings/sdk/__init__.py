"""Python SDK for backends: issue tokens, publish messages, verify webhooks.

* :class:`Issuer` signs connect, subscribe and umd tokens (spec §3).
* :class:`Publisher` / :class:`AsyncPublisher` call ``POST /publish`` with safe retries (spec §15).
* :mod:`tidings.sdk.webhooks` signs and verifies webhook deliveries (spec §17.3).
* :class:`Client` is an asyncio WebSocket client that reconnects and resumes its channels.
"""

from __future__ import annotations

from tidings.sdk import webhooks
from tidings.sdk.client import ChannelStream, Client, ClientError, Member, Message, Subscribed
from tidings.sdk.issuer import Issuer
from tidings.sdk.publisher import AsyncPublisher, Publisher, PublishError, PublishResult
from tidings.sdk.webhooks import WebhookVerificationError

__all__ = [
    "AsyncPublisher",
    "ChannelStream",
    "Client",
    "ClientError",
    "Issuer",
    "Member",
    "Message",
    "PublishError",
    "PublishResult",
    "Publisher",
    "Subscribed",
    "WebhookVerificationError",
    "webhooks",
]
