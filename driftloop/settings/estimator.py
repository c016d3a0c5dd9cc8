"""Settings of the learned quality estimator and of the PPI estimates (issue 15)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from driftloop.settings.base import Section


class EstimatorSettings(Section):
    """The learned estimator (filled in by the estimator work)."""

    enabled: bool = False


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
