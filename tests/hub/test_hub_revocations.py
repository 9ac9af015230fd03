"""Revocations in the hub (hub/revocations.py): what a node does with a revocation that reaches
it while a connection is being opened, and the refresh that catches up with the store."""

from __future__ import annotations

import time

from tests.conftest import make_token
from tests.hub.conftest import HubHarness, RecordingOutlet

from tidings.core.revocations import Revocation, parse_revocation


def revocation(body: dict[str, object]) -> Revocation:
    return parse_revocation(body, now=time.time(), default_ttl_seconds=60)


async def test_revocation_landing_during_the_handshake_closes_the_connection(
    harness: HubHarness,
) -> None:
    """A token that passed the handshake check but is revoked before the connection is
    registered is closed with 4501 and runs no autoSubscribe."""
    hub = harness.hub
    claims = await hub.authenticate(
        make_token({"jti": "late", "channels": {"room": {"autoSubscribe": True}}})
    )
    hub._revocations.revoked.add(revocation({"jti": "late"}))
    outlet = RecordingOutlet()
    conn = hub.open_connection(claims, outlet)
    await hub.start_connection(conn)
    assert outlet.closed == (4501, "token revoked")
    assert outlet.take("hotsock.subscribed") == []
    await hub.close_connection(conn)


async def test_revocation_refresh_applies_what_the_broadcast_missed(harness: HubHarness) -> None:
    """A revocation only in the store (its broadcast never arrived) is loaded and enforced by
    the next refresh."""
    hub = harness.hub
    conn, outlet = await harness.connect({"uid": "mallory"})
    await hub._store.put_revocation(revocation({"uid": "mallory"}))
    assert outlet.closed is None
    await hub._revocations.refresh()
    assert outlet.closed == (4501, "token revoked")
    assert len(hub._revocations.revoked) == 1
