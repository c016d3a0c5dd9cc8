"""Response and request models of the HTTP API (they make the published OpenAPI spec precise)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Check(BaseModel):
    ok: bool
    detail: str


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, Check]


class ErrorOut(BaseModel):
    detail: str = Field(description="what went wrong and what to do")


class Window(BaseModel):
    """A checked monitoring window (``monitor_windows``)."""

    id: int
    model_id: str
    segment: str
    window_kind: str
    window_index: int
    window_start: datetime
    window_end: datetime
    n_records: int
    ref_kind: str
    ref_n: int
    status: str = Field(description="ok | insufficient_data | error")
    drift_score: float | None = Field(
        description="share of signal groups drifted, n_groups_drifted / n_groups "
        "(windows checked before migration 0010: share of features)"
    )
    drifted: bool | None = Field(description="driftloop's verdict: n_groups_drifted / n_groups >= drift_share")
    n_groups: int | None = Field(None, description="signal groups tested (null on windows checked before 0010)")
    n_groups_drifted: int | None = Field(None, description="groups with a feature drifted after Benjamini-Hochberg")
    drift_share: float | None = Field(None, description="the threshold the verdict used (monitor.drift_share)")
    healthy: bool | None = Field(None, description="the window may serve as a last_healthy reference")
    n_features: int | None = Field(description="features (columns) tested")
    n_drifted: int | None = Field(description="features drifted after Benjamini-Hochberg")
    has_report: bool
    report_url: str | None
    error: str | None
    duration_s: float | None
    created_at: datetime


class DriftResult(BaseModel):
    """One feature's drift test in a window (``drift_results``)."""

    id: int
    window_id: int
    feature: str
    feature_type: str
    method: str
    statistic: float | None
    threshold: float | None
    p_value: float | None
    p_adjusted: float | None
    drifted: bool
    feature_group: str | None = Field(None, description="the signal group the feature counts towards in the verdict")


class WindowDetail(Window):
    metrics: dict[str, float | None] = Field(description="quality and traffic metrics of the window")


class Alert(BaseModel):
    """An alert (``alerts``)."""

    id: int
    rule: str
    model_id: str
    segment: str
    severity: str
    state: str = Field(description="fired | acknowledged | resolved")
    condition: str
    message: str
    value: float | None
    window_id: int | None
    fired_at: datetime
    last_evaluated_at: datetime
    resolved_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    notify_count: int


class JobRun(BaseModel):
    """A scheduled-job run (``job_runs``)."""

    id: int
    job: str
    instance: str
    status: str = Field(description="running | succeeded | failed | skipped")
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    result: str | None
    error: str | None


class RetrainJob(BaseModel):
    """A retrain run (``retrain_jobs``)."""

    id: int
    policy: str
    model_id: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    trigger: dict[str, Any] | None
    stage: str | None
    progress: float
    message: str | None
    error: str | None
    logs_path: str | None
    instance: str | None = Field(description="the daemon (leader) that claimed and runs it; null while queued")
    requested_by: str | None = Field(
        None, description="who queued it: api:<actor>, cli:<host:pid>, scheduler:<instance>"
    )
    cancel_requested: bool
    dataset_hash: str | None
    version_id: int | None
    timings: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    claimed_at: datetime | None = None
    heartbeat_at: datetime | None = Field(None, description="last sign of life of the run (while running)")


class ModelVersion(BaseModel):
    """A registered model version (``model_versions``) and the aliases pointing at it."""

    id: int
    family: str
    version: str
    status: str
    base_model: str
    adapter_path: str | None
    parent_id: int | None
    job_id: int | None
    policy: str | None
    dataset_hash: str | None
    created_at: datetime
    aliases: list[str]
    gate_promote: bool | None = Field(description="the promotion gate's verdict, if it ran")


class ModelEvent(BaseModel):
    """An audit-log entry (``model_events``)."""

    id: int
    action: str
    from_status: str | None
    to_status: str | None
    actor: str
    reason: str | None
    details: dict[str, Any] | None
    at: datetime


class ModelVersionDetail(ModelVersion):
    config: dict[str, Any] | None
    metrics: dict[str, Any] | None
    gate: dict[str, Any] | None
    dataset_path: str | None
    events: list[ModelEvent]


class ModelFamily(BaseModel):
    family: str
    champion: ModelVersion | None
    previous: ModelVersion | None
    versions: int
    by_status: dict[str, int]


class Accepted(BaseModel):
    """A started background action."""

    status: Literal["accepted"] = "accepted"
    job: str
    job_id: int | None = Field(None, description="retrain_jobs.id for a retrain")
    detail: str


class AckResult(BaseModel):
    alert: Alert


class CancelResult(BaseModel):
    job_id: int
    status: str = Field(description="cancelled, cancelling, or the finished job's status")


class ActionBody(BaseModel):
    """Optional reason kept in the registry's audit log."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000, pattern=r"^[^\x00]*$")
