"""The training subprocess: ``python -m retrain.worker WORK_DIR``.

Reads ``WORK_DIR/request.json``, fine-tunes a LoRA adapter, scores champion and candidate on every
evaluation suite and writes ``result.json``. Progress goes to ``progress.json`` (replaced atomically),
logs to stdout (the daemon redirects them to ``train.log``). It touches no database: the daemon owns
the job row, so a killed worker can never leave the registry half-written.

Exit codes: 0 done, 3 cancelled (SIGTERM, or the daemon that started it is gone), 1 error.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("driftloop.retrain.worker")

EXIT_CANCELLED = 3


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _read_jsonl(path: str | None) -> list[dict[str, Any]]:
    if not path:
        return []
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def run(work_dir: Path) -> int:
    """Train and evaluate as ``request.json`` says; return the exit code."""
    from driftloop.retrain.evaluate import evaluate_pair, load_golden_set
    from driftloop.retrain.trainer import TrainingCancelled, TrainProgress, train_lora
    from driftloop.settings.retrain import LoraSettings, TrainingSettings

    req = json.loads((work_dir / "request.json").read_text(encoding="utf-8"))
    stop = {"flag": False}
    parent = os.getppid()

    def on_term(signum: int, frame: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    def should_stop() -> bool:
        # a daemon killed with -9 cannot tell us: notice that we were re-parented and stop
        return stop["flag"] or os.getppid() != parent

    t0 = time.perf_counter()
    progress_path = work_dir / "progress.json"

    def report(stage: str, fraction: float, message: str, **extra: Any) -> None:
        _write_json(progress_path, {"stage": stage, "progress": round(fraction, 4), "message": message,
                                    "elapsed_s": round(time.perf_counter() - t0, 2), **extra})  # fmt: skip

    def on_progress(p: TrainProgress) -> None:
        frac = p.step / max(p.total_steps, 1)
        report("training", 0.8 * frac, f"step {p.step}/{p.total_steps} loss {p.loss:.4f}",
               step=p.step, total_steps=p.total_steps, loss=p.loss, tokens=p.tokens)  # fmt: skip

    settings = dict(req["train_config"])  # TrainingSettings fields and "lora": what the runner validated
    lora = LoraSettings.model_validate(settings.pop("lora"))
    cfg = TrainingSettings.model_validate(settings)
    train_rows = _read_jsonl(req["train_path"])
    report("training", 0.0, f"training on {len(train_rows)} examples")
    log.info("training %s on %d examples -> %s", req["base_model"], len(train_rows), req["adapter_out"])
    try:
        tr = train_lora(req["base_model"], train_rows, req["adapter_out"], cfg, lora, progress=on_progress,
                        should_stop=should_stop)  # fmt: skip
    except TrainingCancelled:
        log.warning("training cancelled")
        return EXIT_CANCELLED
    t_train = time.perf_counter() - t0
    log.info("trained: %d steps, %.0f tokens/s, final loss %.4f", tr.steps, tr.tokens_per_s, tr.final_loss)

    suites: dict[str, list[dict[str, Any]]] = {
        "heldout": [{"prompt": r["prompt"], "reference": r["response"]} for r in _read_jsonl(req["eval_path"])]
    }
    if req.get("golden_path"):
        suites["golden"] = load_golden_set(req["golden_path"])
    report(
        "evaluating", 0.8, "scoring champion and candidate: " + ", ".join(f"{k} ({len(v)})" for k, v in suites.items())
    )
    if should_stop():
        return EXIT_CANCELLED
    t1 = time.perf_counter()
    scores = evaluate_pair(req["base_model"], req.get("champion_adapter"), req["adapter_out"], suites,
                           max_length=cfg.max_length, max_new_tokens=int(req.get("max_new_tokens", 64)),
                           generate=bool(req.get("generate", True)))  # fmt: skip
    t_eval = time.perf_counter() - t1
    _write_json(work_dir / "result.json", {
        "train": {"adapter_dir": tr.adapter_dir, "steps": tr.steps, "train_tokens": tr.train_tokens,
                  "tokens_per_s": tr.tokens_per_s, "final_loss": tr.final_loss, "duration_s": tr.duration_s,
                  "device": tr.device, "dtype": tr.dtype},
        "scores": {suite: {"champion": [s.to_dict() for s in ch], "candidate": [s.to_dict() for s in ca]}
                   for suite, (ch, ca) in scores.items()},
        "timings": {"train_s": round(t_train, 3), "eval_s": round(t_eval, 3)},
    })  # fmt: skip
    report("evaluated", 0.95, "evaluation written")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m retrain.worker WORK_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(Path(args[0]))
    except Exception:
        log.exception("training run failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
