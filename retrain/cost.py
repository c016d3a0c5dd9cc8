"""What distillation kept and what it saved: the gate's report of a ``distill`` or ``mix`` run.

Kept: on the held-out prompts whose reference is the teacher's answer, how much of the teacher's quality
the candidate retains, per metric, as the candidate's mean relative to the teacher's own score against
itself (similarity 1, ROUGE-L 1, BLEU 100, exact match 1, and 0.5 for a judge's win rate: a tie with the
teacher is full retention, so the judge's ratio is capped at 1), with a bootstrap interval of the mean. The
champion's retention is shown beside it (what the old student kept).

Saved: the student's speed measured by driftloop while it generated those answers (wall time of each
generate call; the worker generates in batches, so a request's latency is its batch's time and tokens/s is
the throughput: total generated tokens over total generate time), against the teacher's latency from the
logs of ``teacher.model_id`` (``latency_ms``, ``tokens_out`` of its interactions in the lookback) or, for
an endpoint teacher, the latency measured on its calls (kept in the answer cache). The two are measured on
different hardware and batching, so the ratio is a guide to the saving, not a benchmark.

Plain functions and dataclasses; numpy/scipy only (the daemon builds the report, no torch).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from scipy import stats
from sqlalchemy import Engine, select

from driftloop.retrain.gate import ExampleScore
from driftloop.store.models import interactions

#: the teacher's score against itself: what "all of the teacher's quality" is per metric
TEACHER_SELF = {"similarity": 1.0, "rouge_l": 1.0, "bleu": 100.0, "exact_match": 1.0, "judge_win": 0.5}
REPORT_METRICS = ("similarity", "judge_win", "rouge_l", "bleu")


@dataclass(frozen=True)
class Speed:
    """Latency percentiles and throughput of one side (student or teacher) and where they were measured."""

    source: str  # eval (driftloop timed the student's generate calls) | logs | endpoint
    n: int
    p50_ms: float | None
    p95_ms: float | None
    tokens_per_s: float | None = None
    mean_tokens: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def student_speed(scores: Sequence[ExampleScore]) -> Speed | None:
    """The candidate's speed on the answers it generated for the gate (None without timings)."""
    timed = [s for s in scores if s.gen_latency_s is not None and s.gen_tokens is not None]
    if not timed:
        return None
    lat = [float(s.gen_latency_s or 0.0) * 1000.0 for s in timed]
    toks = [int(s.gen_tokens or 0) for s in timed]
    # each generate call counted once: its time split evenly over the examples it generated
    busy = sum(float(s.gen_latency_s or 0.0) / max(1, int(s.gen_batch or 1)) for s in timed)
    return Speed("eval", len(timed), _pct(lat, 50), _pct(lat, 95), sum(toks) / busy if busy > 0 else None,
                 float(np.mean(toks)))  # fmt: skip


def speed_from_latencies(source: str, latency_ms: Sequence[float], tokens: Sequence[int | None] | None = None,
                         ) -> Speed | None:  # fmt: skip
    """Percentiles of ``latency_ms``; tokens/s over the requests that logged both a latency and a token count."""
    lat = [float(x) for x in latency_ms if x is not None and math.isfinite(float(x)) and float(x) >= 0]
    if not lat:
        return None
    tps = mean_tok = None
    if tokens is not None:
        pairs = [(float(ms), int(t)) for ms, t in zip(latency_ms, tokens, strict=True)
                 if ms is not None and t is not None and float(ms) > 0]  # fmt: skip
        if pairs:
            tps = sum(t for _, t in pairs) / (sum(ms for ms, _ in pairs) / 1000.0)
            mean_tok = float(np.mean([t for _, t in pairs]))
    return Speed(source, len(lat), _pct(lat, 50), _pct(lat, 95), tps, mean_tok)


def teacher_log_speed(engine: Engine, model_id: str, since: datetime, until: datetime,
                      workload: str | None = None) -> Speed | None:  # fmt: skip
    """The teacher's latency (and tokens/s) from its logged interactions in [since, until)."""
    i = interactions.c
    q = select(i.latency_ms, i.tokens_out).where(i.model_id == model_id, i.ts >= since, i.ts < until,
                                                 i.latency_ms.is_not(None))  # fmt: skip
    if workload is not None:
        q = q.where(i.workload == workload)
    with engine.connect() as c:
        rows = c.execute(q).all()
    return speed_from_latencies("logs", [r[0] for r in rows], [r[1] for r in rows])


@dataclass(frozen=True)
class Retained:
    """The share of the teacher's quality on one metric: the candidate's (and champion's) mean / the teacher's."""

    metric: str
    n: int
    teacher: float  # the teacher's score against itself
    candidate: float  # the candidate's mean
    retained: float  # candidate / teacher (capped at 1 for judge_win)
    ci_low: float
    ci_high: float
    champion: float | None = None  # the champion's mean
    champion_retained: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean_interval(x: np.ndarray, confidence: float, n_bootstrap: int, seed: int) -> tuple[float, float]:
    point = float(x.mean())
    if len(x) < 2:
        return point, point
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # identical values: a zero-width interval
        res = stats.bootstrap((x,), np.mean, vectorized=True, n_resamples=n_bootstrap, confidence_level=confidence,
                              method="percentile", rng=np.random.default_rng(seed))  # fmt: skip
    lo, hi = res.confidence_interval
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return point, point
    return float(lo), float(hi)


