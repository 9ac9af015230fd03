"""Browser test of the web console (spec §19) against a real `tidings serve` process.

Drives Debian's Chromium (/usr/bin/chromium) through Playwright's Python package. Skipped when
either is missing, unless TIDINGS_REQUIRE_SERVICES=1 (then it fails). Leaves a screenshot in
tests/artifacts/console.png.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

try:
    from playwright.sync_api import Locator, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SIGNING_SECRET = secrets.token_bytes(32)
API_KEY = "console-test-" + secrets.token_hex(16)


def _require(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("TIDINGS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (TIDINGS_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(
    method: str, url: str, body: object = None, api_key: str | None = None
) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        try:
            return e.code, e.read().decode()
        finally:
            e.close()


@pytest.fixture
def browser_available() -> None:
    _require(sync_playwright is not None, "playwright is not installed (pip install playwright)")
    _require(os.path.exists(CHROMIUM), f"{CHROMIUM} is missing (apt-get install chromium)")


class ServeProcess:
    """`python -m tidings serve` on a fixed port and SQLite file, which can be restarted."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "server.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        self.env.update(
            TIDINGS_SIGNING_KEY1_METHOD="HS256",
            TIDINGS_SIGNING_KEY1=base64.b64encode(SIGNING_SECRET).decode(),
            TIDINGS_API_KEY1=API_KEY,
            TIDINGS_STORE=f"sqlite:///{tmp_path}/t.db",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "tidings", "serve", "--host", "127.0.0.1"]
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [*cmd, "--port", str(self.port)],
                env=self.env,
                cwd=self.tmp_path,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"tidings serve exited with {self.proc.returncode}:\n"
                    f"{self.log_path.read_text()}"
                )
            try:
                if _http("GET", f"{self.base}/healthz")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tidings serve not healthy after 30 s:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServeProcess]:
    """A running `tidings serve` process; stopped at the end."""
    process = ServeProcess(tmp_path)
    try:
        process.start()
        yield process
    finally:
        process.stop()


@pytest.fixture
def server(served: ServeProcess) -> str:
    """The base URL of the running server."""
    return served.base


def _connect_token() -> str:
    claims = {
        "scope": "connect",
        "exp": int(time.time()) + 600,
        "uid": "console-tester",
        "channels": {
            "demo": {
                "subscribe": True,
                "historyStart": 0,
                "messages": {"*": {"publish": True, "echo": True, "store": 3600, "react": True}},
                "storage": {"*": {"observe": True, "get": True, "set": True}},
            }
        },
    }
    return jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, OctKey.import_key(SIGNING_SECRET))


def _log_entries(page: Page, direction: str, text: str) -> Locator:
    return page.locator(f'#log .log-entry[data-dir="{direction}"]', has_text=text)


