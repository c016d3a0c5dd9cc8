"""Connectors to the outside: promotion targets (serving directory, vLLM adapter API, Kafka events)."""

from __future__ import annotations

from connectors.abc import Promotion, PromotionError, PromotionTarget
from connectors.config import TargetSettings
from connectors.registry import build_target, build_targets

__all__ = ["Promotion", "PromotionError", "PromotionTarget", "TargetSettings", "build_target", "build_targets"]
