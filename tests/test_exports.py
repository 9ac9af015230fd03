"""The public surface of ``tidings``."""

from __future__ import annotations

import importlib

import tidings


def test_package_all_names_exist() -> None:
    """Every name in tidings.__all__ is importable from the package."""
    for name in tidings.__all__:
        assert hasattr(tidings, name), name


def test_public_modules_declare_all() -> None:
    """Every public module lists its exports."""
    for module in (
        "tidings.errors",
        "tidings.config",
        "tidings.core.ids",
        "tidings.core.names",
        "tidings.core.protocol",
        "tidings.core.tokens",
        "tidings.core.permissions",
        "tidings.core.patterns",
        "tidings.core.presence",
        "tidings.core.reactions",
        "tidings.core.revocations",
        "tidings.core.moderation",
        "tidings.core.storage",
        "tidings.hub.hub",
        "tidings.hub.publishing",
        "tidings.hub.subscriptions",
        "tidings.hub.control",
        "tidings.hub.moderation",
        "tidings.hub.revocations",
        "tidings.server.moderation_api",
        "tidings.server.revocations_api",
        "tidings.core.requests",
        "tidings.broker",
        "tidings.store",
        "tidings.sdk",
        "tidings.sdk.client",
        "tidings.core.resume",
        "tidings.hub.recovery",
    ):
        mod = importlib.import_module(module)
        for name in mod.__all__:
            assert hasattr(mod, name), f"{module}.{name}"


def test_webhooks_verify_reachable_from_top_level() -> None:
    assert callable(tidings.webhooks.verify)
