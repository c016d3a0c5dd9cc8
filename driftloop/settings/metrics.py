"""Names of the per-window metrics that monitoring records and alert conditions may reference.

The monitor writes one row per (window, metric) into ``window_metrics``; alert rules name these metrics.
``drift.feature.<feature>`` gives the per-feature drift score of any monitored feature. Kept with the
settings because check-config's cross-checks name unknown metrics in rules, triggers and the watch.
"""

from __future__ import annotations

KNOWN_METRICS: dict[str, str] = {
    "volume.records": "records in the window",
    "drift.score": "dataset drift score in [0, 1]: share of features drifted after Benjamini-Hochberg",
    "drift.drifted": "1 if the dataset-level verdict is drift, else 0",
    "drift.n_drifted": "number of features drifted (after multiple-testing correction)",
    "drift.prompt_embedding": "embedding drift score of prompts (MiniLM)",
    "drift.response_embedding": "embedding drift score of responses (MiniLM)",
    "drift.prompt_text": "Evidently text-content drift score of prompts (domain classifier ROC AUC)",
    "drift.response_text": "Evidently text-content drift score of responses",
    "quality.feedback_rate": "share of records with feedback",
    "quality.feedback_positive_rate": "share of feedback that is positive (score >= positive threshold)",
    "quality.feedback_score_mean": "mean feedback score",
    "quality.refusal_rate": "share of responses that refuse",
    "quality.apology_rate": "share of responses that apologise",
    "quality.empty_rate": "share of empty responses",
    "quality.rouge_l": "mean ROUGE-L F1 against the reference answer (records with a reference)",
    "quality.bleu": "corpus BLEU against the reference answers",
    "latency.p50_ms": "median latency",
    "latency.p95_ms": "95th percentile latency",
    "latency.mean_ms": "mean latency",
    "length.prompt_chars_mean": "mean prompt length in characters",
    "length.response_chars_mean": "mean response length in characters",
    "length.response_tokens_mean": "mean response length in tokens",
}

KNOWN_METRIC_PREFIXES: tuple[str, ...] = ("drift.feature.",)


def is_known_metric(name: str) -> bool:
    """True if ``name`` is a metric the monitor can produce."""
    return name in KNOWN_METRICS or any(name.startswith(p) and len(name) > len(p) for p in KNOWN_METRIC_PREFIXES)
