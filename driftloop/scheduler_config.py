"""Settings section for the scheduler and leader election."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SchedulerSettings(BaseModel):
    """APScheduler settings for the scheduled jobs."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    enabled: bool = True
    leader_lock_id: int = Field(0x44524654, description="PostgreSQL advisory lock key for the leader")
