"""Settings of the learned quality estimator and of the PPI estimates (issue 15)."""

from __future__ import annotations

from driftloop.settings.base import Section


class EstimatorSettings(Section):
    """The learned estimator (filled in by the estimator work)."""

    enabled: bool = False


class EstimateSettings(Section):
    """Per-window estimates of the positive rate with intervals (filled in by the estimate work)."""

    enabled: bool = True
