"""Per-record features and per-window quality metrics, computed from stored interactions.

Everything here is vectorised pandas or bounded work, so a 50k-row window stays cheap:
token counts are whitespace tokens (``str.split``), language detection is a small stop-word
detector (no model, no download), and reference scores (ROUGE-L, BLEU) run on a bounded sample.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

NUMERIC_FEATURES = (
    "prompt_chars", "response_chars", "prompt_words", "response_words", "latency_ms", "tokens_in", "tokens_out",
    "feedback_score",
)  # fmt: skip
CATEGORICAL_FEATURES = ("finish_reason", "language", "is_refusal", "is_apology", "is_empty", "has_feedback")
TEXT_FEATURES = ("prompt", "response")

REFUSAL_RE = re.compile(
    r"\b(?:I\s+(?:can(?:no|')t|am\s+(?:not\s+able|unable)|won't|will\s+not)|I'm\s+(?:not\s+able|unable)|"
    r"as\s+an\s+AI(?:\s+language\s+model)?|I\s+do\s+not\s+have\s+(?:access|the\s+ability)|"
    r"I\s+must\s+(?:decline|refuse))",
    re.IGNORECASE,
)
APOLOGY_RE = re.compile(r"\b(?:sorry|apologi[sz]e|apologies|my\s+mistake)\b", re.IGNORECASE)

_STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        [
            "the",
            "and",
            "is",
            "are",
            "of",
            "to",
            "in",
            "that",
            "it",
            "for",
            "you",
            "with",
            "this",
            "on",
            "be",
            "what",
            "how",
        ]
    ),
    "es": frozenset(
        ["el", "la", "los", "las", "de", "que", "y", "en", "un", "una", "es", "por", "para", "con", "del", "como"]
    ),
    "fr": frozenset(
        ["le", "la", "les", "des", "de", "et", "est", "un", "une", "que", "pour", "dans", "en", "du", "avec"]
    ),
    "de": frozenset(
        ["der", "die", "das", "und", "ist", "nicht", "ein", "eine", "zu", "den", "mit", "von", "auf", "für"]
    ),
    "it": frozenset(
        ["il", "la", "di", "che", "e", "un", "una", "per", "non", "sono", "con", "del", "della", "gli", "le"]
    ),
    "pt": frozenset(["o", "a", "os", "as", "de", "que", "e", "um", "uma", "do", "da", "em", "para", "com", "não"]),
    "nl": frozenset(["de", "het", "een", "en", "van", "is", "dat", "niet", "op", "te", "met", "voor", "zijn"]),
}
_SCRIPTS = (
    ("zh", re.compile(r"[\u4e00-\u9fff]")),
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("ko", re.compile(r"[\uac00-\ud7af]")),
    ("ru", re.compile(r"[\u0400-\u04ff]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
)
_WORD = re.compile(r"[^\W\d_]+")


def detect_language(text: str | None) -> str:
    """A light offline language guess from the first 400 characters: ISO code or ``unknown``."""
    if not text:
        return "unknown"
    head = text[:400]
    for code, pat in _SCRIPTS:
        if len(pat.findall(head)) >= 5:
            return code
    words = [w.lower() for w in _WORD.findall(head)]
    if not words:
        return "unknown"
    best, hits = "unknown", 0
    for code, sw in _STOPWORDS.items():
        n = sum(1 for w in words if w in sw)
        if n > hits:
            best, hits = code, n
    return best if hits >= 2 else "unknown"


def compute_features(df: pd.DataFrame, positive_threshold: float = 0.5) -> pd.DataFrame:
    """Feature frame (one row per interaction) from a frame of stored interactions.

    Expects columns prompt, response, latency_ms, tokens_in, tokens_out, finish_reason and
    feedback_score (latest feedback per request, NaN when none).
    """
    prompt = df["prompt"].fillna("").astype(str)
    response = df["response"].fillna("").astype(str)
    out = pd.DataFrame(index=df.index)
    out["prompt_chars"] = prompt.str.len().astype(float)
    out["response_chars"] = response.str.len().astype(float)
    out["prompt_words"] = prompt.map(lambda s: len(s.split())).astype(float)
    out["response_words"] = response.map(lambda s: len(s.split())).astype(float)
    for c in ("latency_ms", "tokens_in", "tokens_out", "feedback_score"):
        out[c] = pd.to_numeric(df.get(c), errors="coerce").astype(float) if c in df else np.nan
    out["finish_reason"] = df["finish_reason"].fillna("none").astype(str) if "finish_reason" in df else "none"
    out["language"] = prompt.map(detect_language)
    out["is_refusal"] = response.map(lambda s: "yes" if REFUSAL_RE.search(s[:600]) else "no")
    out["is_apology"] = response.map(lambda s: "yes" if APOLOGY_RE.search(s[:600]) else "no")
    out["is_empty"] = np.where(response.str.strip().str.len() == 0, "yes", "no")
    out["has_feedback"] = np.where(out["feedback_score"].notna(), "yes", "no")
    out["feedback_positive"] = np.where(
        out["feedback_score"].notna(), (out["feedback_score"] >= positive_threshold).astype(float), np.nan
    )
    out["prompt"] = prompt
    out["response"] = response
    return out


def _mean(s: pd.Series) -> float | None:
    s = s.dropna()
    return float(s.mean()) if len(s) else None


def reference_scores(df: pd.DataFrame, sample: int = 200, seed: int = 0) -> dict[str, float]:
    """ROUGE-L F1 (mean) and corpus BLEU of responses against ``reference`` answers, on a sample."""
    if "reference" not in df:
        return {}
    has = df[df["reference"].notna() & (df["reference"].astype(str).str.len() > 0)]
    if has.empty:
        return {}
    if len(has) > sample:
        has = has.sample(sample, random_state=seed)
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    refs = has["reference"].astype(str).tolist()
    hyps = has["response"].fillna("").astype(str).tolist()
    rouge = [scorer.score(r[:4000], h[:4000])["rougeL"].fmeasure for r, h in zip(refs, hyps, strict=True)]
    bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
    return {"quality.rouge_l": float(np.mean(rouge)), "quality.bleu": float(bleu)}


def window_metrics(feats: pd.DataFrame, raw: pd.DataFrame, reference_sample: int = 200) -> dict[str, float | None]:
    """Quality, latency and length metrics of one window (names from monitor.metrics)."""
    n = len(feats)
    lat = feats["latency_ms"].dropna()
    m: dict[str, Any] = {
        "volume.records": float(n),
        "quality.feedback_rate": float((feats["has_feedback"] == "yes").mean()) if n else None,
        "quality.feedback_positive_rate": _mean(feats["feedback_positive"]),
        "quality.feedback_score_mean": _mean(feats["feedback_score"]),
        "quality.refusal_rate": float((feats["is_refusal"] == "yes").mean()) if n else None,
        "quality.apology_rate": float((feats["is_apology"] == "yes").mean()) if n else None,
        "quality.empty_rate": float((feats["is_empty"] == "yes").mean()) if n else None,
        "latency.p50_ms": float(lat.quantile(0.5)) if len(lat) else None,
        "latency.p95_ms": float(lat.quantile(0.95)) if len(lat) else None,
        "latency.mean_ms": float(lat.mean()) if len(lat) else None,
        "length.prompt_chars_mean": _mean(feats["prompt_chars"]),
        "length.response_chars_mean": _mean(feats["response_chars"]),
        "length.response_tokens_mean": _mean(feats["response_words"]),
    }
    m.update(reference_scores(raw, reference_sample))
    return m
