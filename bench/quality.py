"""Quality without many labels, measured on the shared AlpacaEval data (issue 15).

Setup (all seeded):

* The 805 prompts are split in half by a seeded permutation: a *reference* half and an *evaluation*
  half, so nothing the estimator was trained on reappears in an evaluated window.
* Reference period: ``--ref-windows`` windows of 300 per model, resampled from the reference half of
  each of the seven models (the workload's history, in which every model served it for a while); a
  uniform 10 % slice of it is labelled (``win >= 0.5`` is positive). The learned estimator
  (``driftloop.monitor.estimator``: MiniLM embeddings of prompt and response + cheap features,
  Platt-calibrated) is trained on those labels only.
* Evaluation: ``--windows`` windows of 300 per model, resampled with replacement from its evaluation
  half; a uniform 10 % slice (Bernoulli per record) keeps its label, the rest is hidden. The window's
  true rate is the mean of all 300 labels.
* Machine scores: the estimator's calibrated P(positive), and simulated judges of known agreement
  (70 %, 85 %, 95 %): the hidden label, flipped for a seeded (1 - agreement) share of the records.
* Per window: the classical interval from the slice (``classical_mean_ci``) and PPI++ with each machine
  score (``ppi_mean_ci``), both 90 %.
* Drift: for every model whose rate is below the strong model's (``--strong``), ``--switch-streams``
  streams that switch from the strong model to it; each window after the switch is tested with
  ``drop_test`` against the PPI estimate of the strong model's reference period (p < ``--p-alert``).
  The delay is the first alerting window (1 = the switch window). False alarms: the same test on every
  no-drift evaluation window, against the PPI estimate of the same model's reference period.

The last line printed is one JSON object (``coverage``, ``width_ratio``, ``width_ratio_judge_95``,
``detection_delay_windows``, ``false_alarm_rate``, ``per_model`` and the details); progress goes to
stderr. Every distinct text is embedded once and kept on disk (``--cache-dir``).

Honest by design: the thresholds (90 % intervals, p < 0.01, 10 % slice) are fixed in advance and the
JSON says which targets are met (``targets``); nothing here is tuned to pass them.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("DRIFTLOOP_ALPACAEVAL_DIR", ROOT.parent / "shared/data/alpacaeval"))
MODELS = ("gpt4_1106_preview", "FuseChat-Llama-3.2-1B-Instruct", "gpt-3.5-turbo-1106", "claude-2.1_concise",
          "gpt-3.5-turbo-1106_concise", "alpaca-7b", "falcon-7b-instruct")  # fmt: skip
QUICK_MODELS = ("FuseChat-Llama-3.2-1B-Instruct", "claude-2.1_concise", "alpaca-7b")
AGREEMENTS = (0.70, 0.85, 0.95)
WINDOW = 300
LABEL_FRACTION = 0.10
ALPHA = 0.10
FRACTIONS = (0.05, 0.10, 0.20, 0.40)  # label fractions for the "labels for a width" table


def say(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rows_of(model: str) -> list[dict[str, Any]]:
    path = DATA / f"{model}.jsonl.gz"
    if not path.exists():
        raise SystemExit(f"AlpacaEval data not found at {path} (set DRIFTLOOP_ALPACAEVAL_DIR)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


class DiskEmbeddings:
    """Every distinct text embedded once with MiniLM (the monitor's cache) and kept on disk by model digest."""

    def __init__(self, cache_dir: Path) -> None:
        from driftloop.monitor.embeddings import EmbeddingCache, model_path, source_digest

        self.digest = source_digest(model_path(None))
        self.cache = EmbeddingCache(capacity=1_000_000)
        self.file = cache_dir / f"alpaca-minilm-{self.digest}-{self.cache.max_chars}-{self.cache.max_tokens}.npz"
        self.table: dict[str, np.ndarray] = {}
        if self.file.exists():
            with np.load(self.file, allow_pickle=False) as npz:
                self.table = dict(zip((str(k) for k in npz["keys"]), npz["vectors"], strict=True))

    @staticmethod
    def key(text: str) -> str:
        return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).hexdigest()

    def prepare(self, texts: list[str]) -> None:
        todo = list({self.key(t): t for t in texts if self.key(t) not in self.table}.items())
        if not todo:
            return
        say(f"embedding {len(todo)} distinct texts (MiniLM, onnxruntime)")
        t0 = time.monotonic()
        for i in range(0, len(todo), 256):
            part = todo[i : i + 256]
            vecs = self.cache.encode([t for _, t in part])
            self.table.update({k: v for (k, _), v in zip(part, vecs, strict=True)})
            say(f"  {min(i + 256, len(todo))}/{len(todo)} ({time.monotonic() - t0:.0f} s)")
        self.file.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(sorted(self.table))
        np.savez(self.file, keys=keys, vectors=np.stack([self.table[k] for k in keys]))

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.table[self.key(t)] for t in texts])


