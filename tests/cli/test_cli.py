"""The ``tidings`` command (spec §23) as an operator runs it: real processes, real sockets."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import websockets
from tests.conftest import MS, SECRET

KEY_ENV = {
    "TIDINGS_SIGNING_KEY1_METHOD": "HS256",
    "TIDINGS_SIGNING_KEY1": base64.b64encode(SECRET).decode(),
    "TIDINGS_API_KEY1": "cli-api-key",
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


class Serving:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.lines: list[str] = []

    def read_until(self, pattern: str, timeout: float = 10) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"{pattern!r} not printed; got {self.lines!r}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(env: dict[str, str], *extra: str) -> Serving:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--port", str(port), *extra],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        return Serving(proc, port)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def wait_healthy(port: int) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(25 * MS)
    raise AssertionError("server did not become healthy")


@pytest.mark.timeout(60)
async def test_serve_dev_mode_prints_working_token_and_drains(
    serve: object, tmp_path: Path
) -> None:
    """With no keys, serve generates them, prints a demo token that works with a plain
    WebSocket client, stores in ./tidings.db, and SIGTERM drains (1001, exit 0)."""
    node = serve(clean_env())  # type: ignore[operator]
    token = node.read_until(r"^  (eyJ[\w-]+\.[\w-]+\.[\w-]+)\s*$").group(1)
    text = "".join(node.lines)
    assert "DEV MODE" in text and f"http://127.0.0.1:{node.port}/console/" in text
    assert "event loop uvloop)" in text  # auto: uvloop is installed with tidings here
    api_key = re.search(r"API key:\s+(\S+)", text)
    assert api_key is not None
    await wait_healthy(node.port)
    ws = await websockets.connect(f"ws://127.0.0.1:{node.port}/?token={token}")
    connected = orjson.loads(await ws.recv())
    assert connected["event"] == "hotsock.connected"
    await ws.send('{"event":"hotsock.subscribe","channel":"demo"}')
    assert orjson.loads(await ws.recv())["event"] == "hotsock.subscribed"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"http://127.0.0.1:{node.port}/publish",
            headers={"Authorization": f"Bearer {api_key.group(1)}"},
            data=b'{"channel":"demo","event":"hello","data":"hi","store":60}',
        ) as resp:
            assert resp.status == 202
    assert orjson.loads(await ws.recv())["data"] == "hi"
    assert (tmp_path / "tidings.db").exists()
    node.proc.send_signal(signal.SIGTERM)
    with pytest.raises(websockets.ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert node.proc.wait(timeout=10) == 0


@pytest.mark.timeout(60)
async def test_serve_with_keys_and_cli_publish(serve: object, tmp_path: Path) -> None:
    """Configured keys: no dev banner; `tidings token` signs a working token and
    `tidings publish` delivers through the running server."""
    env = clean_env(
        **KEY_ENV, TIDINGS_STORE=f"sqlite:///{tmp_path}/cli.db", TIDINGS_EVENT_LOOP="asyncio"
    )
    node = serve(env)  # type: ignore[operator]
    node.read_until(r"ready on .*event loop asyncio\)")
    await wait_healthy(node.port)
    claims = '{"scope":"connect","channels":{"news":{"subscribe":true}}}'
    signed = run(["token", claims, "--ttl", "120"], env)
    assert signed.returncode == 0, signed.stderr
    ws = await websockets.connect(f"ws://127.0.0.1:{node.port}/?token={signed.stdout.strip()}")
    await ws.recv()
    await ws.send('{"event":"hotsock.subscribe","channel":"news"}')
    await ws.recv()
    published = await asyncio.to_thread(
        run, ["publish", "news", "flash", '{"a":1}', "--url", f"http://127.0.0.1:{node.port}"], env
    )
    assert published.returncode == 0, published.stderr
    message_id = orjson.loads(published.stdout)["id"]
    msg = orjson.loads(await ws.recv())
    assert msg == {"id": message_id, "event": "flash", "channel": "news", "data": {"a": 1}}
    await ws.close()
    node.proc.send_signal(signal.SIGINT)
    assert node.proc.wait(timeout=10) == 0
    assert "DEV MODE" not in "".join(node.lines)


def test_token_command_errors(tmp_path: Path) -> None:
    """Bad input to `tidings token` is one clear sentence and exit 2."""
    assert run(["token", "{nope"], clean_env(**KEY_ENV)).returncode == 2
    no_key = run(["token", "{}"], clean_env())
    assert no_key.returncode == 2 and "No signing key" in no_key.stderr
    rsa = run(
        ["token", "{}"], clean_env(TIDINGS_SIGNING_KEY1_METHOD="RS256", TIDINGS_SIGNING_KEY1="AAAA")
    )
    assert rsa.returncode == 2 and "tidings:" in rsa.stderr


def test_publish_command_without_server(tmp_path: Path) -> None:
    result = run(
        ["publish", "c", "e", "--url", f"http://127.0.0.1:{free_port()}"], clean_env(**KEY_ENV)
    )
    assert result.returncode == 1 and "tidings:" in result.stderr


@pytest.mark.parametrize(
    "env,phrase",
    [
        ({"TIDINGS_PORT": "abc"}, "TIDINGS_PORT"),
        ({"TIDINGS_IDLE_TIMEOUT_SECONDS": "-1"}, "TIDINGS_IDLE_TIMEOUT_SECONDS"),
        ({"TIDINGS_STORE": "mongodb://x"}, "TIDINGS_STORE"),
        ({"TIDINGS_SIGNING_KEY1_METHOD": "HS256"}, "TIDINGS_SIGNING_KEY1"),
        ({"TIDINGS_SIGNING_KEY1_METHOD": "XX999", "TIDINGS_SIGNING_KEY1": "AAAA"}, "XX999"),
        ({"TIDINGS_LOG_LEVEL": "loud"}, "TIDINGS_LOG_LEVEL"),
        ({"TIDINGS_EVENT_LOOP": "libevent"}, "TIDINGS_EVENT_LOOP"),
        ({"TIDINGS_WEBHOOK_URL": "http://127.0.0.1:9/x"}, "TIDINGS_WEBHOOK_SECRET"),
        ({"TIDINGS_CLIENT_MESSAGES_PER_SECOND": "-1"}, "TIDINGS_CLIENT_MESSAGES_PER_SECOND"),
        ({"TIDINGS_CLIENT_MESSAGES_PER_SECOND": "fast"}, "TIDINGS_CLIENT_MESSAGES_PER_SECOND"),
        ({"TIDINGS_CLIENT_MESSAGES_BURST": "0"}, "TIDINGS_CLIENT_MESSAGES_BURST"),
        ({"TIDINGS_HTTP_CALLS_PER_SECOND": "nan"}, "TIDINGS_HTTP_CALLS_PER_SECOND"),
        ({"TIDINGS_HTTP_CALLS_BURST": "lots"}, "TIDINGS_HTTP_CALLS_BURST"),
        ({"TIDINGS_HANDSHAKES_PER_IP_PER_SECOND": "-0.5"}, "TIDINGS_HANDSHAKES_PER_IP_PER_SECOND"),
        ({"TIDINGS_HANDSHAKES_PER_IP_BURST": "-2"}, "TIDINGS_HANDSHAKES_PER_IP_BURST"),
        ({"TIDINGS_MAX_CONNECTIONS": "-1"}, "TIDINGS_MAX_CONNECTIONS"),
        ({"TIDINGS_MAX_CONNECTIONS_PER_IP": "1e3"}, "TIDINGS_MAX_CONNECTIONS_PER_IP"),
        ({"TIDINGS_MAX_CONNECTIONS_PER_UID": "many"}, "TIDINGS_MAX_CONNECTIONS_PER_UID"),
        ({"TIDINGS_RATE_LIMITED_CLOSE_AFTER": "-5"}, "TIDINGS_RATE_LIMITED_CLOSE_AFTER"),
        ({"TIDINGS_QUEUE_WRITE_TIMEOUT_SECONDS": "0"}, "TIDINGS_QUEUE_WRITE_TIMEOUT_SECONDS"),
        ({"TIDINGS_QUEUE_WRITE_TIMEOUT_SECONDS": "soon"}, "TIDINGS_QUEUE_WRITE_TIMEOUT_SECONDS"),
    ],
)
def test_serve_refuses_invalid_settings(env: dict[str, str], phrase: str, tmp_path: Path) -> None:
    """Invalid settings stop start-up with one sentence naming the setting."""
    result = run(["serve", "--port", str(free_port())], clean_env(**env), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert phrase in result.stderr and result.stderr.count("\n") == 1


def test_toml_config_file_and_env_precedence(tmp_path: Path) -> None:
    from tidings.config import Settings

    config = tmp_path / "tidings.toml"
    config.write_text(
        'port = 9001\nidle_timeout_seconds = 30\nstore = "memory://"\n'
        '[[webhooks]]\nurl = "http://127.0.0.1:9/h"\nsecrets = ["s1", "s2"]\n'
    )
    settings = Settings.load(environ={"TIDINGS_PORT": "9002"}, config_file=config)
    assert settings.server.port == 9002
    assert settings.timeouts.idle_timeout_seconds == 30
    assert settings.backends.store == "memory://"
    assert [w.url for w in settings.events.webhooks] == ["http://127.0.0.1:9/h"]
    assert "s1" not in repr(settings)
