"""Promotion targets: the interface every serving backend implements, and the promotion event."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

PROMOTED = "ModelPromoted"
REVERTED = "ModelPromotionReverted"


def safe_name(text: str) -> str:
    """``text`` with runs of characters outside ``[A-Za-z0-9._-]`` replaced by ``-`` (no leading dot or dash)."""
    out = _UNSAFE.sub("-", text).lstrip(".-")
    return out or "x"


@dataclass(frozen=True)
class Promotion:
    """One switch of a model family's served version (the same object is handed to ``apply`` and ``revert``).

    ``adapter_path=None`` means the new version is the base model alone (no LoRA adapter); the same holds for
    ``previous_adapter_path`` and the previous version.
    """

    family: str
    version: str
    adapter_path: str | None
    base_model: str
    previous_version: str | None
    previous_adapter_path: str | None
    reason: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if not self.family or not self.version:
            raise ValueError("a promotion needs a non-empty family and version")

    def lora_name(self) -> str:
        """Name of the new version's adapter on the serving side: ``<family>-<version>``, safe characters only."""
        return safe_name(f"{self.family}-{self.version}")

    def previous_lora_name(self) -> str | None:
        """The previous version's adapter name; None if there is no previous version or it was the base model alone."""
        if self.previous_version is None or self.previous_adapter_path is None:
            return None
        return safe_name(f"{self.family}-{self.previous_version}")

    def payload(self, event: str = PROMOTED) -> dict[str, Any]:
        """JSON-able dict of every field plus ``event`` (``ModelPromoted`` or ``ModelPromotionReverted``).

        ``lora_name`` / ``previous_lora_name`` are None where that version is the base model alone.
        """
        return {
            "event": event,
            "family": self.family,
            "version": self.version,
            "lora_name": self.lora_name() if self.adapter_path is not None else None,
            "adapter_path": self.adapter_path,
            "base_model": self.base_model,
            "previous_version": self.previous_version,
            "previous_lora_name": self.previous_lora_name(),
            "previous_adapter_path": self.previous_adapter_path,
            "reason": self.reason,
            "at": self.at.isoformat(),
        }


class PromotionError(Exception):
    """A target could not apply or revert a promotion (after its own retries); the message says what to do."""

    def __init__(self, message: str, *, target: str | None = None) -> None:
        super().__init__(message)
        self.target = target


class PromotionTarget(ABC):
    """A place where a promoted model version becomes the served one (a directory, a vLLM server, a topic)."""

    name: str

    @abstractmethod
    def apply(self, p: Promotion) -> None:
        """Make ``p.version`` the served one. Idempotent. Raise PromotionError on failure (after its own retries)."""

    @abstractmethod
    def revert(self, p: Promotion) -> None:
        """Undo ``apply(p)``: serve ``p.previous_version`` again (best effort, idempotent)."""

    def check(self) -> None:  # noqa: B027 - optional hook, deliberately a no-op by default
        """Optional readiness probe; raise PromotionError if the target is unusable."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (optional)."""