def auc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else None


def ppi_window(y: np.ndarray, f: np.ndarray, lab: np.ndarray) -> Any:
    """PPI++ for the window's own rate: every record of it has a machine score (``population``)."""
    from driftloop.monitor.ppi import ppi_mean_ci

    return ppi_mean_ci(y[lab], f[lab], f[~lab], alpha=ALPHA, population=y.size)


def alarms_of(e: Any, ref: Any, p_alert: float) -> tuple[bool, bool]:
    """(the documented rule ``quality.estimate_high < ref.quality.estimate_low`` fires, drop_test p < p_alert)."""
    from driftloop.monitor.ppi import drop_test

    return e.high < ref.low, drop_test(e, ref) < p_alert


def evaluate_model(
    y: np.ndarray, scores: dict[str, np.ndarray], rows: np.ndarray, ref: Any, args: argparse.Namespace,
    rng: np.random.Generator, n_windows: int, acc: dict[str, Any],
) -> None:  # fmt: skip
    """No-drift windows of one model (one replicate): coverage, widths, false alarms, added into ``acc``."""
    from driftloop.monitor.ppi import classical_mean_ci

    for _ in range(n_windows):
        idx = rng.choice(rows, size=WINDOW, replace=True)
        yw = y[idx]
        lab = rng.random(WINDOW) < LABEL_FRACTION
        if not lab.any():
            continue
        acc["n"] += 1
        truth = yw.mean()
        c = classical_mean_ci(yw[lab], alpha=ALPHA, population=WINDOW)
        acc["hits"]["classical"] += c.low <= truth <= c.high
        acc["width"]["classical"] += c.width
        for src, f in scores.items():
            e = ppi_window(yw, f[idx], lab)
            acc["hits"][src] += e.low <= truth <= e.high
            acc["width"][src] += e.width
            acc["ratio_max"][src] = max(acc["ratio_max"][src], e.width / c.width if c.width > 0 else 1.0)
            if src == "estimator":
                rule, test = alarms_of(e, ref, args.p_alert)
                acc["alarms_rule"] += rule
                acc["alarms_test"] += test
        u = rng.random(WINDOW)
        for fr in FRACTIONS:
            lab_f = u < fr
            if lab_f.any():
                fw = acc["frac_width"][str(fr)]
                fw["classical"] += classical_mean_ci(yw[lab_f], alpha=ALPHA, population=WINDOW).width
                fw["judge_95"] += ppi_window(yw, scores["judge_95"][idx], lab_f).width
                fw["n"] += 1


def new_acc(sources: list[str]) -> dict[str, Any]:
    return {
        "n": 0, "hits": {s: 0 for s in ("classical", *sources)}, "width": {s: 0.0 for s in ("classical", *sources)},
        "ratio_max": {s: 0.0 for s in sources}, "alarms_rule": 0, "alarms_test": 0, "replicate_alarms": [],
        "frac_width": {str(fr): {"classical": 0.0, "judge_95": 0.0, "n": 0} for fr in FRACTIONS},
        "delays_rule": [], "delays_test": [], "rates": [],
    }  # fmt: skip


