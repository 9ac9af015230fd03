"""The log secret scan itself: it must find what it is there to find."""

from __future__ import annotations

import logging
from pathlib import Path

from tests.conftest import API_KEY, make_token
from tests.secret_scan import SECRETS, SecretScan, scan_file


def test_secret_scan_finds_tokens_prefixes_keys_and_connection_secrets(tmp_path: Path) -> None:
    scan = SecretScan([API_KEY])
    token = make_token()
    scan.register("conn-secret-123")
    log = logging.getLogger("tidings.test-secret-scan")
    log.addHandler(scan)
    log.propagate = False
    try:
        log.warning("rejected %s", token)
        log.error("line too long: GET /?token=%s", token[:40])  # aiohttp's 92-character echo
        log.info("key %s", API_KEY)
        log.debug("secret conn-secret-123 refused")
        log.warning("a ULID 01HF7YAT000000000000000000 and eyJshort are fine")
        try:
            raise ValueError(f"bad {token}")
        except ValueError:
            log.exception("! failed")  # the traceback text is scanned too
    finally:
        log.removeHandler(scan)
        log.propagate = True
    found = scan.take()
    assert len(found) == 5, found
    assert scan.take() == []
    path = tmp_path / "node.log"
    path.write_text(f"ok\nGET /?token={token[:45]}\n")
    assert len(scan_file(scan, path)) == 1


def test_secret_scan_ignores_the_tests_own_clients() -> None:
    scan = SecretScan([])
    record = logging.LogRecord("websockets.client", logging.DEBUG, "", 0, make_token(), None, None)
    scan.emit(record)
    assert scan.take() == []


def test_secret_scan_is_installed_for_every_test() -> None:
    assert SECRETS in logging.getLogger().handlers
    assert logging.getLogger("tidings").getEffectiveLevel() == logging.DEBUG
