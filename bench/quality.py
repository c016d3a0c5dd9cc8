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
    from driftloop.monitor.ppi import ppi_mean_ci

    return ppi_mean_ci(y[lab], f[lab], f[~lab], alpha=ALPHA)


def evaluate_model(
    model: str, y: np.ndarray, scores: dict[str, np.ndarray], rows: np.ndarray, ref: Any, args: argparse.Namespace,
    rng: np.random.Generator,
) -> dict[str, Any]:  # fmt: skip
    """No-drift windows of one model: coverage, widths, false alarms (against its own reference estimate)."""
    from driftloop.monitor.ppi import classical_mean_ci, drop_test

    hits = {s: 0 for s in ("classical", *scores)}
    width = {s: 0.0 for s in hits}
    ratio_max = {s: 0.0 for s in scores}
    alarms = 0
    frac_width: dict[str, dict[str, float]] = {str(fr): {"classical": 0.0, "judge_95": 0.0} for fr in FRACTIONS}
    n = 0
    for _ in range(args.windows):
        idx = rng.choice(rows, size=WINDOW, replace=True)
        yw = y[idx]
        lab = rng.random(WINDOW) < LABEL_FRACTION
        if not lab.any():
            continue
        n += 1
        truth = yw.mean()
        c = classical_mean_ci(yw[lab], alpha=ALPHA)
        hits["classical"] += c.low <= truth <= c.high
        width["classical"] += c.width
        for s, f in scores.items():
            e = ppi_window(yw, f[idx], lab)
            hits[s] += e.low <= truth <= e.high
            width[s] += e.width
            ratio_max[s] = max(ratio_max[s], e.width / c.width if c.width > 0 else 1.0)
            if s == "estimator":
                alarms += drop_test(e, ref) < args.p_alert
        u = rng.random(WINDOW)
        for fr in FRACTIONS:
            lab_f = u < fr
            if lab_f.any():
                frac_width[str(fr)]["classical"] += classical_mean_ci(yw[lab_f], alpha=ALPHA).width / args.windows
                frac_width[str(fr)]["judge_95"] += ppi_window(yw, scores["judge_95"][idx], lab_f).width / args.windows
    out: dict[str, Any] = {"windows": n, "rate": float(y[rows].mean())}
    out["coverage"] = hits["estimator"] / n
    out["coverage_classical"] = hits["classical"] / n
    out["width_classical"] = width["classical"] / n
    out["width_estimator"] = width["estimator"] / n
    out["width_ratio"] = width["estimator"] / width["classical"]
    out["width_ratio_max_window"] = ratio_max["estimator"]
    for a in AGREEMENTS:
        s = f"judge_{round(a * 100)}"
        out[f"coverage_{s}"] = hits[s] / n
        out[f"width_ratio_{s}"] = width[s] / width["classical"]
        out[f"width_ratio_max_window_{s}"] = ratio_max[s]
    out["false_alarm_rate"] = alarms / n
    out["width_by_label_fraction"] = frac_width
    return out