def width_ratio_bound(rate: float, agreement: float, label_fraction: float = LABEL_FRACTION) -> float | None:
    """The smallest width ratio any estimator can reach from the labels and a judge that flips a ``1 -
    agreement`` share of labels at random: ``sqrt(1 - R^2)`` for the window's own rate (asymptotically; R^2 is
    the share of the label's variance the judge explains). At a 2 % rate a 95 % judge explains only ~0.3 of it:
    most of its "positives" are flips of negatives."""
    if not 0 < rate < 1:
        return None
    ef = rate * agreement + (1 - rate) * (1 - agreement)
    cov = rate * agreement - rate * ef
    r2 = cov * cov / (rate * (1 - rate) * ef * (1 - ef))
    return float(np.sqrt(1 - r2))


def summarize_model(acc: dict[str, Any]) -> dict[str, Any]:
    n = acc["n"]
    out: dict[str, Any] = {"windows": n, "rate": float(np.mean(acc["rates"]))}
    out["bound_width_ratio_judge_95"] = width_ratio_bound(out["rate"], 0.95)
    out["coverage"] = acc["hits"]["estimator"] / n
    out["coverage_classical"] = acc["hits"]["classical"] / n
    out["width_classical"] = acc["width"]["classical"] / n
    out["width_estimator"] = acc["width"]["estimator"] / n
    out["width_ratio"] = acc["width"]["estimator"] / acc["width"]["classical"]
    out["width_ratio_max_window"] = acc["ratio_max"]["estimator"]
    for a in AGREEMENTS:
        s = f"judge_{round(a * 100)}"
        out[f"coverage_{s}"] = acc["hits"][s] / n
        out[f"width_ratio_{s}"] = acc["width"][s] / acc["width"]["classical"]
        out[f"width_ratio_max_window_{s}"] = acc["ratio_max"][s]
    out["false_alarm_rate"] = acc["alarms_rule"] / n
    out["false_alarm_rate_drop_test"] = acc["alarms_test"] / n
    out["false_alarms_per_replicate"] = acc["replicate_alarms"]
    out["width_by_label_fraction"] = {
        fr: {k: v[k] / v["n"] for k in ("classical", "judge_95")} for fr, v in acc["frac_width"].items() if v["n"]
    }
    return out


def detection_delays(
    y: np.ndarray, f: np.ndarray, rows: np.ndarray, ref: Any, args: argparse.Namespace, rng: np.random.Generator,
    streams: int,
) -> tuple[list[int | None], list[int | None]]:  # fmt: skip
    """Streams that switch from the strong model to this one: the first window that alarms, per rule."""
    rule_delays: list[int | None] = []
    test_delays: list[int | None] = []
    for _ in range(streams):
        rule_d = test_d = None
        for k in range(1, args.post + 1):
            idx = rng.choice(rows, size=WINDOW, replace=True)
            lab = rng.random(WINDOW) < LABEL_FRACTION
            if not lab.any():
                continue
            rule, test = alarms_of(ppi_window(y[idx], f[idx], lab), ref, args.p_alert)
            rule_d = k if rule and rule_d is None else rule_d
            test_d = k if test and test_d is None else test_d
            if rule_d is not None and test_d is not None:
                break
        rule_delays.append(rule_d)
        test_delays.append(test_d)
    return rule_delays, test_delays


def delay_summary(delays: list[int | None], post: int) -> dict[str, Any]:
    found = [d for d in delays if d is not None]
    return {
        "streams": len(delays),
        "detected_within_3": sum(d <= 3 for d in found) / len(delays),
        "median_delay": float(np.median([d if d is not None else post + 1 for d in delays])),
        "max_delay": max(d if d is not None else post + 1 for d in delays),
        "missed": delays.count(None),
    }


