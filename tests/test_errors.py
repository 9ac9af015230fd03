"""``wire_error``: what a client is told about a failure, and what it is never told."""

from __future__ import annotations

from tidings.errors import (
    BrokerUnavailable,
    ErrorCode,
    StoreOutcomeUnknown,
    StoreUnavailable,
    wire_error,
    wire_status,
)


def test_wire_error_hides_broker_internals() -> None:
    """A Redis error reply (script digest, address) stays in the log, out of the body."""
    exc = BrokerUnavailable(
        "the broker refused claim: Error running script (call to "
        "f_8b4a1c0e2b7f5e6d9a0c3b2a1f0e9d8c7b6a5f4e): @user_script:1: ERR invalid expire time"
    )
    code, message = wire_error(exc)
    assert code is ErrorCode.SERVICE_UNAVAILABLE and wire_status(exc) == 503
    assert "f_8b4a" not in message and "script" not in message and "ERR" not in message


def test_wire_error_hides_store_internals() -> None:
    code, message = wire_error(StoreUnavailable("PostgreSQL at 10.0.0.6:5432: password=x"))
    assert code is ErrorCode.SERVICE_UNAVAILABLE and "10.0.0.6" not in message


def test_wire_error_tells_an_unknown_outcome_apart() -> None:
    """An in-doubt commit is a 503 of its own that tells the client how to retry."""
    exc = StoreOutcomeUnknown("PostgreSQL append in doubt: ConnectionResetError")
    code, message = wire_error(exc)
    assert code is ErrorCode.OUTCOME_UNKNOWN and wire_status(exc) == 503
    assert "deduplicationId" in message and "Connection" not in message
