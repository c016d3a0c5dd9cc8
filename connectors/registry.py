"""Build promotion targets from their settings."""

from __future__ import annotations

from collections.abc import Iterable

from driftloop.connectors.abc import PromotionTarget
from driftloop.settings.connectors import TargetSettings


def build_target(ts: TargetSettings, *, default_bootstrap: list[str] | None = None) -> PromotionTarget:
    """The target described by ``ts``; a kafka target without bootstrap_servers uses ``default_bootstrap``."""
    if ts.type == "filesystem":
        from driftloop.connectors.filesystem import FilesystemPromotionTarget

        return FilesystemPromotionTarget(ts)
    if ts.type == "vllm":
        from driftloop.connectors.vllm import VllmPromotionTarget

        return VllmPromotionTarget(ts)
    from driftloop.connectors.kafka_event import KafkaPromotionTarget

    bootstrap = ts.bootstrap_servers or default_bootstrap
    if not bootstrap:
        raise ValueError(f"kafka target {ts.name!r} has no bootstrap_servers and no default was given: set one")
    return KafkaPromotionTarget(ts, list(bootstrap))


def build_targets(
    targets: Iterable[TargetSettings], *, default_bootstrap: list[str] | None = None
) -> dict[str, PromotionTarget]:
    """Instantiate the configured targets by name (configuration order kept)."""
    out: dict[str, PromotionTarget] = {}
    for ts in targets:
        if ts.name in out:
            raise ValueError(f"duplicate promotion target name {ts.name!r}")
        out[ts.name] = build_target(ts, default_bootstrap=default_bootstrap)
    return out
