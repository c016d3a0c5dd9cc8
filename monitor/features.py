r"""Per-record features and per-window quality metrics, computed from stored interactions.

Everything here is vectorised pandas or bounded work, so a 50k-row window stays cheap:
token counts are a cheap regex count (words and punctuation marks, ``\w+|[^\w\s]``; close to but
not equal to a model's BPE tokens, whose counts come from ``tokens_in``/``tokens_out`` when logged),
language detection is langdetect (seeded, offline) on the first 200 characters of a bounded sample
of prompts, and reference scores (ROUGE-L, BLEU) run on a bounded sample.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from typing import Any

import numpy as np
import pandas as pd

NUMERIC_FEATURES = (
    "prompt_chars", "response_chars", "prompt_tokens", "response_tokens", "latency_ms", "tokens_in", "tokens_out",
    "feedback_score",
)  # fmt: skip
CATEGORICAL_FEATURES = ("finish_reason", "language", "is_refusal", "is_apology", "is_empty", "has_feedback")
TEXT_FEATURES = ("prompt", "response")

#: The signal each feature measures. Correlated columns (a response's characters, regex tokens and the
#: logged ``tokens_out``) are one signal: the verdict counts drifted *groups*, so a chance wobble of the
#: prompt length is one vote, not three, and a verbosity shift is not diluted by them either.
FEATURE_GROUPS: dict[str, str] = {
    "prompt_chars": "prompt_length", "prompt_tokens": "prompt_length", "tokens_in": "prompt_length",
    "response_chars": "response_length", "response_tokens": "response_length", "tokens_out": "response_length",
    "latency_ms": "latency",
    "feedback_score": "feedback", "has_feedback": "feedback",
    "finish_reason": "finish_reason",
    "language": "language",
    "is_refusal": "response_flags", "is_apology": "response_flags", "is_empty": "response_flags",
    "prompt": "prompt_content", "prompt_embedding": "prompt_content",
    "response": "response_content", "response_embedding": "response_content",
}  # fmt: skip


def feature_group(feature: str) -> str:
    """The group of ``feature`` (a feature outside the table is a group of its own)."""
    return FEATURE_GROUPS.get(feature, feature)


def salted(keys: np.ndarray, salt: int) -> np.ndarray:
    """``keys`` mixed with ``salt`` (splitmix64's finalizer): a sample by the smallest salted keys is a fresh
    pseudo-random choice for every salt (window), yet the same for the same records and salt.

    Unsalted content keys would pick the same low-hash records in every window they occur in: with repeated
    prompts (real traffic, resampled test streams) each reference sample would lean to one fixed subset of the
    pool, and a classifier tells that subset from the current window — measured, embedding drift flagged
    ~30 % of no-drift windows that way.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(keys, dtype=np.uint64) + np.uint64(salt & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def content_keys(df: pd.DataFrame) -> np.ndarray:
    """A 64-bit key per record from its prompt and response: samples chosen by these keys depend on what
    was said, not on request ids, so the same records give the same verdict however they were re-sent."""
    prompt = df["prompt"].fillna("").astype(str) if "prompt" in df else pd.Series("", index=df.index)
    response = df["response"].fillna("").astype(str) if "response" in df else pd.Series("", index=df.index)
    keys = [
        int.from_bytes(hashlib.blake2b(f"{p}\x00{r}".encode("utf-8", "replace"), digest_size=8).digest(), "little")
        for p, r in zip(prompt, response, strict=True)
    ]
    return np.asarray(keys, dtype=np.uint64)


REFUSAL_RE = re.compile(
    r"\b(?:I\s+(?:can(?:no|')t|am\s+(?:not\s+able|unable)|won't|will\s+not)|I'm\s+(?:not\s+able|unable)|"
    r"as\s+an\s+AI(?:\s+language\s+model)?|I\s+do\s+not\s+have\s+(?:access|the\s+ability)|"
    r"I\s+must\s+(?:decline|refuse))",
    re.IGNORECASE,
)
APOLOGY_RE = re.compile(r"\b(?:sorry|apologi[sz]e|apologies|my\s+mistake)\b", re.IGNORECASE)

_TOKEN = r"\w+|[^\w\s]"  # words and single punctuation marks: a cheap stand-in for a BPE tokenizer
_LETTER = re.compile(r"[^\W\d_]")
_lang_lock = threading.Lock()
_lang_ready = False


def _langdetect() -> Any:
    global _lang_ready
    from langdetect import DetectorFactory, detect

    with _lang_lock:
        if not _lang_ready:
            DetectorFactory.seed = 0  # langdetect is randomised; seeded it is deterministic
            _lang_ready = True
    return detect


def stable_sample(keys: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` keys with the smallest (multiplicative) hash, in key order.

    The choice depends on the keys only, so a record sampled in its own window is sampled again
    when that window becomes (part of) a reference: cached languages and embeddings are reused.
    """
    keys = np.asarray(keys).astype(np.uint64)
    if len(keys) <= k:
        return np.arange(len(keys))
    with np.errstate(over="ignore"):
        h = keys * np.uint64(0x9E3779B97F4A7C15)
    return np.sort(np.argpartition(h, k - 1)[:k])


@functools.lru_cache(maxsize=65_536)
def _detect_head(head: str) -> str:
    detect = _langdetect()
    try:
        return str(detect(head))
    except Exception:  # LangDetectException: no features in text
        return "unknown"


def detect_language(text: str | None, max_chars: int = 200) -> str:
    """Language of the first ``max_chars`` characters (langdetect, seeded, offline): ISO code or ``unknown``."""
    if not text or not _LETTER.search(text[:max_chars]):
        return "unknown"
    return _detect_head(text[:max_chars])


def detect_languages(texts: pd.Series, sample: int, seed: int = 0, max_chars: int = 200,
                     keys: np.ndarray | None = None) -> pd.Series:  # fmt: skip
    """Languages of a bounded sample of ``texts`` (others NaN: the drift test uses the sample only).

    With ``keys`` (:func:`content_keys`) the sample is :func:`stable_sample`, else a seeded random one.
    """
    out = pd.Series(np.nan, index=texts.index, dtype=object)
    if sample <= 0 or texts.empty:
        return out
    if len(texts) <= sample:
        idx = texts.index
    elif keys is not None:
        idx = texts.index[stable_sample(keys, sample)]
    else:
        idx = texts.sample(sample, random_state=seed).index
    out.loc[idx] = [detect_language(t, max_chars) for t in texts.loc[idx]]
    return out


def compute_features(df: pd.DataFrame, language_sample: int = 300, seed: int = 0) -> pd.DataFrame:
    """Feature frame (one row per interaction) from a frame of stored interactions.

    Expects columns prompt, response, latency_ms, tokens_in, tokens_out, finish_reason,
    feedback_score (latest feedback per request, NaN when none) and feedback_positive (whether that
    feedback is positive, as the view ``feedback_latest`` decides: see driftloop.store.feedback;
    positive feedback is defined there only, not here). Without feedback_positive it is missing.
    """
    prompt = df["prompt"].fillna("").astype(str)
    response = df["response"].fillna("").astype(str)
    out = pd.DataFrame(index=df.index)
    out["prompt_chars"] = prompt.str.len().astype(float)
    out["response_chars"] = response.str.len().astype(float)
    out["prompt_tokens"] = prompt.str.count(_TOKEN).astype(float)
    out["response_tokens"] = response.str.count(_TOKEN).astype(float)
    for c in ("latency_ms", "tokens_in", "tokens_out", "feedback_score"):
        out[c] = pd.to_numeric(df.get(c), errors="coerce").astype(float) if c in df else np.nan
    out["finish_reason"] = df["finish_reason"].fillna("none").astype(str) if "finish_reason" in df else "none"
    out["language"] = detect_languages(prompt, language_sample, seed, keys=salted(content_keys(df), seed))
    out["is_refusal"] = response.map(lambda s: "yes" if REFUSAL_RE.search(s[:600]) else "no")
    out["is_apology"] = response.map(lambda s: "yes" if APOLOGY_RE.search(s[:600]) else "no")
    out["is_empty"] = np.where(response.str.strip().str.len() == 0, "yes", "no")
    out["has_feedback"] = np.where(out["feedback_score"].notna(), "yes", "no")
    # 1.0 / 0.0 / NaN from True / False (0/1 on SQLite) / None
    out["feedback_positive"] = (
        pd.to_numeric(df["feedback_positive"], errors="coerce").astype(float) if "feedback_positive" in df else np.nan
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
    labelled = feats["feedback_positive"].dropna()
    m: dict[str, Any] = {
        "volume.records": float(n),
        # counts beside the rates: drop()/rise()/change() test proportions with them (see docs/alerts.md)
        "quality.feedback_n": float(len(labelled)),
        "quality.feedback_positive_n": float(labelled.sum()),
        "quality.refusal_n": float((feats["is_refusal"] == "yes").sum()),
        "quality.apology_n": float((feats["is_apology"] == "yes").sum()),
        "quality.empty_n": float((feats["is_empty"] == "yes").sum()),
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
        "length.response_tokens_mean": _mean(feats["response_tokens"]),
    }
    m.update(reference_scores(raw, reference_sample))
    return m
