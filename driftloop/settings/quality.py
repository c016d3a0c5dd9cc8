"""Settings of quality without many labels (issue 15): review queue, judges, estimator, estimates.

One model per thing, each in its own module; this section only groups them under ``quality:``.
"""

from __future__ import annotations

from pydantic import Field

from driftloop.settings.base import Section
from driftloop.settings.estimator import EstimateSettings, EstimatorSettings
from driftloop.settings.judges import JudgeSettings
from driftloop.settings.review import ReviewSettings


class QualitySettings(Section):
    """``quality:`` — review queue, judges, learned estimator, per-window estimates."""

    review: ReviewSettings = Field(default_factory=ReviewSettings)
    judges: list[JudgeSettings] = Field(default_factory=list)
    estimator: EstimatorSettings = Field(default_factory=EstimatorSettings)
    estimate: EstimateSettings = Field(default_factory=EstimateSettings)
