"""The ``tidings`` command (spec §23): ``serve``, ``token``, ``publish``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import sys
from collections.abc import Sequence
from typing import Any

from tidings import __version__
from tidings._logging import setup_logging
from tidings.config import Settings
from tidings.core.json import dumps, loads
from tidings.errors import ConfigError, ProtocolError, TidingsError

__all__ = ["main"]

log = logging.getLogger("tidings")

DEMO_CHANNEL = "demo"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"tidings: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidings", description="Hotsock-compatible real-time server"
    )
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
    sub = parser.add_subparsers(required=True, metavar="command")

    serve = sub.add_parser("serve", help="run one node")
    serve.add_argument("--host", help="listen address (default 127.0.0.1, or TIDINGS_HOST)")
    serve.add_argument("--port", type=int, help="listen port (default 8080, or TIDINGS_PORT)")
    serve.add_argument("--config", help="TOML settings file")
    serve.set_defaults(func=_serve)

    token = sub.add_parser("token", help="print a token signed with signing key 1")
    token.add_argument("claims", help="claims as a JSON object")
    token.add_argument("--ttl", type=int, default=300, help="seconds until exp when absent")
    token.add_argument("--private-key", help="PEM private key file (asymmetric methods)")
    token.add_argument("--config", help="TOML settings file")
    token.set_defaults(func=_token)

    pub = sub.add_parser("publish", help="publish through a running server's POST /publish")
    pub.add_argument("channel")
    pub.add_argument("event")
    pub.add_argument("data", nargs="?", help="data as JSON (default null)")
    pub.add_argument("--store", type=int, help="retention in seconds (-1 forever)")
    pub.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    pub.add_argument("--config", help="TOML settings file")
    pub.set_defaults(func=_publish)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.load(config_file=args.config)


def _serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tidings.server.app import Node
    from tidings.server.process import loop_factory, tune_gc

    settings = _settings(args)
    server = settings.server
    if args.host is not None:
        server = replace(server, host=args.host)
    if args.port is not None:
        server = replace(server, port=args.port)
    settings = replace(settings, server=server)
    setup_logging(settings.server.log_level)
    dev_secret: bytes | None = None
    if not settings.auth.signing_keys:
        settings, dev_secret, _ = settings.with_dev_keys()
    node = Node(settings)  # validates keys and backend URLs before anything is logged
    if not settings.auth.api_keys:
        log.warning(
            "! no TIDINGS_API_KEY1 set: POST /publish and /channels/* will refuse every call"
        )

    def on_ready(node: Node) -> None:
        host = settings.server.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        base = f"{shown}:{node.port}"
        log.info(
            "= tidings %s ready on http://%s (store %s, broker %s, event loop %s)",
            __version__,
            base,
            _redact_url(settings.backends.store),
            _redact_url(settings.backends.broker),
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        if dev_secret is not None:
            _print_dev_banner(base, dev_secret, settings.auth.api_keys[0].value)

    try:
        factory = loop_factory(settings.server.event_loop)
    except ModuleNotFoundError:
        raise ConfigError("TIDINGS_EVENT_LOOP=uvloop, but uvloop is not installed.") from None
    tune_gc()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(node.run_until_signalled(on_ready))
    return 0


def _print_dev_banner(base: str, secret: bytes, api_key: str) -> None:
    from tidings.sdk.issuer import Issuer

    token = Issuer(secret, algorithm="HS256").issue(
        {
            "scope": "connect",
            "uid": "demo-user",
            "channels": {
                DEMO_CHANNEL: {
                    "subscribe": True,
                    "historyStart": 0,
                    "messages": {"*": {"publish": True, "echo": True, "store": 86400}},
                }
            },
        },
        ttl=3600,
    )
    lines = [
        "",
        "  tidings is running in DEV MODE: signing and API keys were generated for this run only.",
        "  In production set TIDINGS_SIGNING_KEY1_METHOD, TIDINGS_SIGNING_KEY1, TIDINGS_API_KEY1.",
        "",
        f"  WebSocket:  ws://{base}/?token=<JWT>",
        f"  Console:    http://{base}/console/?token={token}",
        f"  API key:    {api_key}",
        f"  Publish:    curl -X POST http://{base}/publish -H 'Authorization: Bearer {api_key}' "
        f'-d \'{{"channel":"{DEMO_CHANNEL}","event":"hello","data":"hi","store":3600}}\'',
        "",
        f"  Demo token (1 hour; subscribe/publish on channel '{DEMO_CHANNEL}', uid demo-user):",
        f"  {token}",
        "",
    ]
    print("\n".join(lines), flush=True)


def _redact_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def _token(args: argparse.Namespace) -> int:
    from tidings.sdk.issuer import Issuer

    settings = _settings(args)
    try:
        claims = loads(args.claims)
    except ProtocolError as exc:
        raise ConfigError(f"The claims argument is not valid JSON ({exc.message}).") from exc
    if not isinstance(claims, dict):
        raise ConfigError("The claims argument must be a JSON object.")
    if not settings.auth.signing_keys:
        raise ConfigError(
            "No signing key is configured: "
            "set TIDINGS_SIGNING_KEY1_METHOD and TIDINGS_SIGNING_KEY1."
        )
    key = settings.auth.signing_keys[0]
    material: Any
    if key.method.startswith("HS"):
        try:
            material = base64.b64decode(key.value.value, validate=True)
        except ValueError as exc:
            raise ConfigError("TIDINGS_SIGNING_KEY1 must be Base64 of the HMAC secret.") from exc
    else:
        if not args.private_key:
            raise ConfigError(f"Signing with {key.method} needs --private-key FILE (PEM).")
        try:
            with open(args.private_key, "rb") as fh:
                material = fh.read()
        except OSError as exc:
            raise ConfigError(f"The private key file cannot be read: {exc}.") from exc
    try:
        issuer = Issuer(material, algorithm=key.method, kid=key.kid)
        print(issuer.issue(claims, ttl=args.ttl))
    except (ValueError, TidingsError) as exc:
        raise ConfigError(f"The token cannot be signed: {exc}.") from exc
    return 0


def _publish(args: argparse.Namespace) -> int:
    from tidings.sdk.publisher import Publisher, PublishError

    settings = _settings(args)
    if not settings.auth.api_keys:
        raise ConfigError("TIDINGS_API_KEY1 must be set to publish.")
    data = None
    if args.data is not None:
        try:
            data = loads(args.data)
        except ProtocolError as exc:
            raise ConfigError(f"The data argument is not valid JSON ({exc.message}).") from exc
    publisher = Publisher(args.url, settings.auth.api_keys[0].value)
    try:
        result = publisher.publish_message(
            args.channel, args.event, data, store=args.store, eager_id_generation=True
        )
    except PublishError as exc:
        print(f"tidings: publish refused: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tidings: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(dumps({"id": result.id, "channel": result.channel, "event": result.event}).decode())
    return 0
