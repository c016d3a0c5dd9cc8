"""Benchmark: a bare Evidently ``Report.run`` vs driftloop's full drift check, on one large window or
on many small ones.

Two cases (``--rows``):

* ``--rows N`` with N > 1000 (default 50 000): one current window of N records vs a reference of N
  records, synthetic, one check timed (below);
* ``--rows N`` with N <= 1000 (the case that matters for watching many streams, e.g. 150): windows of
  N records vs a fixed reference of 2N records. Real AlpacaEval traffic (gpt-3.5-turbo-1106 from
  ``../shared/data/alpacaeval``, override ``DRIFTLOOP_ALPACAEVAL_DIR``) when present, synthetic
  otherwise (the output says which). The embedding model is loaded and one warm-up check is done
  before timing; then ``--windows`` checks are timed, each on texts the embedding cache has not seen
  (the cache is put back to its state after the warm-up, when every reference text is cached, as in a
  running daemon whose reference windows were checked before). Bare Evidently is timed the same way
  on the same feature frames.

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

The last line printed is one JSON object: evidently_s, driftloop_s, ratio, peak_rss_mb (whole
process, ``ru_maxrss``); the small-window case adds the max, the data source and the window sizes, and
runs each side in its own child process, so ``peak_rss_mb`` is driftloop's process alone (what a monitor
needs) and ``evidently_peak_rss_mb`` the baseline's. ``embeddings_runtime`` says which MiniLM runtime ran
and ``torch_loaded`` whether torch entered the monitor process.
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


ALPACA = Path(
    os.environ.get("DRIFTLOOP_ALPACAEVAL_DIR", Path(__file__).resolve().parents[2] / "shared/data/alpacaeval")
)
ALPACA_MODEL = "gpt-3.5-turbo-1106"


def alpaca_rows(seed: int) -> list[dict[str, Any]] | None:
    """The AlpacaEval records of ALPACA_MODEL (shuffled, seeded), or None when the data is not there."""
    import gzip
    import random

    path = ALPACA / f"{ALPACA_MODEL}.jsonl.gz"
    if not path.exists():
        return None
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    random.Random(seed).shuffle(rows)
    return rows


def as_interactions(src: list[dict[str, Any]], start_id: int, t0: datetime, seed: int) -> list[dict[str, Any]]:
    """AlpacaEval records as interactions rows (``feedback_score`` carries ``win >= 0.5`` for feedback_rows)."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    return [
        {"request_id": f"a{start_id + i}", "ts": t0 + timedelta(milliseconds=20 * i), "model_id": "bench",
         "model_version": r["generator"], "prompt": r["instruction"], "messages": None, "response": r["output"],
         "latency_ms": float(rng.lognormal(6.5, 0.3)), "tokens_in": len(r["instruction"].split()),
         "tokens_out": len(r["output"].split()), "finish_reason": "stop", "user_hash": None, "session_id": None,
         "reference": None, "metadata": None, "source_topic": "bench", "source_partition": 0,
         "source_offset": start_id + i, "ingested_at": now, "win": float(r["win"] >= 0.5)}
        for i, r in enumerate(src)
    ]  # fmt: skip


def _insert(eng: Any, rows: list[dict[str, Any]], fb: list[dict[str, Any]]) -> None:
    from sqlalchemy import insert

    from driftloop.store.models import feedback, interactions

    with eng.begin() as c:
        for k in range(0, len(rows), 5000):
            c.execute(insert(interactions), rows[k : k + 5000])
        for k in range(0, len(fb), 5000):
            c.execute(insert(feedback), fb[k : k + 5000])


def small_windows(n: int, n_windows: int, t0: datetime) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """(source, rows, feedback): a 2n-record reference, a warm-up window, then ``n_windows`` windows of n.

    AlpacaEval: the reference and the warm-up window are disjoint slices of the shuffled records, each timed
    window a seeded draw of n of the remaining ones (the embedding cache is reset between checks, so each
    window's texts are new to it). Synthetic: every window is fresh traffic, every other one drifted.
    """
    data = alpaca_rows(0)
    if data is not None and len(data) >= 4 * n:
        rng = np.random.default_rng(1)
        rest = data[3 * n :]
        src = data[: 3 * n] + [rest[j] for w in range(n_windows) for j in rng.choice(len(rest), n, replace=False)]
        rows = as_interactions(src, 0, t0, seed=2)
        fb = [{"event_key": f"f{r['request_id']}", "request_id": r["request_id"], "ts": r["ts"], "score": r.pop("win"),
               "comment": None, "correction": None, "source": "inline", "metadata": None, "ingested_at": r["ts"]}
              for r in rows]  # fmt: skip
        return f"alpacaeval:{ALPACA_MODEL}", rows, fb
    rows = synth(2 * n, 1, False, 0, t0) + synth(n, 2, False, 2 * n, t0 + timedelta(milliseconds=40 * n))
    for w in range(n_windows):
        start = (3 + w) * n
        rows += synth(n, 10 + w, w % 2 == 1, start, t0 + timedelta(milliseconds=20 * start))
    return "synthetic", rows, feedback_rows(rows, 3, 0.6)


