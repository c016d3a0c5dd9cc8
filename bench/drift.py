"""Benchmark: a bare Evidently ``Report.run`` vs driftloop's full drift check on one large window.

Synthetic traffic like ours (numeric, categorical and text columns): a reference window and a
current window of ``--rows`` records each, the current one drifted in a few features. It measures,
in the same process:

* ``evidently_s``: ``Report([DataDriftPreset()]).run(current, reference)`` on the feature frame
  (the same columns driftloop tests, text columns included, Evidently's defaults);
* ``driftloop_s``: driftloop's whole check of the window from the database: loading the rows and
  their latest feedback, features (lengths, regex tokens, language on a sample, flags, ROUGE-L/BLEU),
  Evidently tests with driftloop's settings (text drift on a bounded sample), MiniLM embedding drift
  on a bounded sample, the Benjamini-Hochberg verdict, and persisting windows/results/metrics
  (SQLite in a temporary directory unless ``--db-url``). The HTML report is skipped unless
  ``--report``.

The last line printed is one JSON object: evidently_s, driftloop_s, ratio, peak_rss_mb.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_SYL = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "pe", "da", "go", "fu", "zi", "be", "ho", "ya")
VOCAB = [a + b + c for a in _SYL for b in _SYL for c in _SYL][:3000]  # 3000 pseudo-words


def _texts(rng: np.random.Generator, n: int, lo: int, hi: int, shift: int = 0) -> list[str]:
    """``n`` texts of ``lo``..``hi`` words, Zipf-distributed over VOCAB (rotated by ``shift``)."""
    lens = rng.integers(lo, hi, n)
    ranks = (rng.zipf(1.3, int(lens.sum())) + shift) % len(VOCAB)
    out, k = [], 0
    for ln in lens:
        out.append(" ".join(VOCAB[j] for j in ranks[k : k + ln]))
        k += ln
    return out


def synth(n: int, seed: int, drifted: bool, start_id: int, t0: datetime) -> list[dict[str, Any]]:
    """``n`` interactions rows; ``drifted`` shifts response length, latency and the prompt vocabulary."""
    rng = np.random.default_rng(seed)
    prompts = _texts(rng, n, 5, 30, shift=7 if drifted else 0)
    responses = _texts(rng, n, 20 if drifted else 40, 120 if drifted else 200)
    lat = rng.lognormal(6.6 if drifted else 6.4, 0.4, n)
    finish = rng.choice(["stop", "length", "content_filter"], n, p=[0.9, 0.08, 0.02])
    now = datetime.now(UTC)
    return [
        {"request_id": f"b{start_id + i}", "ts": t0 + timedelta(milliseconds=20 * i), "model_id": "bench",
         "model_version": "v1", "prompt": prompts[i], "messages": None, "response": responses[i],
         "latency_ms": float(lat[i]), "tokens_in": len(prompts[i].split()), "tokens_out": len(responses[i].split()),
         "finish_reason": str(finish[i]), "user_hash": None, "session_id": None,
         "reference": responses[i][:200] if i % 10 == 0 else None, "metadata": None, "source_topic": "bench",
         "source_partition": 0, "source_offset": start_id + i, "ingested_at": now}
        for i in range(n)
    ]  # fmt: skip


def feedback_rows(rows: list[dict[str, Any]], seed: int, p_pos: float) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    return [
        {"event_key": f"f{r['request_id']}", "request_id": r["request_id"], "ts": now,
         "score": float(rng.random() < p_pos), "comment": None, "correction": None, "source": "event",
         "metadata": None, "ingested_at": now}
        for k, r in enumerate(rows) if k % 3 == 0
    ]  # fmt: skip


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000, help="records per window (current and reference)")
    ap.add_argument("--db-url", help="database URL (default: SQLite in a temporary directory)")
    ap.add_argument("--report", action="store_true", help="also save the HTML report (not timed by default)")
    ap.add_argument("--no-embeddings", action="store_true", help="skip MiniLM embedding drift")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import warnings

    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    from sqlalchemy import insert

    from driftloop.monitor.check import WindowChecker
    from driftloop.monitor.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, compute_features
    from driftloop.monitor.windows import due_windows
    from driftloop.settings import load_settings
    from driftloop.store.db import create_engine_from_url, migrate
    from driftloop.store.models import feedback, interactions

    n = args.rows
    tmp = tempfile.TemporaryDirectory(prefix="driftloop-bench-")
    url = args.db_url or f"sqlite:///{tmp.name}/bench.db"
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    ref_rows = synth(n, 1, False, 0, t0)
    cur_rows = synth(n, 2, True, n, t0 + timedelta(hours=2))
    print(f"setup: {n} + {n} rows into {url.split('://')[0]} ...", file=sys.stderr)
    migrate(url)
    eng = create_engine_from_url(url)
    with eng.begin() as c:
        for rows, p in ((ref_rows, 0.7), (cur_rows, 0.5)):
            for k in range(0, len(rows), 5000):
                c.execute(insert(interactions), rows[k : k + 5000])
            fb = feedback_rows(rows, len(rows), p)
            for k in range(0, len(fb), 5000):
                c.execute(insert(feedback), fb[k : k + 5000])

    # the same feature frame for the bare Evidently run (features computed outside the timing)
    def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
        df = pd.DataFrame(rows)
        df["feedback_score"] = np.nan
        return compute_features(df, language_sample=300)

    cur_f, ref_f = frame(cur_rows), frame(ref_rows)
    del cur_rows, ref_rows
    num = [c for c in NUMERIC_FEATURES if c != "feedback_score"]
    cat = list(CATEGORICAL_FEATURES)
    cols = num + cat + ["prompt", "response"]
    dd = DataDefinition(numerical_columns=num, categorical_columns=cat, text_columns=["prompt", "response"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # warm-up on a small slice so neither side pays Evidently's first-call imports
        Report([DataDriftPreset()]).run(Dataset.from_pandas(cur_f[cols].head(300), data_definition=dd),
                                        Dataset.from_pandas(ref_f[cols].head(300), data_definition=dd))  # fmt: skip
        t = time.perf_counter()
        Report([DataDriftPreset()]).run(Dataset.from_pandas(cur_f[cols], data_definition=dd),
                                        Dataset.from_pandas(ref_f[cols], data_definition=dd))  # fmt: skip
        evidently_s = time.perf_counter() - t
    del cur_f, ref_f
    print(f"bare Evidently Report.run on {n} vs {n} rows ({len(cols)} columns, 2 text): {evidently_s:.2f} s")

    settings = load_settings(
        None,
        database={"url": url},
        monitor={"window": {"kind": "count", "size": n}, "reference": {"kind": "previous", "windows": 1},
                 "reports": args.report, "reports_dir": f"{tmp.name}/reports",
                 "embeddings": {"enabled": not args.no_embeddings}},
    )  # fmt: skip
    checker = WindowChecker(settings, eng)
    if not args.no_embeddings:
        checker.embeddings().encode(["warm up"])  # model load is once per process, not per check
    with eng.connect() as c:
        win = next(w for w in due_windows(c, settings.monitor, "bench") if w.index == 1)
    t = time.perf_counter()
    res = checker.check(win)
    driftloop_s = time.perf_counter() - t
    assert res.status == "ok", res.error
    print(res.summary())
    print(f"driftloop full check (load + features + Evidently + embeddings + persist): {driftloop_s:.2f} s")
    ratio = driftloop_s / evidently_s
    print(f"ratio driftloop/evidently: {ratio:.2f}")
    eng.dispose()
    tmp.cleanup()
    out = {"evidently_s": round(evidently_s, 3), "driftloop_s": round(driftloop_s, 3), "ratio": round(ratio, 3),
           "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
