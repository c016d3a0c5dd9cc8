"""Settings of the learned quality estimator and of the PPI estimates (issue 15)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from driftloop.settings.base import Section


class EstimatorSettings(Section):
    """``quality.estimator``: a calibrated logistic regression on MiniLM embeddings and cheap features
    (see :mod:`driftloop.monitor.estimator`)."""

    enabled: bool = False
    embedding_model: str | None = Field(
        None, description="local sentence-transformers folder; unset: the shipped MiniLM (never downloads)"
    )
    regularization: float = Field(
        0.05, gt=0, le=100, description="inverse L2 strength C of the logistic regression on standardised features"
    )
    cv_folds: int = Field(5, ge=2, le=20, description="folds whose held-out scores fit the Platt calibration")
    min_labels: int = Field(40, ge=10, description="fewer labels (or fewer than cv_folds of either class): no training")
    seed: int = Field(0, description="fold assignment; the fit is otherwise deterministic")
    # the service's jobs (driftloop.retrain.estimator_jobs): train daily, score every few minutes
    train_interval_s: float = Field(
        86400, ge=0, description="seconds between `estimator_train` runs (0: not scheduled; train by hand)"
    )
    score_interval_s: float = Field(
        300, ge=0, description="seconds between `estimator_score` runs (0: only the drift check scores)"
    )
    train_max_labels: int = Field(50_000, ge=10, description="newest labelled interactions a training uses at most")
    score_lookback_days: float = Field(
        7, gt=0, description="interactions newer than this are scored by the champion (newest first)"
    )
    score_batch: int = Field(256, ge=1, le=10_000, description="interactions embedded and written per batch")
    score_max_per_run: int = Field(20_000, ge=1, description="interactions one scoring run scores at most")


class EstimateSettings(Section):
    """``quality.estimate`` — the positive rate of every checked window, estimated with an interval.

    PPI++ combines the window's uniform human slice (``human_review`` scores marked ``"slice": "uniform"`` in
    their metadata) with a machine source that scored the window's interactions; without machine scores the
    estimate is the classical one from the human labels alone. Fewer than ``min_labeled`` labels: unknown (NULL).
    """

    enabled: bool = Field(True, description="compute quality.estimate* for every checked window and its reference")
    machine_source: str = Field(
        "auto",
        description="machine scores to combine with the human labels: 'auto' (an estimator if it scored the "
        "window, else the first judge by name), 'estimator' (any estimator version), 'none' (human labels "
        "only), or an exact source such as 'judge:<name>' or 'estimator:<version>'",
    )
    score_name: str = Field("quality", pattern=r"^[a-z][a-z0-9_]{0,63}$", description="the scores' name column")
    slice: str = Field("uniform", min_length=1, description="metadata 'slice' of the human labels the estimate uses")
    alpha: float = Field(0.1, gt=0, lt=0.5, description="1 - coverage of the interval (0.1: a 90 % interval)")
    min_labeled: int = Field(10, ge=2, description="fewer uniform human labels in a window: the estimate is NULL")

    @field_validator("machine_source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v in ("auto", "estimator", "none") or re.match(r"^(judge|estimator):[A-Za-z0-9][A-Za-z0-9_.\-]{0,47}$", v):
            return v
        raise ValueError(f"machine_source {v!r}: use auto, estimator, none, judge:<name> or estimator:<version>")
