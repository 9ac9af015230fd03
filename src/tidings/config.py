"""Settings (spec §23): a frozen dataclass in groups, read from ``TIDINGS_*`` environment
variables and an optional TOML file (same names, lower case, without the prefix). The environment
wins. Only this module and the CLI read the environment.
"""

from __future__ import annotations

import base64
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tidings.errors import ConfigError

__all__ = [
    "AuthSettings",
    "BackendSettings",
    "EventSettings",
    "LimitSettings",
    "Secret",
    "ServerSettings",
    "Settings",
    "SigningKeySetting",
    "TimeoutSettings",
    "WebhookSetting",
]


@dataclass(frozen=True)
class Secret:
    """A string that never shows in ``repr`` or logs."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('**********')"


@dataclass(frozen=True)
class SigningKeySetting:
    method: str  # HS256 … EdDSA
    value: Secret  # Base64 of the HMAC secret or of the PEM public key, as Hotsock takes it
    kid: str | None = None  # required ``kid`` header; None accepts any


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    cors_origins: tuple[str, ...] = ("*",)  # allowed origins for /connection/*
    trusted_proxies: tuple[str, ...] = ()  # peers whose X-Forwarded-For names the client
    log_level: str = "info"
    # the metrics' ``node`` label; empty: "<host name>:<port>", unique per process on a host
    node_name: str = ""
    metrics_token: Secret | None = None  # when set, /metrics needs ``Authorization: Bearer``
    # "auto": uvloop where it is installed (the default install on Linux and macOS), else asyncio
    event_loop: str = "auto"


@dataclass(frozen=True)
class AuthSettings:
    signing_keys: tuple[SigningKeySetting, ...] = ()  # at most two; empty means dev mode
    api_keys: tuple[Secret, ...] = ()  # Bearer keys for /publish and /channels/*
    audience: str | None = None  # when set, ``aud`` must match
    issuer: str | None = None  # when set, ``iss`` must match
    leeway_seconds: int = 0  # clock leeway for exp/nbf
    revocation_ttl_seconds: float = 7 * 86_400  # a revocation without expiresAt lasts this long
    dev_mode: bool = False  # keys were generated for this run


@dataclass(frozen=True)
class LimitSettings:
    max_subscriptions: int = 1000  # per connection
    queue_max_frames: int = 1000  # live frames held for a subscription during its resume replay
    queue_max_bytes: int = 8 * 1024 * 1024  # outbound bytes buffered per connection before 1013
    # a connection whose waiting frames its socket takes none of for this long is closed 1013
    queue_write_timeout_seconds: float = 10.0
    max_frame_bytes: int = 128 * 1024  # inbound frame size; larger closes with 1009
    max_body_bytes: int = 256 * 1024  # HTTP request body; larger gets 413
    presence_max_bytes: int = 102_400  # serialized members of one presence channel (spec §7)
    # Rate and connection limits (spec §24.3). A rate is sustained requests per second with a
    # burst allowed at once; 0 disables that limit.
    client_messages_per_second: float = 100.0  # WebSocket frames per connection
    client_messages_burst: int = 200
    rate_limited_close_after: int = 500  # refusals in one burst before closing with 1008
    http_calls_per_second: float = 20.0  # Client HTTP API calls per connection
    http_calls_burst: int = 50
    handshakes_per_ip_per_second: float = 50.0  # new connections per source address
    handshakes_per_ip_burst: int = 200
    max_connections: int = 100_000  # live connections on this node (503 beyond)
    max_connections_per_ip: int = 5_000  # live connections per source address on this node
    max_connections_per_uid: int = 100  # live connections per uid across the cluster
    resume_max_messages: int = 1000  # the longest gap a resumeFrom replays (spec §24.1)


@dataclass(frozen=True)
class TimeoutSettings:
    max_connection_seconds: float = 7200  # lifetime cap, close 1001
    idle_timeout_seconds: float = 600  # no data frame either way; 0 disables
    keepalive_seconds: float = 570  # hotsock.keepAlive interval for keepAlive tokens
    sweep_interval_seconds: float = 30  # how often expired stored messages are deleted
    drain_seconds: float = 10  # graceful shutdown budget


@dataclass(frozen=True)
class WebhookSetting:
    url: str
    secrets: tuple[Secret, ...]  # one, or two during a rotation
    types: tuple[str, ...] | None = None  # event types to receive; None receives all


@dataclass(frozen=True)
class EventSettings:
    webhooks: tuple[WebhookSetting, ...] = ()  # empty disables backend events
    backoff_seconds: tuple[float, ...] | None = None  # retry schedule; None is spec §17.3's


@dataclass(frozen=True)
class BackendSettings:
    store: str = "sqlite:///./tidings.db"
    broker: str = "memory://"


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitSettings = LimitSettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    backends: BackendSettings = BackendSettings()
    events: EventSettings = EventSettings()

    # Public methods

    @classmethod
    def load(
        cls, *, environ: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> Settings:
        """Read settings from a TOML file and the environment (which wins).

        Raises:
            ConfigError: a setting is invalid; the message names it.
        """
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        if config_file is not None:
            try:
                with open(config_file, "rb") as fh:
                    values.update({k.lower(): v for k, v in tomllib.load(fh).items()})
            except OSError as exc:
                raise ConfigError(f"The config file {config_file} cannot be read: {exc}.") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(
                    f"The config file {config_file} is not valid TOML: {exc}."
                ) from exc
        for name, value in env.items():
            if name.startswith("TIDINGS_") and value != "":
                values[name[len("TIDINGS_") :].lower()] = value
        return cls._from_values(values)

    def with_dev_keys(self) -> tuple[Settings, bytes, str]:
        """Return settings with a generated HS256 key and API key (dev mode), plus both raw."""
        secret = secrets.token_bytes(32)
        api_key = self.auth.api_keys[0].value if self.auth.api_keys else secrets.token_urlsafe(24)
        key = SigningKeySetting("HS256", Secret(base64.b64encode(secret).decode("ascii")))
        auth = replace(self.auth, signing_keys=(key,), api_keys=(Secret(api_key),), dev_mode=True)
        return replace(self, auth=auth), secret, api_key

    # Private methods

    @classmethod
    def _from_values(cls, v: dict[str, Any]) -> Settings:
        keys = []
        for n in (1, 2):
            method, value = v.get(f"signing_key{n}_method"), v.get(f"signing_key{n}")
            if method is None and value is None:
                continue
            if not method or not value:
                raise ConfigError(
                    f"TIDINGS_SIGNING_KEY{n} and TIDINGS_SIGNING_KEY{n}_METHOD "
                    "must be set together."
                )
            kid = v.get(f"signing_key{n}_id") or None
            keys.append(
                SigningKeySetting(_str(method, "SIGNING_KEY_METHOD"), Secret(str(value)), kid)
            )
        api_keys = tuple(Secret(str(v[k])) for k in ("api_key1", "api_key2") if v.get(k))
        proxies = v.get("trusted_proxies", ())
        if isinstance(proxies, str):
            proxies = [p.strip() for p in proxies.split(",") if p.strip()]
        origins = v.get("cors_origins", "*")
        if isinstance(origins, str):
            origins = [o.strip() for o in origins.split(",") if o.strip()]
        log_level = str(v.get("log_level", "info")).lower()
        if log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("TIDINGS_LOG_LEVEL must be one of debug, info, warning, error.")
        event_loop = str(v.get("event_loop", "auto")).lower()
        if event_loop not in ("auto", "asyncio", "uvloop"):
            raise ConfigError("TIDINGS_EVENT_LOOP must be one of auto, asyncio, uvloop.")
        d = cls()
        return cls(
            server=ServerSettings(
                host=_str(v.get("host", d.server.host), "HOST"),
                port=_int(v.get("port", d.server.port), "PORT", 0, 65535),
                cors_origins=tuple(origins) or ("*",),
                trusted_proxies=tuple(str(p) for p in proxies),
                log_level=log_level,
                node_name=str(v.get("node_name", d.server.node_name)),
                metrics_token=Secret(str(v["metrics_token"])) if v.get("metrics_token") else None,
                event_loop=event_loop,
            ),
            auth=AuthSettings(
                signing_keys=tuple(keys),
                api_keys=api_keys,
                audience=v.get("token_audience") or None,
                issuer=v.get("token_issuer") or None,
                leeway_seconds=_int(
                    v.get("token_leeway_seconds", 0), "TOKEN_LEEWAY_SECONDS", 0, 3600
                ),
                revocation_ttl_seconds=_num(
                    v.get("revocation_ttl_seconds", d.auth.revocation_ttl_seconds),
                    "REVOCATION_TTL_SECONDS",
                    minimum=1,
                ),
            ),
            limits=LimitSettings(
                max_subscriptions=_int(
                    v.get("max_subscriptions", d.limits.max_subscriptions), "MAX_SUBSCRIPTIONS", 1
                ),
                queue_max_frames=_int(
                    v.get("queue_max_frames", d.limits.queue_max_frames), "QUEUE_MAX_FRAMES", 1
                ),
                queue_max_bytes=_int(
                    v.get("queue_max_bytes", d.limits.queue_max_bytes), "QUEUE_MAX_BYTES", 1024
                ),
                queue_write_timeout_seconds=_num(
                    v.get("queue_write_timeout_seconds", d.limits.queue_write_timeout_seconds),
                    "QUEUE_WRITE_TIMEOUT_SECONDS",
                    minimum=0.01,
                ),
                **_limit_values(v, d.limits),
                resume_max_messages=_int(
                    v.get("resume_max_messages", d.limits.resume_max_messages),
                    "RESUME_MAX_MESSAGES",
                    0,
                ),
            ),
            timeouts=TimeoutSettings(
                max_connection_seconds=_num(
                    v.get("max_connection_seconds", d.timeouts.max_connection_seconds),
                    "MAX_CONNECTION_SECONDS",
                    minimum=0.01,
                ),
                idle_timeout_seconds=_num(
                    v.get("idle_timeout_seconds", d.timeouts.idle_timeout_seconds),
                    "IDLE_TIMEOUT_SECONDS",
                ),
                keepalive_seconds=_num(
                    v.get("keepalive_seconds", d.timeouts.keepalive_seconds),
                    "KEEPALIVE_SECONDS",
                    minimum=0.01,
                ),
                sweep_interval_seconds=_num(
                    v.get("sweep_interval_seconds", d.timeouts.sweep_interval_seconds),
                    "SWEEP_INTERVAL_SECONDS",
                    minimum=0.01,
                ),
                drain_seconds=_num(
                    v.get("drain_seconds", d.timeouts.drain_seconds), "DRAIN_SECONDS"
                ),
            ),
            backends=BackendSettings(
                store=_str(v.get("store", d.backends.store), "STORE"),
                broker=_str(v.get("broker", d.backends.broker), "BROKER"),
            ),
            events=EventSettings(webhooks=_webhooks(v)),
        )


def _webhooks(v: dict[str, Any]) -> tuple[WebhookSetting, ...]:
    """``TIDINGS_WEBHOOK_URL``/``_SECRET`` (``_SECRET2`` for rotation, ``_TYPES`` comma-separated),
    plus ``[[webhooks]]`` tables (url, secrets, types) in the TOML file."""
    hooks: list[WebhookSetting] = []
    if v.get("webhook_url"):
        secrets = [str(v[k]) for k in ("webhook_secret", "webhook_secret2") if v.get(k)]
        if not secrets:
            raise ConfigError("TIDINGS_WEBHOOK_URL needs TIDINGS_WEBHOOK_SECRET.")
        types = v.get("webhook_types")
        hooks.append(
            WebhookSetting(
                _str(v["webhook_url"], "WEBHOOK_URL"),
                tuple(Secret(x) for x in secrets),
                tuple(t.strip() for t in str(types).split(",") if t.strip()) if types else None,
            )
        )
    tables = v.get("webhooks", [])
    if not isinstance(tables, list):
        raise ConfigError("webhooks in the config file must be an array of tables.")
    for n, table in enumerate(tables):
        if not isinstance(table, dict) or not isinstance(table.get("url"), str):
            raise ConfigError(f"webhooks[{n}] in the config file needs a url.")
        secrets = table.get("secrets", [table["secret"]] if "secret" in table else [])
        if not isinstance(secrets, list) or not all(isinstance(x, str) for x in secrets):
            raise ConfigError(f"webhooks[{n}].secrets must be a list of strings.")
        types = table.get("types")
        if types is not None and not (
            isinstance(types, list) and all(isinstance(t, str) for t in types)
        ):
            raise ConfigError(f"webhooks[{n}].types must be a list of event types.")
        hooks.append(
            WebhookSetting(
                table["url"],
                tuple(Secret(x) for x in secrets),
                tuple(types) if types is not None else None,
            )
        )
    return tuple(hooks)


_RATES = ("client_messages_per_second", "http_calls_per_second", "handshakes_per_ip_per_second")
_COUNTS = (
    "client_messages_burst",
    "rate_limited_close_after",
    "http_calls_burst",
    "handshakes_per_ip_burst",
    "max_connections",
    "max_connections_per_ip",
    "max_connections_per_uid",
)


def _limit_values(v: dict[str, Any], d: LimitSettings) -> dict[str, Any]:
    """The rate and connection limits; each must be 0 (off) or more."""
    out: dict[str, Any] = {}
    for name in _RATES:
        value = v.get(name, getattr(d, name))
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(value, bool) or number != number or number < 0 or number == float("inf"):
            raise ConfigError(
                f"TIDINGS_{name.upper()} must be a number of requests per second, at least 0 "
                f"(0 disables the limit), not {value!r}."
            )
        out[name] = number
    for name in _COUNTS:
        out[name] = _int(v.get(name, getattr(d, name)), name.upper(), name.endswith("_burst"))
    return out


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"TIDINGS_{name} must be a non-empty string.")
    return value


def _int(value: Any, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"TIDINGS_{name} must be a whole number, not {value!r}.") from None
    if number < minimum or (maximum is not None and number > maximum):
        limit = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigError(f"TIDINGS_{name} must be at least {minimum}{limit}, not {number}.")
    return number


def _num(value: Any, name: str, *, minimum: float = 0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"TIDINGS_{name} must be a number of seconds, not {value!r}.") from None
    if number != number or number < minimum:
        raise ConfigError(f"TIDINGS_{name} must be at least {minimum} seconds, not {value!r}.")
    return number
