"""Settings section for the scheduler, its jobs, leader election and data retention."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class RetentionSettings(_Section):
    """How long rows are kept (days); 0 keeps them forever."""

    interactions_days: float = Field(30, ge=0)
    rejected_days: float = Field(30, ge=0)
    monitor_days: float = Field(180, ge=0)
    job_runs_days: float = Field(14, ge=0)
    batch_size: int = Field(10_000, gt=0)


class SchedulerSettings(_Section):
    """APScheduler jobs (intervals in seconds) and leader election."""

    enabled: bool = True
    window_check_s: float = Field(60, gt=0, description="drift + quality check of due windows")
    alert_evaluation_s: float = Field(60, gt=0)
    retention_s: float = Field(3600, gt=0)
    misfire_grace_s: int = Field(30, gt=0)
    leader_lock_id: int = Field(0x44524654, description="PostgreSQL advisory lock key for the leader")
    leader_retry_s: float = Field(1.0, gt=0, description="how often followers try to become leader")
    leader_check_s: float = Field(2.0, gt=0, description="how often the leader checks it still holds the lock")
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    ingest: bool = Field(True, description="driftloop run also runs ingestion")