def small_case(args: argparse.Namespace) -> dict[str, Any]:
    """Windows of ``args.rows`` records vs a pinned 2x reference; each side in its own child process.

    Each side runs in a fresh process so that its peak RSS is its own: a monitor process never imports
    Evidently's Report machinery (plotly, scikit-learn) that the bare baseline needs, and the baseline is
    not charged for driftloop's embedding model.
    """
    import subprocess

    out: dict[str, Any] = {}
    for side in ("evidently", "driftloop"):
        cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--side", side]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{side} side failed (exit {proc.returncode})")
        lines = proc.stdout.strip().splitlines()
        for line in lines[:-1]:
            print(line)
        out[side] = json.loads(lines[-1])
    ev, dl = out["evidently"], out["driftloop"]
    med, ev_med = dl["driftloop_s"], ev["evidently_s"]
    print(f"{dl['source']}: {args.windows} checks of {args.rows} vs {2 * args.rows} records: median {med:.2f} s, "
          f"max {dl['driftloop_max_s']:.2f} s, peak RSS {dl['peak_rss_mb']:.0f} MB; bare Evidently median "
          f"{ev_med:.2f} s, peak RSS {ev['peak_rss_mb']:.0f} MB; ratio {med / ev_med:.2f}")  # fmt: skip
    return dl | {"evidently_s": ev_med, "evidently_peak_rss_mb": ev["peak_rss_mb"], "ratio": round(med / ev_med, 3)}


def _small_setup(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], datetime]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    source, rows, fb = small_windows(args.rows, args.windows, t0)
    return source, rows, fb, t0


