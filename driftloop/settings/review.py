"""Settings of the human review queue (issue 15): which interactions are put in front of reviewers.

Two kinds of slices (see :mod:`driftloop.monitor.review`):

* ``uniform``: a Bernoulli sample at ``uniform_rate``, chosen by a seeded hash of each record's content. It is
  the only slice an unbiased estimate may use, so it has no cap (a cap would favour early arrivals).
* targeted (``drift``, ``low_confidence``, ``negative_feedback``): where a label is most informative; each
  has its own rate and a per-run cap, and none of them ever adds to the uniform slice.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from driftloop.settings.base import Section

TARGETED_SLICES = ("drift", "low_confidence", "negative_feedback")


class SliceSettings(Section):
    """One targeted slice: which share of its eligible interactions is queued, and at most how many per run."""

    rate: float = Field(ge=0, le=1, description="share of the eligible interactions queued (0 turns it off)")
    max_per_run: int = Field(20, ge=0, le=100_000, description="per workload and sampling run")


class WorkloadReviewSettings(Section):
    """Overrides for one workload (``model_id``); what is unset comes from the top-level review settings."""

    enabled: bool | None = Field(None, description="false: nothing of this workload is queued")
    uniform_rate: float | None = Field(None, ge=0, le=1)
    drift: SliceSettings | None = None
    low_confidence: SliceSettings | None = None
    negative_feedback: SliceSettings | None = None


class ReviewSettings(Section):
    """``quality.review``: the sampling policy of the review queue and how long a claim lasts."""

    enabled: bool = Field(False, description="run the sampling job (review needs people, so it is opt-in)")
    # 10 %: the benchmark measures interval coverage and width with a 10 % uniform human slice (30
    # labels per window of 300), so the documented numbers hold at this default; lower it per workload when
    # the traffic is large (the interval widens as 1/sqrt(labels)).
    uniform_rate: float = Field(0.1, ge=0, le=1, description="share of every workload's traffic in the uniform slice")
    seed: str = Field("driftloop-review", min_length=1, max_length=256,
                      description="hash seed of the sampling; changing it draws a different (still uniform) sample")  # fmt: skip
    drift: SliceSettings = Field(default_factory=lambda: SliceSettings(rate=0.05),
                                 description="interactions of windows the monitor flagged as drifted")  # fmt: skip
    low_confidence: SliceSettings = Field(default_factory=lambda: SliceSettings(rate=0.2),
                                          description="interactions the learned estimator is unsure about")  # fmt: skip
    negative_feedback: SliceSettings = Field(default_factory=lambda: SliceSettings(rate=0.5),
                                             description="interactions whose latest user feedback is negative")  # fmt: skip
    low_confidence_margin: float = Field(0.1, gt=0, le=0.5,
                                         description="an estimator score within this of feedback.positive_threshold "
                                                     "is low-confidence")  # fmt: skip
    lookback_hours: float = Field(24, gt=0, description="how far back the targeted slices look for new signals")
    batch_size: int = Field(5000, ge=1, le=1_000_000, description="interactions read per transaction when sampling")
    lease_s: float = Field(600, ge=1, description="a claimed item not labelled within this can be taken by another")
    sample_interval_s: float = Field(60, ge=0, description="scheduler interval of the sampling job (0: not scheduled)")
    workloads: dict[str, WorkloadReviewSettings] = Field(default_factory=dict,
                                                         description="overrides keyed by model_id")  # fmt: skip

    @field_validator("sample_interval_s")
    @classmethod
    def _interval_sane(cls, v: float) -> float:
        if 0 < v < 0.1:
            raise ValueError(f"{v}s is too short: use at least 0.1 seconds, or 0 to disable the job")
        return v

    def active(self) -> bool:
        """Whether any workload is sampled (the job is scheduled only then)."""
        return self.enabled or any(w.enabled for w in self.workloads.values())

    def for_model(self, model_id: str) -> WorkloadPolicy:
        """The effective policy of one workload (its overrides over the defaults)."""
        o = self.workloads.get(model_id) or WorkloadReviewSettings()
        return WorkloadPolicy(
            enabled=self.enabled if o.enabled is None else o.enabled,
            uniform_rate=self.uniform_rate if o.uniform_rate is None else o.uniform_rate,
            slices={s: getattr(o, s) or getattr(self, s) for s in TARGETED_SLICES},
        )


class WorkloadPolicy(Section):
    """The resolved sampling policy of one workload."""

    enabled: bool
    uniform_rate: float
    slices: dict[str, SliceSettings]