def replicate(
    rep: int, args: argparse.Namespace, data: dict[str, list[dict[str, Any]]], y: dict[str, np.ndarray],
    emb: DiskEmbeddings, accs: dict[str, dict[str, Any]], strong_name: str | None, n_windows: int, streams: int,
) -> dict[str, Any]:  # fmt: skip
    """One replicate: its own prompt split, reference period, labels, estimator and simulated judges."""
    from driftloop.monitor.estimator import QualityEstimator
    from driftloop.monitor.ppi import ppi_mean_ci
    from driftloop.settings.estimator import EstimatorSettings

    rng = np.random.default_rng([args.seed, rep])
    n_prompts = min(len(r) for r in data.values())
    perm = rng.permutation(n_prompts)
    half = len(perm) // 2
    ref_rows, eval_rows = np.sort(perm[:half]), np.sort(perm[half:])
    used = np.sort(perm)

    # reference period: windows of every model from the reference half, a uniform 10 % labelled
    ref_idx: dict[str, np.ndarray] = {}
    ref_lab: dict[str, np.ndarray] = {}
    train_recs: list[dict[str, str]] = []
    train_y: list[float] = []
    for m in data:
        idx = rng.choice(ref_rows, size=WINDOW * args.ref_windows, replace=True)
        lab = rng.random(idx.size) < LABEL_FRACTION
        ref_idx[m], ref_lab[m] = idx, lab
        for i in np.unique(idx[lab]):  # a record labelled twice is one training example
            train_recs.append({"prompt": data[m][i]["instruction"], "response": data[m][i]["output"]})
            train_y.append(y[m][i])
    est = QualityEstimator(EstimatorSettings(seed=args.seed + rep), embed=emb, embedding_digest=emb.digest)
    est.fit(train_recs, np.array(train_y))
    cfg = est.config
    assert cfg is not None
    say(f"replicate {rep}: estimator {est.version}: {cfg.n_train} labels, rate {cfg.label_rate:.3f}, "
        f"CV AUC {cfg.cv_auc:.3f}")  # fmt: skip

    f_est = {m: np.full(n_prompts, np.nan) for m in data}  # scored where used (--prompts limits it)
    for m in data:
        f_est[m][used] = est.predict(
            [{"prompt": data[m][i]["instruction"], "response": data[m][i]["output"]} for i in used]
        )
    flips = {a: {m: rng.random(n_prompts) >= a for m in data} for a in AGREEMENTS}
    scores = {
        m: {"estimator": f_est[m], **{f"judge_{round(a * 100)}": np.abs(y[m] - flips[a][m]) for a in AGREEMENTS}}
        for m in data
    }
    # the reference estimate of each model: PPI over its reference period (labels + estimator scores), for
    # the rate of those records, as the monitor computes ref.quality.estimate* (every record scored)
    refs = {}
    for m in data:
        yr, fr, lr = y[m][ref_idx[m]], f_est[m][ref_idx[m]], ref_lab[m]
        refs[m] = ppi_mean_ci(yr[lr], fr[lr], fr[~lr], alpha=ALPHA, population=yr.size)
    for m in data:
        acc = accs[m]
        before = acc["alarms_rule"], acc["n"]
        evaluate_model(y[m], scores[m], eval_rows, refs[m], args, rng, n_windows, acc)
        acc["replicate_alarms"].append([acc["alarms_rule"] - before[0], acc["n"] - before[1]])
        acc["rates"].append(float(y[m][eval_rows].mean()))
    strong = strong_name if strong_name in data else max(data, key=lambda m: (y[m].mean() < 1, y[m].mean()))
    for m in data:
        if m != strong and y[m][eval_rows].mean() < y[strong][eval_rows].mean():
            rule_d, test_d = detection_delays(y[m], f_est[m], eval_rows, refs[strong], args, rng, streams)
            accs[m]["delays_rule"] += rule_d
            accs[m]["delays_test"] += test_d
    eval_y = np.concatenate([y[m][eval_rows] for m in data])
    eval_f = np.concatenate([f_est[m][eval_rows] for m in data])
    within = [auc(y[m][eval_rows], f_est[m][eval_rows]) for m in data]
    return {"version": est.version, "n_train": cfg.n_train, "label_rate": cfg.label_rate, "cv_auc": cfg.cv_auc,
            "brier_cv": cfg.brier, "auc_pooled_eval": auc(eval_y, eval_f), "auc_within_model": within,
            "strong": strong, "reference_estimates": {m: [refs[m].mean, refs[m].low, refs[m].high] for m in data}}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = {m: rows_of(m) for m in args.models}
    if args.prompts:  # the same first prompts of every model (the files are aligned by prompt)
        data = {m: rows[: args.prompts] for m, rows in data.items()}
    y = {m: np.array([float(r["win"] >= 0.5) for r in rows]) for m, rows in data.items()}
    emb = DiskEmbeddings(Path(args.cache_dir))
    n_prompts = min(len(r) for r in data.values())
    first = args.models[0]
    emb.prepare([data[first][i]["instruction"] for i in range(n_prompts)]
                + [data[m][i]["output"] for m in data for i in range(n_prompts)])  # fmt: skip

    sources = ["estimator", *(f"judge_{round(a * 100)}" for a in AGREEMENTS)]
    accs = {m: new_acc(sources) for m in args.models}
    reps = []
    n_windows = -(-args.windows // args.replicates)
    streams = -(-args.switch_streams // args.replicates)
    for rep in range(args.replicates):
        say(f"replicate {rep + 1}/{args.replicates}: {n_windows} no-drift windows per model, {streams} switch streams")
        reps.append(replicate(rep, args, data, y, emb, accs, args.strong, n_windows, streams))

    per_model = {m: summarize_model(accs[m]) for m in args.models}
    for m in args.models:
        if accs[m]["delays_rule"]:
            per_model[m]["detection"] = delay_summary(accs[m]["delays_rule"], args.post)
            per_model[m]["detection_drop_test"] = delay_summary(accs[m]["delays_test"], args.post)
            per_model[m]["detection_delay_windows"] = per_model[m]["detection"]["median_delay"]
        else:
            per_model[m]["detection_delay_windows"] = None
    total = sum(p["windows"] for p in per_model.values())

    def pooled(key: str) -> float:
        return sum(p[key] * p["windows"] for p in per_model.values()) / total

    def width_ratio(source: str) -> float:
        num = sum(p["width_classical"] * p[f"width_ratio{source}"] * p["windows"] for p in per_model.values())
        return num / sum(p["width_classical"] * p["windows"] for p in per_model.values())

    eligible = [m for m in per_model if 0 < per_model[m]["rate"] < 1]
    delays = [p["detection_delay_windows"] for p in per_model.values() if p["detection_delay_windows"] is not None]
    fracs = per_model[first]["width_by_label_fraction"]
    widths = {fr: {s: float(np.mean([p["width_by_label_fraction"][fr][s] for p in per_model.values()]))
                   for s in ("classical", "judge_95")} for fr in fracs}  # fmt: skip
    result: dict[str, Any] = {
        "coverage": pooled("coverage"),
        "coverage_classical": pooled("coverage_classical"),
        "coverage_judges": {str(round(a * 100)): pooled(f"coverage_judge_{round(a * 100)}") for a in AGREEMENTS},
        "width_ratio": width_ratio(""),
        "width_ratio_max_model": max(p["width_ratio"] for p in per_model.values()),
        "width_ratio_max_window": max(p["width_ratio_max_window"] for p in per_model.values()),
        "width_ratio_judges": {str(round(a * 100)): width_ratio(f"_judge_{round(a * 100)}") for a in AGREEMENTS},
        "width_ratio_judge_95": max(per_model[m]["width_ratio_judge_95"] for m in eligible) if eligible else None,
        "detection_delay_windows": max(delays) if delays else None,
        "detected_within_3_min_model": min(p["detection"]["detected_within_3"] for p in per_model.values()
                                           if "detection" in p) if delays else None,
        "detection_worst_stream": max(p["detection"]["max_delay"] for p in per_model.values()
                                      if "detection" in p) if delays else None,
        "false_alarm_rate": pooled("false_alarm_rate"),
        "false_alarm_rate_max_model": max(p["false_alarm_rate"] for p in per_model.values()),
        "false_alarm_rate_drop_test": pooled("false_alarm_rate_drop_test"),
        "false_alarm_rate_drop_test_max_model": max(p["false_alarm_rate_drop_test"] for p in per_model.values()),
        "estimator": {
            "replicates": reps,
            "cv_auc_mean": float(np.mean([r["cv_auc"] for r in reps])),
            "auc_pooled_eval_mean": float(np.mean([r["auc_pooled_eval"] for r in reps if r["auc_pooled_eval"]])),
        },
        "width_by_label_fraction": widths,
        "config": {
            "models": list(args.models),
            "windows_per_model": args.windows,
            "replicates": args.replicates,
            "window": WINDOW,
            "label_fraction": LABEL_FRACTION,
            "alpha": ALPHA,
            "interval": "the window's own rate (population = window; every record has a machine score)",
            "alarm": "quality.estimate_high < ref.quality.estimate_low (the documented rule); "
                     "drop_test p < p_alert reported beside it",
            "ref_windows": args.ref_windows,
            "strong": args.strong,
            "switch_streams": args.switch_streams,
            "post": args.post,
            "p_alert": args.p_alert,
            "seed": args.seed,
            "prompts": args.prompts or n_prompts,
            "quick": args.quick,
        },
    }  # fmt: skip
    result["targets"] = {
        "coverage_ge_0.85_estimator": result["coverage"] >= 0.85,
        "coverage_ge_0.85_every_judge": all(v >= 0.85 for v in result["coverage_judges"].values()),
        "ppi_width_le_1.02_classical_every_model": all(
            p[k] <= 1.02 for p in per_model.values() for k in p if k.startswith("width_ratio")
        ),
        "judge_95_width_ratio_le_0.85_every_eligible_model": result["width_ratio_judge_95"] is not None
        and result["width_ratio_judge_95"] <= 0.85,
        "detection_within_3_windows": bool(delays) and max(delays) <= 3,
        "false_alarm_rate_le_0.05": result["false_alarm_rate"] <= 0.05,
        "false_alarm_rate_le_0.05_every_model": result["false_alarm_rate_max_model"] <= 0.05,
        "windows_ge_200": total >= 200,
    }
    result["per_model"] = per_model
    return result


def _plain(o: Any) -> Any:
    """numpy scalars (a bool from comparing a numpy float) as Python values for JSON."""
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--windows", type=int, default=None, help="no-drift evaluation windows per model (200; --quick 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model files")
    p.add_argument("--ref-windows", type=int, default=3, help="reference-period windows per model")
    p.add_argument("--strong", default="FuseChat-Llama-3.2-1B-Instruct", help="the model switched away from")
    p.add_argument("--switch-streams", type=int, default=20, help="switch streams per weaker model (in all)")
    p.add_argument("--replicates", type=int, default=10,
                   help="independent replicates (prompt split, reference labels, estimator, judges); windows and "
                        "streams are split between them, so a per-model rate is not one reference draw's luck")
    p.add_argument("--post", type=int, default=6, help="windows observed after a switch")
    p.add_argument("--p-alert", type=float, default=0.01, help="drop_test p-value that alerts")
    p.add_argument("--prompts", type=int, default=0, help="use only this many prompts (0: all)")
    p.add_argument("--quick", action="store_true", help="three models, 160 prompts, 10 windows: under a minute")
    p.add_argument("--cache-dir", default=None, help="where embeddings are kept (default: the driftloop cache)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.models = ",".join(QUICK_MODELS) if args.models == ",".join(MODELS) else args.models
        args.windows, args.switch_streams, args.prompts = args.windows or 10, 5, args.prompts or 160
        args.replicates = min(args.replicates, 2)
    args.windows = args.windows or 200
    args.models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if args.cache_dir is None:
        from driftloop.monitor.embeddings import default_cache_dir

        args.cache_dir = str(default_cache_dir() / "bench-quality")
    t0 = time.monotonic()
    result = run(args)
    result["seconds"] = round(time.monotonic() - t0, 1)
    line = json.dumps(result, default=_plain)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=_plain) + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
