"""Interfaces and events of the alerting subsystem."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class AlertEvent:
    """Something happened to an alert; subclasses name what, in the past tense."""

    alert_id: int
    rule: str
    model_id: str
    segment: str
    severity: str
    condition: str
    message: str
    value: float | None
    at: datetime
    extra: dict[str, Any] = field(default_factory=dict)
    workload: str = ""  # the group's workload ("": not grouped by workload, or the unnamed workload)

    def stream(self) -> str:
        """``model [workload] / segment``: what the alert is about, for notification titles."""
        return (self.model_id + (f" [{self.workload}]" if self.workload else "")
                + (f" / {self.segment}" if self.segment else ""))  # fmt: skip

    @property
    def event(self) -> str:
        return {"AlertFired": "fired", "AlertResolved": "resolved", "AlertReminded": "reminder"}.get(
            type(self).__name__, "event"
        )

    def payload(self) -> dict[str, Any]:
        """JSON body sent to webhooks."""
        return {
            "event": self.event,
            "alert_id": self.alert_id,
            "rule": self.rule,
            "model_id": self.model_id,
            "workload": self.workload,
            "segment": self.segment,
            "severity": self.severity,
            "condition": self.condition,
            "message": self.message,
            "value": self.value,
            "at": self.at.isoformat(),
            **self.extra,
        }


class AlertFired(AlertEvent):
    """A rule's condition became true (per its hysteresis)."""


class AlertResolved(AlertEvent):
    """A fired alert's condition cleared."""


class AlertReminded(AlertEvent):
    """An alert is still firing after its cooldown."""


class AlertSink(ABC):
    """A notification channel."""

    name: str

    @abstractmethod
    def send(self, event: AlertEvent) -> None:
        """Deliver ``event``; raise on failure (the caller records it and carries on)."""
