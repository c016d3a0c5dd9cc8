"""Settings section for alert rules and notification channels."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class AlertSettings(_Section):
    """Alert rules and notification channels."""

    enabled: bool = True


def cross_check_alerts(settings: object) -> list[str]:
    """Cross-section checks (rules naming unknown channels or metrics); ``path: message`` lines."""
    return []
