"""Settings section for monitoring (windows, references, features, drift methods)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class MonitorSettings(_Section):
    """Windows, references and drift methods."""

    enabled: bool = True
    reports_dir: str = "driftloop-data/reports"
