"""Detection sweep on real traffic: every shared AlpacaEval model, no drift and switches, under a policy.

Each *stream* goes into its own SQLite database through ``driftloop load`` (the ingestion decoder and
redaction), then windows are checked one by one as the daemon does it (``WindowChecker.check`` of the
oldest due window, then one ``AlertEvaluationJob.run_once``), so the ``last_healthy`` reference sees
the alerts that are open. After each window the open alerts are recorded.

Streams:

* ``null:<model>``: ``--windows`` windows resampled (with replacement, seeded) from one model: no
  drift. Reported: the share of windows (after the first, which has no reference) in which any
  alert is open, and in which an alert fired;
* ``switch:<a>><b>``: ``--pre`` windows of model a, then ``--post`` windows of model b (same prompts),
  for every ordered pair whose positive rates (``win >= 0.5``) differ by at least ``--min-gap``, and
  gpt-3.5-turbo-1106 <-> its ``_concise`` answers (a verbosity shift). Reported: the first window after
  the switch (1 = the switch window) in which each rule is firing.

Extra rules (``--extra-rule NAME=CONDITION``, N of M from ``--extra-n-of-m``) are evaluated on the same
stored windows by the backtest, e.g. a two-sided ``change()`` quality rule next to the policy's ``drop()``.

The data is read from ``../shared/data/alpacaeval`` (override: ``DRIFTLOOP_ALPACAEVAL_DIR``) and never
shipped. The last line printed is one JSON object with every stream's result and the summary.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("DRIFTLOOP_ALPACAEVAL_DIR", ROOT.parent / "shared/data/alpacaeval"))
MODELS = ("gpt4_1106_preview", "FuseChat-Llama-3.2-1B-Instruct", "gpt-3.5-turbo-1106", "claude-2.1_concise",
          "gpt-3.5-turbo-1106_concise", "alpaca-7b", "falcon-7b-instruct")  # fmt: skip
VERBOSITY = ("gpt-3.5-turbo-1106", "gpt-3.5-turbo-1106_concise")


def rows_of(model: str) -> list[dict[str, Any]]:
    with gzip.open(DATA / f"{model}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def positive_rate(model: str) -> float:
    rows = rows_of(model)
    return sum(r["win"] >= 0.5 for r in rows) / len(rows)


def log_record(r: dict[str, Any], i: int, t0: datetime, rng: random.Random) -> dict[str, Any]:
    """A v1 log record of one AlpacaEval row; ``win >= 0.5`` is positive inline feedback."""
    return {"request_id": f"s-{i}-{rng.getrandbits(48):012x}",
            "timestamp": (t0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
            "model_id": "assistant", "model_version": r["generator"], "prompt": r["instruction"],
            "response": r["output"], "latency_ms": round(rng.lognormvariate(6.5, 0.3), 1),
            "tokens_in": len(r["instruction"].split()), "tokens_out": len(r["output"].split()),
            "finish_reason": "stop", "feedback": {"score": 1.0 if r["win"] >= 0.5 else 0.0},
            "metadata": {"dataset": r["dataset"]}}  # fmt: skip


@dataclass
class Stream:
    name: str
    parts: list[tuple[str, int]]  # (model, windows)
    seed: int = 0


@dataclass
class StreamResult:
    name: str
    windows: int
    switch_at: int | None  # index of the first window of the second part
    firing: list[list[str]] = field(default_factory=list)  # per window: rules with an open alert
    fired: list[list[str]] = field(default_factory=list)  # per window: rules that fired in it
    extra_firing: dict[str, list[int]] = field(default_factory=dict)  # extra rule -> windows where firing
    drift_scores: list[float | None] = field(default_factory=list)
    groups_drifted: list[list[str]] = field(default_factory=list)
    features_drifted: list[list[str]] = field(default_factory=list)
    check_s: list[float] = field(default_factory=list)


def run_stream(stream: Stream, policy: str, size: int, extra: list[tuple[str, str]], n_of_m: tuple[int, int],
               embeddings: bool) -> StreamResult:  # fmt: skip
    """Load one stream into a fresh SQLite database and check it window by window as the daemon does."""
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    logging.disable(logging.WARNING)
    from sqlalchemy import select

    from driftloop.ingest.load import load_files
    from driftloop.monitor.alerts.engine import AlertEvaluationJob, backtest, load_points
    from driftloop.monitor.alerts.tables import OPEN_STATES, alerts
    from driftloop.monitor.check import WindowChecker
    from driftloop.monitor.windows import due_windows
    from driftloop.settings import load_settings
    from driftloop.settings.alerts import RuleSettings
    from driftloop.store.db import create_engine_from_url, migrate

    rng = random.Random(stream.seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    recs, switch_at, w = [], None, 0
    for k, (model, n) in enumerate(stream.parts):
        src = rows_of(model)
        if k == 1:
            switch_at = w
        for _ in range(n * size):
            recs.append(log_record(rng.choice(src), len(recs), t0, rng))
        w += n
    with tempfile.TemporaryDirectory(prefix="driftloop-detect-") as tmp:
        path = Path(tmp) / "stream.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
        url = f"sqlite:///{tmp}/d.db"
        over: dict[str, Any] = {"database": {"url": url}, "monitor": {"reports": False}}
        if not embeddings:
            over["monitor"]["embeddings"] = {"enabled": False}
        s = load_settings(Path(policy), **over)
        s = s.model_copy(update={"monitor": s.monitor.model_copy(update={"window": s.monitor.window.model_copy(
            update={"kind": "count", "size": size})})})  # fmt: skip
        migrate(url)
        eng = create_engine_from_url(url)
        stats = load_files(s, [str(path)], eng)
        assert stats.rejected == 0, stats.summary()
        checker, job = WindowChecker(s, eng), AlertEvaluationJob(s, eng, sinks={})
        res = StreamResult(stream.name, w, switch_at)
        before: set[int] = set()
        while True:
            with eng.connect() as c:
                due = due_windows(c, s.monitor, "assistant")
            if not due:
                break
            t = time.perf_counter()
            r = checker.check(due[0])
            res.check_s.append(time.perf_counter() - t)
            job.run_once()
            with eng.connect() as c:
                rows = c.execute(select(alerts.c.id, alerts.c.rule, alerts.c.state)).all()
            res.firing.append(sorted({x.rule for x in rows if x.state in OPEN_STATES}))
            res.fired.append(sorted({x.rule for x in rows if x.id not in before}))
            before |= {x.id for x in rows}
            o = r.outcome
            res.drift_scores.append(o.score if o else None)
            res.groups_drifted.append(sorted(g for g, d in o.groups.items() if d) if o else [])
            res.features_drifted.append(sorted(f.feature for f in o.features if f.drifted) if o else [])
        if extra:
            rules = [RuleSettings(name=n, condition=c, windows=n_of_m[0], of=n_of_m[1]) for n, c in extra]
            idx = {p.window_id: i for i, p in enumerate(load_points(eng))}
            points = load_points(eng)
            for rule in rules:
                firing, on = [], False
                trans = {(t.window, t.event) for t in backtest([rule], points)}
                for _i, p in enumerate(points):
                    on = (on or (p.window_index, "fired") in trans) and (p.window_index, "resolved") not in trans
                    if on:
                        firing.append(idx[p.window_id])
                res.extra_firing[rule.name] = firing
        eng.dispose()
    return res


def streams(models: list[str], windows: int, pre: int, post: int, min_gap: float) -> list[Stream]:
    out = [Stream(f"null:{m}", [(m, windows)], seed=i) for i, m in enumerate(models)]
    rates = {m: positive_rate(m) for m in models}
    pairs = [(a, b) for a in models for b in models if a != b and abs(rates[a] - rates[b]) >= min_gap]
    pairs += [p for p in (VERBOSITY, VERBOSITY[::-1]) if set(p) <= set(models) and p not in pairs]
    out += [Stream(f"switch:{a}>{b}", [(a, pre), (b, post)], seed=100 + i) for i, (a, b) in enumerate(pairs)]
    return out


def first_firing(res: StreamResult, rule: str) -> int | None:
    """1-based window after the switch in which ``rule`` is first firing (None: never)."""
    assert res.switch_at is not None
    for i in range(res.switch_at, res.windows):
        if rule in res.firing[i]:
            return i - res.switch_at + 1
    return None


def summarize(results: list[StreamResult], rates: dict[str, float], within: int) -> dict[str, Any]:
    nulls = [r for r in results if r.name.startswith("null:")]
    null_rows = {}
    for r in nulls:
        judged = r.firing[1:]  # the first window has no reference
        null_rows[r.name] = {"windows": len(judged),
                             "any_alert_share": sum(bool(f) for f in judged) / max(1, len(judged)),
                             "fired_share": sum(bool(f) for f in r.fired[1:]) / max(1, len(judged)),
                             "rules": sorted({x for f in judged for x in f}),
                             "drifted_windows": sum(1 for g, s in zip(r.groups_drifted[1:], r.drift_scores[1:],
                                                                     strict=True) if s is not None and g)}  # fmt: skip
    switch_rows = {}
    for r in (x for x in results if x.name.startswith("switch:")):
        a, b = r.name.removeprefix("switch:").split(">")
        row: dict[str, Any] = {"rate_before": round(rates[a], 3), "rate_after": round(rates[b], 3)}
        for rule in sorted({x for f in r.firing for x in f}) or []:
            row[f"first:{rule}"] = first_firing(r, rule)
        for name, wins in r.extra_firing.items():
            after = [i - r.switch_at + 1 for i in wins if r.switch_at is not None and i >= r.switch_at]
            row[f"first:{name}"] = min(after) if after else None
        row["any_within"] = any(v is not None and v <= within for k, v in row.items() if k.startswith("first:"))
        switch_rows[r.name] = row
    checks = sorted(t for r in results for t in r.check_s[1:])
    return {"null": null_rows, "switch": switch_rows,
            "check_s_median": checks[len(checks) // 2] if checks else None,
            "check_s_p95": checks[int(len(checks) * 0.95)] if checks else None}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=str(ROOT / "deploy/policies.example.yaml"))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--size", type=int, default=150, help="records per window")
    ap.add_argument("--windows", type=int, default=42, help="windows per no-drift stream")
    ap.add_argument("--pre", type=int, default=5, help="windows before a switch")
    ap.add_argument("--post", type=int, default=4, help="windows after a switch")
    ap.add_argument("--min-gap", type=float, default=0.15, help="pairs whose positive rates differ this much")
    ap.add_argument("--within", type=int, default=2, help="a switch counts as detected within this many windows")
    ap.add_argument("--extra-rule", action="append", default=[], metavar="NAME=CONDITION")
    ap.add_argument("--extra-n-of-m", default="2/3")
    ap.add_argument("--no-embeddings", action="store_true")
    ap.add_argument("--only", choices=["null", "switch"], help="run one kind of stream")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = ap.parse_args(argv)
    extra = [tuple(e.split("=", 1)) for e in args.extra_rule]
    n, m = (int(x) for x in args.extra_n_of_m.split("/"))
    todo = [s for s in streams(args.models, args.windows, args.pre, args.post, args.min_gap)
            if not args.only or s.name.startswith(args.only)]  # fmt: skip
    print(f"{len(todo)} streams, {args.jobs} processes", file=sys.stderr)
    t = time.perf_counter()
    results: list[StreamResult] = []
    with ProcessPoolExecutor(args.jobs) as ex:
        futs = {ex.submit(run_stream, s, args.policy, args.size, extra, (n, m), not args.no_embeddings): s
                for s in todo}  # fmt: skip
        for f in as_completed(futs):
            r = f.result()
            results.append(r)
            print(f"  done {r.name}: {r.windows} windows, {time.perf_counter() - t:.0f} s", file=sys.stderr)
    rates = {mm: positive_rate(mm) for mm in args.models}
    summary = summarize(sorted(results, key=lambda r: r.name), rates, args.within)
    for name, row in summary["null"].items():
        print(f"{name:<45} any alert in {row['any_alert_share']:.1%} of {row['windows']} windows "
              f"(fired in {row['fired_share']:.1%}); rules {row['rules']}; drifted windows {row['drifted_windows']}")  # fmt: skip
    for name, row in summary["switch"].items():
        firsts = ", ".join(f"{k[6:]}@{v}" for k, v in row.items() if k.startswith("first:"))
        print(f"{name:<70} {row['rate_before']:.3f}->{row['rate_after']:.3f} {firsts or 'nothing fired'}")
    print(f"check: median {summary['check_s_median']:.2f} s, p95 {summary['check_s_p95']:.2f} s per window; "
          f"wall {time.perf_counter() - t:.0f} s")  # fmt: skip
    print(json.dumps({"summary": summary, "streams": [asdict(r) for r in results]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
