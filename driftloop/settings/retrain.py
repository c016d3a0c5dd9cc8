"""Settings of the retrain loop: policies, promotion targets and the post-promotion watch.

Imports only pydantic (no torch): ``driftloop check-config`` validates retrain policies where the
``retrain`` extra is not installed, and the trainer and the gate take these very models.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from driftloop.settings.alerts import AlertSettings, condition_problems
from driftloop.settings.base import ConditionText, Section, duplicated, unique_names
from driftloop.settings.connectors import TargetSettings
from driftloop.settings.metrics import is_known_metric

GATE_METRICS = ("perplexity", "rouge_l", "bleu", "exact_match", "estimate", "similarity", "judge_win")


class TriggerSettings(Section):
    """When a policy wants a retrain: any of the named alerts open, or the condition true on the latest window."""

    alerts: list[str] = Field(default_factory=list, description="alert rule names; an open alert of one triggers")
    condition: ConditionText | None = Field(None, description="a condition over the latest window's metrics (alert grammar)")

    @model_validator(mode="after")
    def _something(self) -> TriggerSettings:
        if not self.alerts and not self.condition:
            raise ValueError("a trigger needs alerts (rule names) and/or a condition")
        return self


class DataSettings(Section):
    """Which production records become training data."""

    lookback_hours: float = Field(24.0 * 7, gt=0, description="only records newer than this")
    use_corrections: bool = Field(True, description="a feedback correction replaces the response")
    drop_refusals: bool = True
    drop_empty: bool = True
    dedupe: Literal["none", "exact", "near"] = Field("near", description="near: case/space/punctuation-insensitive")
    max_samples: int = Field(20_000, gt=0)
    min_response_chars: int = Field(1, ge=0)
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="the newest share of records, held out for evaluation")
    min_eval_samples: int = Field(20, gt=0)
    workload: str | None = Field(
        None, min_length=1, description="only this workload's records (interactions.workload); default: all"
    )


class LoraSettings(Section):
    """LoRA adapter shape; target_modules empty = chosen per architecture. ``retrain.trainer`` takes it."""

    r: int = Field(8, gt=0, le=1024)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=list, description="module names; empty: per architecture")

    @field_validator("target_modules")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        if not all(name.strip() for name in v):
            raise ValueError("module names must not be empty")
        return v


class TrainingSettings(Section):
    """Optimisation settings of one fine-tuning run; ``retrain.trainer.train_lora`` takes it."""

    epochs: float = Field(1.0, gt=0, le=100)
    max_steps: int = Field(-1, ge=-1, description="-1: train for epochs; >0: exactly this many steps")
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    batch_size: int = Field(8, gt=0)
    batch_tokens: int = Field(0, ge=0, description=">0: token-budget batching (real tokens per step)")
    max_length: int = Field(512, gt=8)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False, description="AdamW weight decay")
    grad_clip: float = Field(1.0, ge=0, allow_inf_nan=False, description="max gradient norm; 0: no clipping")
    seed: int = Field(0, ge=0)
    timeout_minutes: float = Field(120.0, gt=0, description="the training subprocess is killed after this")
    # how a step is cut into micro-batches (what is learned does not change, only memory and speed)
    micro_batch_tokens: int | None = Field(None, ge=0, description="tokens per forward/backward (a packed row, or "
                                           "padded rows); unset: on CUDA at most 16384 and what fits (probed), on CPU "
                                           "the whole step; 0: never cut")  # fmt: skip
    memory_fraction: float = Field(0.85, gt=0, le=1, description="share of the free GPU memory micro-batches may fill")
    # how each micro-batch is computed (again: speed only; see retrain/packed.py)
    packing: bool | None = Field(None, description="pack examples into fixed-length rows with per-document attention; "
                                 "unset: on CUDA, for Llama-like models")  # fmt: skip
    cuda_graphs: bool = Field(True, description="packed steps on CUDA: capture forward/backward once, replay it")
    compile: bool | None = Field(None, description="packed steps: torch.compile the decoder layers; unset: on CUDA")

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if v == 0:
            raise ValueError("must be -1 (train for epochs) or a number of steps >= 1")
        return v


class GateSettings(Section):
    """The statistical promotion gate (paired bootstrap over held-out examples); ``retrain.gate.decide`` takes it."""

    # similarity: MiniLM cosine of the answer to the reference (in distill mode: the teacher's answer);
    # judge_win: a judge's pairwise preference of the answer over the reference (needs gate.judge)
    primary: Literal["perplexity", "rouge_l", "bleu", "exact_match", "estimate", "similarity", "judge_win"] = (
        "perplexity"
    )
    min_improvement: float = Field(0.0, allow_inf_nan=False, description="lower bound the primary's interval must exceed")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    n_bootstrap: int = Field(2000, ge=100, le=100_000)
    guards: dict[str, float] = Field(default_factory=lambda: {"rouge_l": 0.02})
    min_examples: int = Field(20, gt=0)
    seed: int = Field(0, description="bootstrap random seed: the same scores and seed give the same decision")
    golden_set: str | None = Field(None, description="JSONL of {prompt, reference}: a pinned evaluation suite")
    max_new_tokens: int = Field(64, gt=0, le=4096)
    generate: bool = Field(True, description="generate answers for ROUGE-L/BLEU/exact match (perplexity needs none)")
    estimate: bool = Field(
        False,
        description="score both models' generated answers with the workload's estimator champion "
        "(quality.estimator) and compare them as metric 'estimate' (mean P(positive); needs generate)",
    )
    judge: str | None = Field(None, description="a quality.judges name: metric judge_win (pairwise vs the reference)")

    @field_validator("guards")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        for k, tol in v.items():
            if k not in GATE_METRICS:
                raise ValueError(f"unknown guard metric {k!r}; use one of {list(GATE_METRICS)}")
            if not (math.isfinite(tol) and tol >= 0):
                raise ValueError(f"guard {k}: tolerance must be a finite number >= 0 (got {tol})")
        return v

    @model_validator(mode="after")
    def _primary_not_guard(self) -> GateSettings:
        if self.primary in self.guards:
            raise ValueError(f"{self.primary} is the primary metric; remove it from guards")
        if not (self.estimate and self.generate) and (self.primary == "estimate" or "estimate" in self.guards):
            raise ValueError("metric 'estimate' needs gate.estimate: true and gate.generate: true")
        if self.judge is None and (self.primary == "judge_win" or "judge_win" in self.guards):
            raise ValueError("metric 'judge_win' needs gate.judge (a quality.judges name)")
        return self


class TeacherEndpointSettings(Section):
    """A teacher called through an OpenAI-compatible chat endpoint, within a rate and a budget, cached."""

    base_url: str = Field(pattern=r"^https?://\S+$", description=(
        "the server's root or its /v1 (http://teacher:8000 or http://teacher:8000/v1): requests go to "
        "<root>/v1/chat/completions"))  # fmt: skip
    model: str = Field(min_length=1, description="the model name sent in each request")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="environment variable holding the bearer key (never the key)")
    max_requests_per_minute: float = Field(60.0, gt=0)
    budget_requests: int = Field(1000, ge=0, description="most teacher calls per retrain run (cache hits are free)")
    max_tokens: int = Field(512, gt=0, le=32_768)
    temperature: float = Field(0.0, ge=0, le=2)
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(3, ge=0, le=10)
    cache: bool = Field(True, description="answers cached by content (prompt + model + settings) across runs")


class TeacherSettings(Section):
    """Where a distillation policy's target answers come from.

    ``model_id``: logged responses of that model id in the same traffic (shadow or fallback traffic) for the
    workload's prompts; ``endpoint``: a teacher called for prompts that have no logged answer. Both may be
    set (logs first, the endpoint for the rest).
    """

    model_id: str | None = Field(None, min_length=1, description="interactions.model_id of the teacher's traffic")
    endpoint: TeacherEndpointSettings | None = None
    max_prompts: int = Field(2000, gt=0, description="most prompts distilled per run")

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSettings:
        if self.model_id is None and self.endpoint is None:
            raise ValueError("a teacher needs model_id (logged answers) or endpoint (an OpenAI-compatible server)")
        return self


class PolicySettings(Section):
    """A retrain policy: when to retrain which model family, on what data, and how to decide."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    model_id: str = Field(min_length=1, description="the model family: interactions.model_id of its traffic")
    base_model: str = Field(min_length=1, description="local Hugging Face model directory (the first champion)")
    trigger: TriggerSettings
    min_new_samples: int = Field(200, gt=0, description="eligible records since the last run")
    cooldown_minutes: float = Field(360.0, ge=0)
    max_runs_per_day: int = Field(4, gt=0)
    approval: Literal["auto", "manual"] = "auto"
    # sft: positive feedback and corrections (the model's own good answers); distill: the teacher's answers to
    # the workload's prompts; mix: both (a prompt with a correction keeps it)
    mode: Literal["sft", "distill", "mix"] = "sft"
    teacher: TeacherSettings | None = None
    data: DataSettings = Field(default_factory=DataSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    targets: list[str] = Field(default_factory=list, description="promotion target names (retrain.targets)")
    enabled: bool = True

    @model_validator(mode="after")
    def _teacher_for_distill(self) -> PolicySettings:
        if self.mode != "sft" and self.teacher is None:
            raise ValueError(f"mode {self.mode} needs a teacher (teacher.model_id or teacher.endpoint)")
        return self


class WatchSettings(Section):
    """Post-promotion watch: compare live quality after a promotion with the windows before it."""

    enabled: bool = True
    windows: int = Field(3, gt=0, description="N windows after the promotion vs the N before")
    metric: str = Field("quality.feedback_positive_rate", description="a per-window metric (see docs/alerts.md)")
    higher_is_better: bool = True
    tolerance: float = Field(0.05, ge=0, description="roll back when after < before - tolerance (or > for lower)")
    channels: list[str] = Field(default_factory=list,
                                description="alert channels told of a rollback (it is always logged)")  # fmt: skip


class RetrainSettings(Section):
    """The improvement loop: policies, targets, the watch and where artifacts go."""

    enabled: bool = True
    policies: Annotated[list[PolicySettings], unique_names("policy")] = Field(default_factory=list)
    targets: list[TargetSettings] = Field(default_factory=list)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    artifacts_dir: str | None = Field(None, description="datasets, adapters and logs (default: <data_dir>/retrain)")
    python: str | None = Field(None, description="interpreter for the training subprocess (default: this one)")


def cross_check_retrain(r: RetrainSettings, alerts: AlertSettings, judges: list[str] | None = None) -> list[str]:
    """Policies naming unknown alert rules, targets, metrics or (given ``judges``, the quality.judges names)
    judges; ``path: message`` lines."""
    rules = {x.name for x in alerts.rules}
    channels = {c.name for c in alerts.channels}
    targets = [t.name for t in r.targets]
    problems: list[str] = []
    dup = duplicated(targets)
    if dup:
        problems.append(f"retrain.targets: duplicate target name(s) {dup}")
    for i, p in enumerate(r.policies):
        for j, a in enumerate(p.trigger.alerts):
            if a not in rules:
                problems.append(f"retrain.policies.{i}.trigger.alerts.{j}: unknown alert rule {a!r}; "
                                f"defined: {sorted(rules)}")  # fmt: skip
        if p.trigger.condition:
            problems += condition_problems(f"retrain.policies.{i}.trigger.condition", p.trigger.condition)
        if judges is not None and p.gate.judge is not None and p.gate.judge not in judges:
            problems.append(f"retrain.policies.{i}.gate.judge: unknown judge {p.gate.judge!r}; "
                            f"quality.judges: {sorted(judges)}")  # fmt: skip
        for j, t in enumerate(p.targets):
            if t not in targets:
                problems.append(
                    f"retrain.policies.{i}.targets.{j}: unknown target {t!r}; configured: {sorted(targets)}"
                )
    if not is_known_metric(r.watch.metric):
        problems.append(f"retrain.watch.metric: unknown metric {r.watch.metric!r}")
    for j, ch in enumerate(r.watch.channels):
        if ch not in channels:
            problems.append(f"retrain.watch.channels.{j}: unknown channel {ch!r}; configured: {sorted(channels)}")
    return problems