def retained_quality(champion: Sequence[ExampleScore], candidate: Sequence[ExampleScore],
                     metrics: Sequence[str] = REPORT_METRICS, *, confidence: float = 0.95, n_bootstrap: int = 2000,
                     seed: int = 0) -> list[Retained]:  # fmt: skip
    """Retention per metric computed for every example (metrics missing on any example are left out)."""
    out: list[Retained] = []
    for m in metrics:
        if m not in TEACHER_SELF:
            raise ValueError(f"no teacher reference value for metric {m!r}; use one of {list(TEACHER_SELF)}")
        vals = [getattr(s, m) for s in candidate]
        if not vals or any(v is None for v in vals):
            continue
        base = TEACHER_SELF[m]
        cap = 1.0 if m == "judge_win" else math.inf
        x = np.asarray(vals, dtype=np.float64)
        lo, hi = _mean_interval(x, confidence, n_bootstrap, seed)
        ch_vals = [getattr(s, m) for s in champion]
        ch = float(np.mean(ch_vals)) if ch_vals and all(v is not None for v in ch_vals) else None
        out.append(Retained(m, len(x), base, float(x.mean()), min(cap, float(x.mean()) / base), min(cap, lo / base),
                            min(cap, hi / base), ch, None if ch is None else min(cap, ch / base)))  # fmt: skip
    return out


@dataclass
class DistillReport:
    """What was kept (retained quality) and what was saved (student vs teacher speed)."""

    mode: str
    teacher: dict[str, Any] = field(default_factory=dict)  # the teacher's answer counts (retrain.distill.TeacherStats)
    retained: list[Retained] = field(default_factory=list)
    student: Speed | None = None
    teacher_speed: Speed | None = None
    confidence: float = 0.95
    notes: list[str] = field(default_factory=list)

    @property
    def latency_ratio(self) -> float | None:
        """Teacher p50 latency / student p50 latency (> 1: the student answers faster)."""
        s, t = self.student, self.teacher_speed
        if s is None or t is None or not s.p50_ms or t.p50_ms is None:
            return None
        return t.p50_ms / s.p50_ms

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "teacher": dict(self.teacher), "retained": [r.to_dict() for r in self.retained],
                "student": self.student.to_dict() if self.student else None,
                "teacher_speed": self.teacher_speed.to_dict() if self.teacher_speed else None,
                "latency_ratio": self.latency_ratio, "confidence": self.confidence, "notes": list(self.notes)}  # fmt: skip


def build_report(mode: str, champion: Sequence[ExampleScore], candidate: Sequence[ExampleScore], *,
                 teacher_counts: dict[str, Any], teacher_speed: Speed | None, confidence: float = 0.95,
                 n_bootstrap: int = 2000, seed: int = 0) -> DistillReport:  # fmt: skip
    """The report for held-out examples whose reference is the teacher's answer (champion and candidate aligned)."""
    r = DistillReport(mode, dict(teacher_counts), confidence=confidence)
    if len(champion) != len(candidate):
        raise ValueError(f"champion and candidate scores do not align: {len(champion)} vs {len(candidate)}")
    if not candidate:
        r.notes.append("no held-out example has the teacher's answer as its reference: nothing to retain")
    r.retained = retained_quality(champion, candidate, confidence=confidence, n_bootstrap=n_bootstrap, seed=seed)
    r.student = student_speed(candidate)
    r.teacher_speed = teacher_speed
    if r.student is None:
        r.notes.append("the student's speed was not measured (generation off)")
    if teacher_speed is None:
        r.notes.append("no teacher latency: none logged for teacher.model_id and no endpoint call timed")
    return r


def _ms(v: Any) -> str:
    return "-" if v is None else f"{float(v):.0f} ms"


def _speed_line(name: str, s: dict[str, Any] | None) -> str:
    if not s:
        return f"  {name:<8} -"
    tps = s.get("tokens_per_s")
    return (f"  {name:<8} p50 {_ms(s.get('p50_ms'))}, p95 {_ms(s.get('p95_ms'))}, "
            f"{'-' if tps is None else f'{tps:.1f}'} tokens/s (n {s.get('n')}, {s.get('source')})")  # fmt: skip


def report_lines(d: dict[str, Any]) -> list[str]:
    """Human lines of a report dict (``DistillReport.to_dict``) for the gate summary."""
    conf = d.get("confidence")
    ci = f"{conf:.0%} CI" if isinstance(conf, (int, float)) else "CI"
    lines = [f"distillation ({d.get('mode')}): quality retained vs the teacher [{ci}]"]
    for r in d.get("retained", []):
        ch = r.get("champion_retained")
        lines.append(f"  {r['metric']:<11} {r['retained']:.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}] "
                     f"(candidate {r['candidate']:.4g} of {r['teacher']:g}; n {r['n']}"
                     + ("" if ch is None else f"; champion {ch:.1%}") + ")")  # fmt: skip
    if not d.get("retained"):
        lines.append("  (no metric)")
    lines.append("cost: student vs teacher")
    lines.append(_speed_line("student", d.get("student")))
    lines.append(_speed_line("teacher", d.get("teacher_speed")))
    if d.get("latency_ratio"):
        lines.append(f"  the student answers {d['latency_ratio']:.2f}x faster than the teacher (p50)"
                     if d["latency_ratio"] >= 1 else
                     f"  the student answers {1 / d['latency_ratio']:.2f}x slower than the teacher (p50)")  # fmt: skip
    t = d.get("teacher") or {}
    if t:
        lines.append("teacher answers: " + ", ".join(f"{k} {v}" for k, v in t.items() if k != "endpoint_latency_ms"))
    lines += [f"  - {n}" for n in d.get("notes", [])]
    return lines
