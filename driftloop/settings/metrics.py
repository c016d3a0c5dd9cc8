"""Names of the per-window metrics that monitoring records and alert conditions may reference.

The monitor writes one row per (window, metric) into ``window_metrics``; alert rules name these metrics.
``drift.feature.<feature>`` gives the per-feature drift score of any monitored feature and
``drift.group.<group>`` the verdict of a feature group. ``ref.<metric>`` is the same metric on the window's
reference records, so rules can compare a window with its reference. Kept with the settings because
check-config's cross-checks name unknown metrics in rules, triggers and the watch.
"""

from __future__ import annotations

import difflib

KNOWN_METRICS: dict[str, str] = {
    "volume.records": "records in the window",
    "drift.score": "dataset drift score in [0, 1]: share of features drifted after Benjamini-Hochberg",
    "drift.drifted": "1 if the dataset-level verdict is drift, else 0",
    "drift.n_drifted": "number of features drifted (after multiple-testing correction)",
    "drift.prompt_embedding": "embedding drift score of prompts (MiniLM)",
    "drift.response_embedding": "embedding drift score of responses (MiniLM)",
    "drift.prompt_text": "Evidently text-content drift score of prompts (domain classifier ROC AUC)",
    "drift.response_text": "Evidently text-content drift score of responses",
    "drift.n_groups": "number of feature groups checked",
    "drift.groups_drifted": "number of feature groups drifted",
    "quality.feedback_rate": "share of records with feedback",
    "quality.feedback_positive_rate": "share of feedback that is positive (score >= positive threshold)",
    "quality.feedback_score_mean": "mean feedback score",
    "quality.refusal_rate": "share of responses that refuse",
    "quality.apology_rate": "share of responses that apologise",
    "quality.empty_rate": "share of empty responses",
    "quality.feedback_n": "records whose feedback has a positive/negative verdict",
    "quality.feedback_positive_n": "positive verdicts among quality.feedback_n",
    "quality.refusal_n": "responses that refuse",
    "quality.apology_n": "responses that apologise",
    "quality.empty_n": "empty responses",
    "quality.rouge_l": "mean ROUGE-L F1 against the reference answer (records with a reference)",
    "quality.bleu": "corpus BLEU against the reference answers",
    "quality.estimate": "positive rate estimated by PPI++ from the uniform human slice and machine scores "
    "(NULL with too few labels)",
    "quality.estimate_low": "lower end of quality.estimate's interval (quality.estimate.alpha, 90 % by default)",
    "quality.estimate_high": "upper end of quality.estimate's interval",
    "quality.estimate_n_labeled": "uniform-slice human labels behind quality.estimate",
    "latency.p50_ms": "median latency",
    "latency.p95_ms": "95th percentile latency",
    "latency.mean_ms": "mean latency",
    "length.prompt_chars_mean": "mean prompt length in characters",
    "length.response_chars_mean": "mean response length in characters",
    "length.response_tokens_mean": "mean response length in tokens",
}

KNOWN_METRIC_PREFIXES: tuple[str, ...] = ("drift.feature.", "drift.group.")

REF_PREFIX = "ref."
# Drift compares a window with its reference, so the reference side has no drift metrics of its own.
_NO_REF_PREFIXES: tuple[str, ...] = ("drift.",)

# Proportion metrics whose counts the monitor records: metric -> (successes, trials). The statistical
# conditions (drop/rise/change) test these counts of the window against the ``ref.`` counts.
PROPORTION_COUNTS: dict[str, tuple[str, str]] = {
    "quality.feedback_positive_rate": ("quality.feedback_positive_n", "quality.feedback_n"),
    "quality.refusal_rate": ("quality.refusal_n", "volume.records"),
    "quality.apology_rate": ("quality.apology_n", "volume.records"),
    "quality.empty_rate": ("quality.empty_n", "volume.records"),
}


def _is_window_metric(name: str) -> bool:
    return name in KNOWN_METRICS or any(name.startswith(p) and len(name) > len(p) for p in KNOWN_METRIC_PREFIXES)


def is_known_metric(name: str) -> bool:
    """True if ``name`` is a metric the monitor can produce (``ref.`` + a non-drift metric included)."""
    if name.startswith(REF_PREFIX):
        base = name[len(REF_PREFIX) :]
        return _is_window_metric(base) and not base.startswith(_NO_REF_PREFIXES)
    return _is_window_metric(name)


def metric_suggestion(name: str) -> str | None:
    """The known metric name closest to a misspelt ``name`` (``ref.`` names included), or None."""
    names = list(KNOWN_METRICS)
    names += [REF_PREFIX + n for n in KNOWN_METRICS if not n.startswith(_NO_REF_PREFIXES)]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return close[0] if close else None
