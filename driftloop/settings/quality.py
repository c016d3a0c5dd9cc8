"""Settings of quality without many labels (issue 15): review queue, judges, estimator, estimates.

One model per thing, each in its own module; this section only groups them under ``quality:``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from driftloop.settings.base import Section, duplicated
from driftloop.settings.estimator import EstimateSettings, EstimatorSettings
from driftloop.settings.judges import JudgeSettings
from driftloop.settings.review import ReviewSettings


class QualitySettings(Section):
    """``quality:`` — review queue, judges, learned estimator, per-window estimates."""

    review: ReviewSettings = Field(default_factory=ReviewSettings)
    judges: list[JudgeSettings] = Field(default_factory=list)
    estimator: EstimatorSettings = Field(default_factory=EstimatorSettings)
    estimate: EstimateSettings = Field(default_factory=EstimateSettings)

    @model_validator(mode="after")
    def _unique_judges(self) -> QualitySettings:
        # a judge's name is its score source (judge:<name>), its cache and its budget: two with one name would
        # share all three
        dup = duplicated(j.name for j in self.judges)
        if dup:
            raise ValueError(f"judges: names must be unique; repeated: {', '.join(dup)}")
        return self