@pytest.mark.timeout(120)
def test_console_end_to_end(browser_available: None, served: ServeProcess, server: str) -> None:
    expect.set_options(timeout=10_000)
    host = urlsplit(server).netloc
    token = _connect_token()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page_errors: list[str] = []
            foreign: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on(
                "request",
                lambda r: (
                    None
                    if r.url.startswith("data:") or urlsplit(r.url).netloc == host
                    else foreign.append(r.url)
                ),
            )

            page.goto(f"{server}/console/")
            expect(page.locator("#ws-url")).to_have_value(f"ws://{host}/")
            expect(page.locator("#http-url")).to_have_value(server)
            expect(page.locator("#status")).to_have_text("disconnected")

            # Decode the pasted token, then connect.
            page.fill("#token", token)
            expect(page.locator("#claims")).to_contain_text('"console-tester"')
            expect(page.locator("#claims")).to_contain_text("exp")
            page.click("#connect")
            expect(page.locator("#status")).to_have_text("connected")
            conn_id = page.text_content("#connection-id") or ""
            assert conn_id.endswith("="), conn_id
            secret = page.evaluate("() => state.secret")
            assert secret and secret not in page.inner_text("body"), "secret must be masked"

            # Subscribe.
            page.fill("#channel", "demo")
            page.click("#subscribe")
            expect(page.locator('#subscriptions li[data-channel="demo"]')).to_have_attribute(
                "data-state", "subscribed"
            )

            # A server-side publish shows up in the frame log.
            body = {"channel": "demo", "event": "server-news", "data": {"n": 1}, "store": 3600}
            status, text = _http("POST", f"{server}/publish", body, API_KEY)
            assert status == 202, text
            expect(_log_entries(page, "in", "server-news")).to_have_count(1)
            assert '"channel":"demo"' in (
                _log_entries(page, "in", "server-news").text_content() or ""
            )

            # A channel message over the socket (echo is on, so it comes back).
            page.fill("#msg-channel", "demo")
            page.fill("#msg-event", "from-socket")
            page.fill("#msg-data", '{"text":"hi"}')
            page.click("#send-message")
            expect(_log_entries(page, "out", "from-socket")).to_have_count(1)
            expect(_log_entries(page, "in", "from-socket")).to_have_count(1)

            # publishMessage through the Client HTTP API.
            page.fill("#http-channel", "demo")
            page.fill("#http-event", "from-http")
            page.click("#http-publish")
            expect(
                page.locator('#log .log-entry[data-dir="http"][data-status="202"]')
            ).to_have_count(1)
            expect(_log_entries(page, "in", "from-http")).to_have_count(1)

            # Channel storage: set over the socket, a server write arrives live, delete, list
            # over HTTP, get.
            expect(page.locator("#storage-channel")).to_have_value("demo")
            page.fill("#storage-key", "settings")
            page.fill("#storage-data", '{"maxPlayers":4}')
            page.click("#storage-set")
            expect(_log_entries(page, "in", "hotsock.channelStorageUpdated")).to_have_count(1)
            entry = page.locator('#storage .storage-item[data-key="settings"]')
            expect(entry).to_contain_text('"maxPlayers":4')
            expect(entry).to_contain_text("console-tester")
            write = {"channel": "demo", "event": "hotsock.channelStorageSet", "key": "mode"}
            status, text = _http("POST", f"{server}/publish", {**write, "data": "ffa"}, API_KEY)
            assert status == 202, text
            expect(page.locator('#storage .storage-item[data-key="mode"]')).to_contain_text("ffa")
            page.fill("#storage-data", "")
            page.click("#storage-set")
            expect(entry).to_have_count(0)
            page.click("#storage-list")
            expect(
                page.locator('#log .log-entry[data-dir="http"]', has_text="channelStorageList")
            ).to_have_count(2)
            expect(page.locator("#storage .storage-item")).to_have_count(1)
            expect(page.locator("#storage-summary")).to_have_text("1 entry on demo")
            page.fill("#storage-key", "mode")
            page.click("#storage-get")
            expect(_log_entries(page, "in", "hotsock.channelStorageData")).to_have_count(1)

            # Ping and raw frames.
            page.click("#ping")
            expect(_log_entries(page, "in", "hotsock.pong")).to_have_count(1)
            page.fill("#raw-frame", '{"event":"hotsock.bogus"}')
            page.click("#send-raw")
            expect(_log_entries(page, "in", "INVALID_EVENT")).to_have_count(1)

            # History through listMessages.
            page.fill("#history-channel", "demo")
            page.click("#list-messages")
            items = page.locator("#history .history-item")
            expect(items).to_have_count(3)
            expect(items.first).to_contain_text("server-news")
            assert len(items.first.get_attribute("data-id") or "") == 26
            request = _log_entries(page, "http", "/connection/listMessages").first
            expect(request).to_contain_text('"channel":"demo"')
            expect(request).to_contain_text('"expandReactions":true')

            # React to a stored message, see it counted as ours, reload, then take it back.
            first = items.first
            first.locator(".react-input").fill("🎉")
            first.locator(".react-add").click()
            expect(_log_entries(page, "in", "hotsock.messageReactionAdded")).to_have_count(1)
            mine = page.locator("#history .history-item").first.locator(
                'button.reaction[data-reaction="🎉"]'
            )
            expect(mine).to_have_text("🎉 1")
            expect(mine).to_have_attribute("data-mine", "true")
            page.click("#list-messages")
            expect(_log_entries(page, "http", "/connection/listMessages")).to_have_count(2)
            expect(mine).to_have_text("🎉 1")
            mine.click()
            expect(_log_entries(page, "in", "hotsock.messageReactionRemoved")).to_have_count(1)
            expect(mine).to_have_count(0)
            page.click("#list-messages")
            expect(_log_entries(page, "http", "/connection/listMessages")).to_have_count(3)
            expect(
                page.locator("#history .history-item").first.locator("button.reaction")
            ).to_have_count(0)

            # Log filter.
            page.fill("#filter", "server-news")
            expect(page.locator("#log .log-entry:visible")).not_to_have_count(0)
            for entry in page.locator("#log .log-entry:visible").all():
                assert "server-news" in (entry.text_content() or "")
            page.fill("#filter", "")

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.evaluate("document.getElementById('controls').scrollTop = 0")
            page.screenshot(path=str(ARTIFACTS / "console.png"))

            # Disconnect; Reconnect opens a new connection and re-subscribes, resuming from the
            # last message seen (nothing was missed).
            page.click("#disconnect")
            expect(page.locator("#status")).to_have_text("disconnected")
            page.click("#reconnect")
            expect(page.locator("#status")).to_have_text("connected")
            expect(page.locator("#connection-id")).not_to_have_text(conn_id)
            expect(_log_entries(page, "sys", "resumed demo: 0 missed messages")).to_have_count(1)
            expect(page.locator('#subscriptions li[data-channel="demo"]')).to_have_attribute(
                "data-state", "subscribed"
            )

            # A server restart: the console reconnects on its own and resumes the channel from
            # the last message it saw, logging "resumed" (a stored message published after the
            # restart arrives once, replayed or live).
            before = {"channel": "demo", "event": "before-restart", "data": 1, "store": 3600}
            assert _http("POST", f"{server}/publish", before, API_KEY)[0] == 202
            expect(_log_entries(page, "in", "before-restart")).to_have_count(1)
            served.stop()
            expect(page.locator("#status")).to_have_text("disconnected")
            served.start()
            after = {"channel": "demo", "event": "after-restart", "data": 2, "store": 3600}
            assert _http("POST", f"{server}/publish", after, API_KEY)[0] == 202
            expect(page.locator("#status")).to_have_text("connected", timeout=30_000)
            # the second resume: the first was the Reconnect above
            expect(_log_entries(page, "sys", "resumed demo")).to_have_count(2, timeout=30_000)
            expect(_log_entries(page, "in", "after-restart")).to_have_count(1)
            expect(_log_entries(page, "out", "resumeFrom")).to_have_count(2)
            expect(_log_entries(page, "sys", "gap on")).to_have_count(0)
            page.click("#disconnect")
            expect(page.locator("#status")).to_have_text("disconnected")

            # More missed than the cap (1,000): the resume says so, and the console logs a gap.
            batch = [
                {"channel": "demo", "event": "flood", "data": i, "store": 3600} for i in range(1000)
            ]
            assert _http("POST", f"{server}/publish", batch, API_KEY)[0] == 202
            assert _http("POST", f"{server}/publish", {**batch[0], "data": -1}, API_KEY)[0] == 202
            page.click("#reconnect")
            expect(_log_entries(page, "sys", "gap on demo")).to_have_count(1)
            expect(_log_entries(page, "in", '"event":"flood"')).to_have_count(0)
            page.click("#disconnect")
            expect(page.locator("#status")).to_have_text("disconnected")

            # Pasting a token connects on its own (auto-connect).
            page.dispatch_event("#token", "paste")
            expect(page.locator("#status")).to_have_text("connected")
            page.click("#disconnect")
            assert not page_errors, page_errors
            assert not foreign, f"console made requests to other origins: {foreign}"
        finally:
            browser.close()
