"""Connectors to the outside: promotion targets (serving directory, vLLM adapter API, Kafka events)."""

from __future__ import annotations

from driftloop.connectors.abc import Promotion, PromotionError, PromotionTarget
from driftloop.connectors.registry import build_target, build_targets
from driftloop.settings.connectors import TargetSettings

__all__ = ["Promotion", "PromotionError", "PromotionTarget", "TargetSettings", "build_target", "build_targets"]
