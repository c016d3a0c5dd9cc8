"""The statistical promotion gate: paired bootstrap of champion vs candidate per-example scores.

numpy and scipy.stats (no torch): the daemon gates the scores that the training subprocess wrote as JSON.

A candidate is promoted when, on the ``heldout`` suite, the lower end of the paired bootstrap interval of
the primary metric's improvement lies above ``GateSettings.min_improvement``; no guard metric regresses beyond
its tolerance on any suite; the primary is not worse on the other suites (e.g. ``golden``); and the
held-out suite has at least ``min_examples`` examples. Improvements are oriented so that positive means
"candidate better": for perplexity the relative reduction ``1 - ppl_cand / ppl_champ``, for the other
metrics the difference of means ``candidate - champion``.

``similarity`` and ``judge_win`` (closeness to the reference, which in distillation is the teacher's answer)
are computed by the daemon after the worker (``retrain.distill``) and set with :func:`with_metric`; like
``estimate`` they are left out silently when not configured. A distillation run's decision also carries a
``report`` of what was kept and saved (``retrain.cost``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from driftloop.settings.retrain import GateSettings

HELDOUT = "heldout"


@dataclass(frozen=True)
class MetricInfo:
    """A gate metric: its name, orientation and a short description."""

    name: str
    higher_is_better: bool
    description: str


METRICS: dict[str, MetricInfo] = {
    "perplexity": MetricInfo("perplexity", False, "corpus-level exp(sum NLL / sum reference tokens); lower is better"),
    "rouge_l": MetricInfo("rouge_l", True, "ROUGE-L F1 of the greedy answer vs the reference, mean over examples"),
    "bleu": MetricInfo("bleu", True, "sacrebleu sentence BLEU (0..100) per example, mean"),
    "exact_match": MetricInfo("exact_match", True, "case/whitespace-normalised equality (0/1), mean"),
    # only with gate.estimate: the runner fills it from the workload's estimator champion (see runner)
    "estimate": MetricInfo("estimate", True, "the quality estimator's P(positive) of the answer, mean"),
    # filled by the runner after the worker (retrain.distill): in distill mode the reference is the teacher's answer
    "similarity": MetricInfo("similarity", True, "MiniLM cosine similarity of the answer to the reference, mean"),
    "judge_win": MetricInfo("judge_win", True, "a judge's preference over the reference (1 win, 0.5 tie, 0 loss)"),
}

#: metrics computed only when configured: when absent and not primary or guard, no note either
OPTIONAL = ("estimate", "similarity", "judge_win")


@dataclass(frozen=True)
class ExampleScore:
    """One model's scores on one example; ``None`` = not computed (e.g. generation off)."""

    nll: float
    n_tokens: int
    rouge_l: float | None = None
    bleu: float | None = None
    exact_match: float | None = None
    output: str | None = None
    estimate: float | None = None
    similarity: float | None = None
    judge_win: float | None = None
    # generation cost (the cost report): wall time of the generate call that produced the answer, the
    # tokens it generated for this example, and how many examples that call generated together
    gen_latency_s: float | None = None
    gen_tokens: int | None = None
    gen_batch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExampleScore:
        def opt(k: str) -> float | None:
            v = d.get(k)
            return None if v is None else float(v)

        def opt_int(k: str) -> int | None:
            v = d.get(k)
            return None if v is None else int(v)

        return cls(nll=float(d["nll"]), n_tokens=int(d["n_tokens"]), rouge_l=opt("rouge_l"), bleu=opt("bleu"),
                   exact_match=opt("exact_match"), output=d.get("output"), estimate=opt("estimate"),
                   similarity=opt("similarity"), judge_win=opt("judge_win"), gen_latency_s=opt("gen_latency_s"),
                   gen_tokens=opt_int("gen_tokens"), gen_batch=opt_int("gen_batch"))  # fmt: skip