def detection(
    strong: str, weak: str, y: dict[str, np.ndarray], f: dict[str, np.ndarray], rows: dict[str, np.ndarray],
    ref: Any, args: argparse.Namespace, rng: np.random.Generator,
) -> dict[str, Any]:  # fmt: skip
    """Streams that switch from ``strong`` to ``weak``: the first window whose estimate drops significantly."""
    from driftloop.monitor.ppi import drop_test

    delays: list[int | None] = []
    for _ in range(args.switch_streams):
        delay = None
        for k in range(1, args.post + 1):
            idx = rng.choice(rows[weak], size=WINDOW, replace=True)
            lab = rng.random(WINDOW) < LABEL_FRACTION
            if lab.any() and drop_test(ppi_window(y[weak][idx], f[weak][idx], lab), ref) < args.p_alert:
                delay = k
                break
        delays.append(delay)
    found = [d for d in delays if d is not None]
    return {
        "streams": len(delays),
        "detected_within_3": sum(d <= 3 for d in found) / len(delays),
        "median_delay": float(np.median([d if d is not None else args.post + 1 for d in delays])),
        "max_delay": max(d if d is not None else args.post + 1 for d in delays),
        "missed": delays.count(None),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from driftloop.monitor.estimator import QualityEstimator
    from driftloop.monitor.ppi import ppi_mean_ci
    from driftloop.settings.estimator import EstimatorSettings

    rng = np.random.default_rng(args.seed)
    data = {m: rows_of(m) for m in args.models}
    n_prompts = min(len(r) for r in data.values())
    perm = rng.permutation(n_prompts)
    if args.prompts:
        perm = perm[: args.prompts]
    half = len(perm) // 2
    ref_rows, eval_rows = np.sort(perm[:half]), np.sort(perm[half:])
    y = {m: np.array([float(r["win"] >= 0.5) for r in rows]) for m, rows in data.items()}
    emb = DiskEmbeddings(Path(args.cache_dir))
    used = np.sort(perm)
    emb.prepare(
        [data[args.models[0]][i]["instruction"] for i in used] + [data[m][i]["output"] for m in data for i in used]
    )

    # reference period: windows of every model from the reference half, a uniform 10 % labelled
    say("reference period and estimator training")
    ref_idx: dict[str, np.ndarray] = {}
    ref_lab: dict[str, np.ndarray] = {}
    train_recs: list[dict[str, str]] = []
    train_y: list[float] = []
    for m in args.models:
        idx = rng.choice(ref_rows, size=WINDOW * args.ref_windows, replace=True)
        lab = rng.random(idx.size) < LABEL_FRACTION
        ref_idx[m], ref_lab[m] = idx, lab
        for i in np.unique(idx[lab]):  # a record labelled twice is one training example
            train_recs.append({"prompt": data[m][i]["instruction"], "response": data[m][i]["output"]})
            train_y.append(y[m][i])
    est = QualityEstimator(EstimatorSettings(seed=args.seed), embed=emb, embedding_digest=emb.digest)
    est.fit(train_recs, np.array(train_y))
    cfg = est.config
    assert cfg is not None
    say(f"estimator {est.version}: {cfg.n_train} labels, rate {cfg.label_rate:.3f}, CV AUC {cfg.cv_auc:.3f}")

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
    # the reference estimate of each model: PPI over its reference period (labels + estimator scores)
    refs = {m: ppi_mean_ci(y[m][ref_idx[m]][ref_lab[m]], f_est[m][ref_idx[m]][ref_lab[m]],
                           f_est[m][ref_idx[m]][~ref_lab[m]], alpha=ALPHA) for m in data}  # fmt: skip

    per_model: dict[str, Any] = {}
    for m in args.models:
        say(f"{m}: {args.windows} no-drift windows")
        per_model[m] = evaluate_model(m, y[m], scores[m], eval_rows, refs[m], args, rng)
        yy = y[m][eval_rows]
        per_model[m]["estimator_auc_within_model"] = auc(yy, f_est[m][eval_rows])
        per_model[m]["reference_estimate"] = {"mean": refs[m].mean, "low": refs[m].low, "high": refs[m].high}
    strong = args.strong if args.strong in data else max(data, key=lambda m: (y[m].mean() < 1, y[m].mean()))
    for m in args.models:
        if y[m][eval_rows].mean() < y[strong][eval_rows].mean() and m != strong:
            say(f"switch {strong} -> {m}: {args.switch_streams} streams")
            rows_eval = {m: eval_rows}
            per_model[m]["detection"] = detection(strong, m, y, f_est, rows_eval, refs[strong], args, rng)
            per_model[m]["detection_delay_windows"] = per_model[m]["detection"]["median_delay"]
        else:
            per_model[m]["detection_delay_windows"] = None

    pooled_y = np.concatenate([y[m][eval_rows] for m in data])
    pooled_f = np.concatenate([f_est[m][eval_rows] for m in data])
    total = sum(p["windows"] for p in per_model.values())

    def pooled(key: str) -> float:
        return sum(p[key] * p["windows"] for p in per_model.values()) / total

    def width_ratio(source: str) -> float:
        num = sum(p["width_classical"] * p[f"width_ratio{source}"] * p["windows"] for p in per_model.values())
        return num / sum(p["width_classical"] * p["windows"] for p in per_model.values())

    eligible = [m for m in data if 0 < per_model[m]["rate"] < 1]
    delays = [p["detection_delay_windows"] for p in per_model.values() if p["detection_delay_windows"] is not None]
    widths = {
        fr: {s: float(np.mean([p["width_by_label_fraction"][fr][s] for p in per_model.values()]))
             for s in ("classical", "judge_95")}
        for fr in per_model[args.models[0]]["width_by_label_fraction"]
    }  # fmt: skip
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
        "false_alarm_rate": pooled("false_alarm_rate"),
        "estimator": {
            "version": est.version,
            "n_train": cfg.n_train,
            "label_rate": cfg.label_rate,
            "cv_auc": cfg.cv_auc,
            "brier_cv": cfg.brier,
            "auc_pooled_eval": auc(pooled_y, pooled_f),
        },
        "width_by_label_fraction": widths,
        "config": {
            "models": list(args.models),
            "windows_per_model": args.windows,
            "window": WINDOW,
            "label_fraction": LABEL_FRACTION,
            "alpha": ALPHA,
            "ref_windows": args.ref_windows,
            "strong": strong,
            "switch_streams": args.switch_streams,
            "post": args.post,
            "p_alert": args.p_alert,
            "seed": args.seed,
            "prompts": len(perm),
            "quick": args.quick,
        },
    }
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
    p.add_argument("--windows", type=int, default=None, help="no-drift evaluation windows per model (60; --quick 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model files")
    p.add_argument("--ref-windows", type=int, default=3, help="reference-period windows per model")
    p.add_argument("--strong", default="FuseChat-Llama-3.2-1B-Instruct", help="the model switched away from")
    p.add_argument("--switch-streams", type=int, default=20)
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
    args.windows = args.windows or 60
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
