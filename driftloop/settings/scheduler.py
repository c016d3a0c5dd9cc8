"""Settings section for the scheduler, its jobs, leader election and data retention."""

from __future__ import annotations

from pydantic import AliasChoices, ConfigDict, Field, field_validator

from driftloop.settings.base import Section


class _Section(Section):
    # the old names of two intervals are accepted as aliases (validation_alias below)
    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)


class RetentionSettings(_Section):
    """How long rows are kept, in days (0 keeps them forever); deletes run in bounded batches."""

    interactions_days: float = Field(30, ge=0, description="interactions and feedback (by their ts)")
    rejected_days: float = Field(30, ge=0, description="rejected_messages")
    monitor_days: float = Field(180, ge=0, description="monitor_windows with their drift results and metrics")
    job_runs_days: float = Field(14, ge=0, description="job_runs")
    batch_size: int = Field(10_000, gt=0, le=100_000, description="rows deleted per transaction")


class SchedulerSettings(_Section):
    """Scheduled jobs (intervals in seconds, 0 disables a job) and leader election."""

    enabled: bool = Field(True, description="run the scheduler (with leader election) in `driftloop run`")
    ingest: bool = Field(True, description="`driftloop run` also runs ingestion")
    drift_check_s: float = Field(60, ge=0, validation_alias=AliasChoices("drift_check_s", "window_check_s"),
                                 description="drift + quality check of every due window")  # fmt: skip
    quality_check_s: float = Field(0, ge=0, description="quality-only pass (0: quality runs inside drift_check)")
    policy_evaluation_s: float = Field(60, ge=0,
                                       validation_alias=AliasChoices("policy_evaluation_s", "alert_evaluation_s"),
                                       description="evaluate alert policies")  # fmt: skip
    retention_s: float = Field(3600, ge=0, description="delete rows older than the retention")
    retrain_check_s: float = Field(60, ge=0, description="evaluate retrain policies (a triggered run is queued)")
    retrain_worker_s: float = Field(5, ge=0, description="leader: claim and run queued retrain jobs (0: none run)")
    promotion_watch_s: float = Field(60, ge=0, description="post-promotion watch (automatic rollback)")
    misfire_grace_s: int = Field(60, gt=0, description="a run late by more than this is skipped, not run late")
    leader_lock_id: int = Field(0x44524654, ge=-(2**63), lt=2**63,
                                description="PostgreSQL advisory lock key: one key per driftloop deployment")  # fmt: skip
    leader_retry_s: float = Field(1.0, gt=0, le=60, description="how often followers try to become leader")
    leader_check_s: float = Field(1.0, gt=0, le=60, description="how often the leader checks it still holds the lock")
    leader_timeout_s: float = Field(3.0, gt=0, le=120,
                                    description="a lock check that takes longer counts as a lost lock")  # fmt: skip
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @field_validator("drift_check_s", "quality_check_s", "policy_evaluation_s", "retention_s", "retrain_check_s",
                     "retrain_worker_s", "promotion_watch_s")
    @classmethod
    def _interval_sane(cls, v: float) -> float:
        if 0 < v < 0.1:
            raise ValueError(f"{v}s is too short: use at least 0.1 seconds, or 0 to disable the job")
        return v

    @property
    def takeover_delay_s(self) -> float:
        """How long a new leader holds the lock before it starts jobs.

        A leader that lost its lock session notices within ``leader_check_s + leader_timeout_s``
        and stops its scheduler; waiting that long before starting ours means the two never
        schedule jobs at the same time.
        """
        return self.leader_check_s + self.leader_timeout_s