def with_metric(scores: Sequence[ExampleScore], metric: str, values: Sequence[float]) -> list[ExampleScore]:
    """``scores`` with ``metric`` set per example (a metric computed after the worker, e.g. similarity)."""
    from dataclasses import replace

    if metric not in METRICS or metric == "perplexity":
        raise ValueError(f"not a per-example metric: {metric!r}")
    if len(values) != len(scores):
        raise ValueError(f"{metric}: {len(values)} values for {len(scores)} examples")
    return [replace(s, **{metric: float(v)}) for s, v in zip(scores, values, strict=True)]  # type: ignore[arg-type]


ExampleScores = Sequence[ExampleScore]


@dataclass(frozen=True)
class Comparison:
    """One metric on one suite: point values, the oriented improvement and its paired bootstrap interval."""

    metric: str
    suite: str
    n: int
    champion: float
    candidate: float
    improvement: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Comparison:
        return cls(metric=str(d["metric"]), suite=str(d["suite"]), n=int(d["n"]), champion=float(d["champion"]),
                   candidate=float(d["candidate"]), improvement=float(d["improvement"]),
                   ci_low=float(d["ci_low"]), ci_high=float(d["ci_high"]))  # fmt: skip


@dataclass(frozen=True)
class GateDecision:
    """The verdict: ``promote``, the reasons (why it failed, or why it passed) and every comparison."""

    promote: bool
    primary: str
    reasons: list[str]
    comparisons: list[Comparison]
    spec: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    # what was kept and what was saved (retrain.cost.DistillReport.to_dict): quality retained vs the teacher
    # and the student's cost vs the teacher's; None outside distillation
    report: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"promote": self.promote, "primary": self.primary, "reasons": list(self.reasons),
               "comparisons": [c.to_dict() for c in self.comparisons], "spec": dict(self.spec),
               "notes": list(self.notes)}  # fmt: skip
        if self.report is not None:
            out["report"] = dict(self.report)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateDecision:
        return cls(promote=bool(d["promote"]), primary=str(d["primary"]), reasons=[str(r) for r in d["reasons"]],
                   comparisons=[Comparison.from_dict(c) for c in d.get("comparisons", [])],
                   spec=dict(d.get("spec", {})), notes=[str(x) for x in d.get("notes", [])],
                   report=dict(d["report"]) if d.get("report") else None)  # fmt: skip

    def comparison(self, metric: str, suite: str = HELDOUT) -> Comparison | None:
        """The comparison of ``metric`` on ``suite``, if it was computed."""
        return next((c for c in self.comparisons if c.metric == metric and c.suite == suite), None)

    def summary(self) -> str:
        """Multi-line human text: verdict, a table of the comparisons, reasons and notes."""
        conf = self.spec.get("confidence")
        ci = f"{conf:.0%} CI" if isinstance(conf, (int, float)) else "CI"
        lines = [f"gate: {'PROMOTE' if self.promote else 'REJECT'} (primary {self.primary})"]
        head = f"  {'suite':<10} {'metric':<12} {'n':>5} {'champion':>10} {'candidate':>10}  improvement [{ci}]"
        lines.append(head)
        for c in self.comparisons:
            mark = "*" if c.metric == self.primary else " "
            lines.append(f"{mark} {c.suite:<10} {c.metric:<12} {c.n:>5} {c.champion:>10.4g} {c.candidate:>10.4g}  "
                         f"{c.improvement:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}]")  # fmt: skip
        lines.append("reasons:")
        lines += [f"  - {r}" for r in self.reasons]
        if self.notes:
            lines.append("notes:")
            lines += [f"  - {n}" for n in self.notes]
        if self.report:
            from driftloop.retrain.cost import report_lines

            lines += report_lines(self.report)
        return "\n".join(lines)


def _values(scores: ExampleScores, metric: str) -> np.ndarray | None:
    """Per-example values of a mean metric as float64, or None when any example lacks it."""
    vals = [getattr(s, metric) for s in scores]
    if any(v is None for v in vals):
        return None
    return np.asarray(vals, dtype=np.float64)


def available(scores: ExampleScores, metric: str) -> bool:
    """Whether ``metric`` was computed for every example of ``scores``."""
    if metric == "perplexity":
        return len(scores) > 0 and sum(s.n_tokens for s in scores) > 0
    return len(scores) > 0 and all(getattr(s, metric) is not None for s in scores)