def small_evidently(args: argparse.Namespace) -> dict[str, Any]:
    """Bare Evidently on the same feature frames: a warm-up run, then ``args.windows`` timed runs."""
    import statistics
    import warnings

    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from driftloop.monitor.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, compute_features

    n, k = args.rows, args.windows
    source, rows, _fb, _t0 = _small_setup(args)
    num = [c for c in NUMERIC_FEATURES if c != "feedback_score"]
    cat = list(CATEGORICAL_FEATURES)
    cols = num + cat + ["prompt", "response"]
    dd = DataDefinition(numerical_columns=num, categorical_columns=cat, text_columns=["prompt", "response"])

    def frame(part: list[dict[str, Any]]) -> pd.DataFrame:
        df = pd.DataFrame(part)
        df["feedback_score"] = np.nan
        return compute_features(df, language_sample=300)[cols]

    ref_f = frame(rows[: 2 * n])
    cur_fs = [frame(rows[(2 + w) * n : (3 + w) * n]) for w in range(k + 1)]
    ev: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for w, cur_f in enumerate(cur_fs):  # the first run is the warm-up
            t = time.perf_counter()
            Report([DataDriftPreset()]).run(Dataset.from_pandas(cur_f, data_definition=dd),
                                            Dataset.from_pandas(ref_f, data_definition=dd))  # fmt: skip
            if w:
                ev.append(time.perf_counter() - t)
    return {"source": source, "evidently_s": round(statistics.median(ev), 3), "evidently_max_s": round(max(ev), 3),
            "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip


def small_driftloop(args: argparse.Namespace) -> dict[str, Any]:
    """driftloop's whole check of ``args.windows`` windows from the database, after one warm-up check."""
    import statistics
    from collections import OrderedDict

    from driftloop.monitor.check import WindowChecker
    from driftloop.monitor.windows import due_windows
    from driftloop.settings import load_settings
    from driftloop.store.db import create_engine_from_url, migrate

    n, k = args.rows, args.windows
    tmp = tempfile.TemporaryDirectory(prefix="driftloop-bench-")
    url = args.db_url or f"sqlite:///{tmp.name}/bench.db"
    source, rows, fb, t0 = _small_setup(args)
    print(f"setup: {source}, reference {2 * n} + warm-up {n} + {k} x {n} rows into {url.split('://')[0]}",
          file=sys.stderr)  # fmt: skip
    migrate(url)
    eng = create_engine_from_url(url)
    _insert(eng, rows, fb)
    ref_texts = [str(r[c]) for r in rows[: 2 * n] for c in ("prompt", "response")]
    del rows, fb

    end = t0 + timedelta(milliseconds=20 * 2 * n)
    settings = load_settings(
        None,
        database={"url": url},
        monitor={"window": {"kind": "count", "size": n},
                 "reference": {"kind": "pinned", "start": t0.isoformat(), "end": end.isoformat()},
                 "reports": args.report, "reports_dir": f"{tmp.name}/reports",
                 "embeddings": _embedding_settings(args)},
    )  # fmt: skip
    checker = WindowChecker(settings, eng)
    with eng.connect() as c:
        wins = {w.index: w for w in due_windows(c, settings.monitor, "bench")}
    if not args.no_embeddings:
        checker.embeddings().encode(["warm up"])  # model load: once per process, not timed
    res = checker.check(wins[2])  # warm-up check: first-call imports
    assert res.status == "ok", res.error
    if not args.no_embeddings:  # in a running daemon the reference's records were checked (embedded) before
        checker.embeddings().encode(ref_texts)
    cached = OrderedDict(checker.embeddings()._cache)
    times: list[float] = []
    cpu: list[float] = []  # process CPU seconds (all threads): less sensitive to other work on a shared machine
    for idx in range(3, 3 + k):
        checker.embeddings()._cache = OrderedDict(cached)  # only the reference's embeddings are known
        prof = None
        if args.profile and idx == 3:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t, c0 = time.perf_counter(), time.process_time()
        res = checker.check(wins[idx])
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c0)
        if prof is not None:
            import pstats

            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(args.profile)
        assert res.status == "ok", res.error
        print(res.summary().splitlines()[1], f"({times[-1]:.2f} s)")
    eng.dispose()
    tmp.cleanup()
    return {"source": source, "rows": n, "reference_rows": 2 * n, "windows": k,
            "driftloop_s": round(statistics.median(times), 3), "driftloop_max_s": round(max(times), 3),
            "driftloop_cpu_s": round(statistics.median(cpu), 3), "peak_rss_mb": round(peak_rss_mb(), 1),
            "embeddings_runtime": None if args.no_embeddings else checker.embeddings().embedder().runtime,
            "torch_loaded": "torch" in sys.modules, "evidently_report_loaded": "evidently.core.report" in sys.modules}  # fmt: skip


def _embedding_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Embedding settings of the check: those of ``--policy`` (e.g. the shipped example), else the defaults."""
    if args.no_embeddings:
        return {"enabled": False}
    if not args.policy:
        return {"enabled": True, "runtime": args.embeddings_runtime}
    from driftloop.settings import load_settings

    return load_settings(Path(args.policy)).monitor.embeddings.model_dump() | {"runtime": args.embeddings_runtime}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000,
                    help="records per window; <= 1000: windows of ROWS vs a reference of 2 x ROWS")  # fmt: skip
    ap.add_argument("--windows", type=int, default=5, help="timed checks in the small-window case")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="small-window case: cProfile the first timed check, print the top N (stderr)")  # fmt: skip
    ap.add_argument("--db-url", help="database URL (default: SQLite in a temporary directory)")
    ap.add_argument("--report", action="store_true", help="also save the HTML report (not timed by default)")
    ap.add_argument("--no-embeddings", action="store_true", help="skip MiniLM embedding drift")
    ap.add_argument("--embeddings-runtime", default="auto", choices=["auto", "onnx", "sentence-transformers"],
                    help="MiniLM runtime (auto: onnxruntime when installed)")  # fmt: skip
    ap.add_argument("--policy", help="take the embedding settings from this config (e.g. deploy/policies.example.yaml)")
    ap.add_argument("--side", choices=["evidently", "driftloop"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.rows <= 1000:
        run = {"evidently": small_evidently, "driftloop": small_driftloop}.get(args.side or "", small_case)
        print(json.dumps(run(args)))
        return 0

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