def point_value(scores: ExampleScores, metric: str) -> float:
    """The metric of one model on a suite (corpus perplexity, or the mean)."""
    if metric == "perplexity":
        tok = sum(s.n_tokens for s in scores)
        return math.exp(sum(s.nll for s in scores) / tok) if tok > 0 else float("nan")
    v = _values(scores, metric)
    if v is None or len(v) == 0:
        return float("nan")
    return float(v.mean())


# resample in chunks of replicates so that one chunk's index matrix stays around this many entries
_CHUNK_ENTRIES = 1_000_000


def paired_bootstrap(champion: ExampleScores, candidate: ExampleScores, metric: str, *, n_bootstrap: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """``(improvement, ci_low, ci_high)`` of ``candidate`` over ``champion`` on ``metric``.

    Each replicate draws one resample of example indices and evaluates the metric for both models on that
    same resample (paired), so per-example difficulty cancels. Perplexity is computed at corpus level per
    replicate (ratio of summed NLL to summed tokens). Percentile interval at ``confidence``, computed by
    ``scipy.stats.bootstrap(paired=True)`` with a generator seeded by ``seed`` (the same seed, the same interval).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {list(METRICS)}")
    n = len(champion)
    if n != len(candidate):
        raise ValueError(f"champion and candidate scores do not align: {n} vs {len(candidate)} examples")
    if n == 0:
        raise ValueError("no examples to compare")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1) (got {confidence})")
    statistic: Callable[..., np.ndarray]
    if metric == "perplexity":
        nll = np.array([[s.nll for s in champion], [s.nll for s in candidate]], dtype=np.float64)
        tok = np.array([[s.n_tokens for s in champion], [s.n_tokens for s in candidate]], dtype=np.float64)
        if tok[0].sum() <= 0 or tok[1].sum() <= 0:
            raise ValueError("perplexity needs reference tokens (all n_tokens are 0)")

        def ppl_reduction(nll_a: np.ndarray, tok_a: np.ndarray, nll_b: np.ndarray, tok_b: np.ndarray,
                          axis: int = -1) -> np.ndarray:  # fmt: skip
            # 1 - ppl_cand / ppl_champ = 1 - exp(mean_nll_cand - mean_nll_champ), corpus level per resample
            with np.errstate(divide="ignore", invalid="ignore"):
                return 1.0 - np.exp(nll_b.sum(axis) / tok_b.sum(axis) - nll_a.sum(axis) / tok_a.sum(axis))

        data: tuple[np.ndarray, ...] = (nll[0], tok[0], nll[1], tok[1])
        statistic = ppl_reduction
        point = float(ppl_reduction(nll[0], tok[0], nll[1], tok[1]))
    else:
        a, b = _values(champion, metric), _values(candidate, metric)
        if a is None or b is None:
            raise ValueError(f"{metric} was not computed for every example")

        def mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.asarray(b.mean(axis) - a.mean(axis))

        data = (a, b)
        statistic = mean_difference
        point = float(mean_difference(a, b))
    if n == 1:  # nothing to resample (scipy needs two observations)
        return point, point, point
    # the examples are resampled together (paired); batches of replicates bound the index matrix's size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # identical scores: a zero-width interval
        res = stats.bootstrap(data, statistic, paired=True, vectorized=True, n_resamples=n_bootstrap,
                              batch=max(1, _CHUNK_ENTRIES // n), confidence_level=confidence, method="percentile",
                              rng=np.random.default_rng(seed))  # fmt: skip
    lo, hi = res.confidence_interval
    if not (math.isfinite(lo) and math.isfinite(hi)):  # a resample without reference tokens: leave it out
        alpha = (1.0 - confidence) / 2.0
        lo, hi = np.nanquantile(res.bootstrap_distribution, [alpha, 1.0 - alpha])
    return point, float(lo), float(hi)


def _fmt_ci(c: Comparison) -> str:
    return f"improvement {c.improvement:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}]"


def decide(suites: Mapping[str, tuple[ExampleScores, ExampleScores]], spec: GateSettings) -> GateDecision:
    """Compare champion and candidate on every suite and decide whether to promote the candidate.

    ``suites`` maps a suite name to ``(champion_scores, candidate_scores)`` aligned by example; the primary's
    interval is tested on ``"heldout"``, every other suite (e.g. ``"golden"``) only requires that the primary
    is not worse. Guards apply on every suite. ``min_examples`` applies to the held-out suite.
    """
    failures: list[str] = []
    passes: list[str] = []
    notes: list[str] = []
    unchecked: list[str] = []  # guards (or a pinned suite's primary) that could not be checked
    comparisons: list[Comparison] = []
    order = [spec.primary] + [m for m in METRICS if m != spec.primary]
    names = sorted(suites, key=lambda s: (s != HELDOUT, s))
    if HELDOUT not in suites:
        failures.append(f"no {HELDOUT!r} suite: the primary metric {spec.primary} cannot be tested")
    for suite in names:
        champ, cand = suites[suite]
        n = len(champ)
        if n != len(cand):
            raise ValueError(f"suite {suite}: champion and candidate scores do not align ({n} vs {len(cand)})")
        if suite == HELDOUT and n < spec.min_examples:
            failures.append(f"{suite}: only {n} examples, the gate needs at least {spec.min_examples}")
        for metric in order:
            if metric == "estimate" and not spec.estimate:
                continue  # off: not even a note
            role = "primary" if metric == spec.primary else ("guard" if metric in spec.guards else "report")
            if role == "report" and metric in OPTIONAL and not (available(champ, metric) and available(cand, metric)):
                continue  # not configured for this run: not even a note
            if n == 0 or not (available(champ, metric) and available(cand, metric)):
                if role == "primary" and suite == HELDOUT:
                    failures.append(f"{metric} on {suite}: not computed, so the primary metric cannot be tested")
                elif role != "report":
                    unchecked.append(f"{metric} on {suite}: not computed, so the {role} was not checked")
                else:
                    notes.append(f"{metric} on {suite}: not computed, skipped")
                continue
            imp, lo, hi = paired_bootstrap(champ, cand, metric, n_bootstrap=spec.n_bootstrap,
                                           confidence=spec.confidence, seed=spec.seed)  # fmt: skip
            c = Comparison(metric, suite, n, point_value(champ, metric), point_value(cand, metric), imp, lo, hi)
            comparisons.append(c)
            if role == "primary":
                if suite == HELDOUT:
                    if lo > spec.min_improvement:
                        passes.append(f"{metric} on {suite}: {_fmt_ci(c)} lies above the required "
                                      f"{spec.min_improvement:.3f}")  # fmt: skip
                    else:
                        failures.append(f"{metric} on {suite}: {_fmt_ci(c)}; the interval does not lie above "
                                        f"the required {spec.min_improvement:.3f}")  # fmt: skip
                elif imp >= 0:
                    passes.append(f"{metric} on {suite}: not worse ({c.champion:.4g} -> {c.candidate:.4g}, "
                                  f"improvement {imp:.3f})")  # fmt: skip
                else:
                    failures.append(f"{metric} on {suite} got worse: {c.champion:.4g} -> {c.candidate:.4g} "
                                    f"(improvement {imp:.3f} < 0)")  # fmt: skip
            elif role == "guard":
                tol = spec.guards[metric]
                if imp >= -tol:
                    passes.append(f"{metric} on {suite}: change {imp:+.3f} within tolerance {tol:.3f}")
                else:
                    failures.append(f"{metric} on {suite} regressed by {-imp:.3f} > tolerance {tol:.3f} "
                                    f"({c.champion:.4g} -> {c.candidate:.4g})")  # fmt: skip
    promote = not failures
    return GateDecision(promote=promote, primary=spec.primary, reasons=passes + unchecked if promote else failures,
                        comparisons=comparisons, spec=spec.model_dump(), notes=notes if promote else unchecked + notes)  # fmt: skip
