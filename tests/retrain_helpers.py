"""Toy-domain traffic for the retrain tests (v1 log records with simulated user feedback), and a training
subprocess's result for tests that replace the subprocess."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from driftloop.retrain.toy import sample_pairs


def toy_records(domain: str, n: int, *, start: datetime, model_id: str = "toy", prefix: str = "t", seed: int = 0,
                step: timedelta = timedelta(seconds=1), good: bool | None = None,
                correction_rate: float = 0.6) -> list[dict[str, Any]]:  # fmt: skip
    """``n`` records of ``domain``.

    ``good`` (default: domain A) -> the served answer is right and the user gives score 1. Otherwise the
    model answers with domain-A style text, the user gives score 0 and, with ``correction_rate``, writes
    the right answer as a correction (what the retrain loop learns from).
    """
    good = (domain == "A") if good is None else good
    rng = random.Random(f"{prefix}-{seed}")
    out = []
    for i, (p, r) in enumerate(sample_pairs(domain, n, seed=seed)):
        if good:
            resp, fb = r, {"score": 1.0}
        else:
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            resp = f"{a} plus {b} is {a + b}."
            fb = {"score": 0.0, **({"correction": r} if rng.random() < correction_rate else {})}
        out.append({
            "request_id": f"{prefix}-{i}-{rng.getrandbits(40):010x}",
            "timestamp": (start + i * step).isoformat().replace("+00:00", "Z"),
            "model_id": model_id, "model_version": "v0", "prompt": p, "response": resp,
            "latency_ms": round(rng.lognormvariate(5.0, 0.2), 1), "tokens_in": len(p.split()),
            "tokens_out": len(resp.split()), "finish_reason": "stop", "feedback": fb,
        })  # fmt: skip
    return out


def run_retrain(settings: Any, engine: Any, policy: Any, trigger: dict[str, Any], runner: Any = None) -> Any:
    """Queue a run of ``policy`` and run it as the leader's worker does; its outcome."""
    from driftloop.retrain.queue import RetrainWorker, enqueue
    from driftloop.retrain.runner import RetrainRunner

    runner = runner or RetrainRunner(settings, engine, "leader")
    q = enqueue(engine, policy, trigger, "test")
    assert q.created, f"a run of {policy.name} is already {q.status} (job {q.job_id})"
    out = RetrainWorker(settings, engine, runner.instance, lambda: True, runner=runner).run_once()
    assert out is not None and out.job_id == q.job_id, out
    return out


def fake_training_result(work: Path, seed: int, better: bool = True) -> dict[str, Any]:
    """What the training subprocess writes (result.json) for a candidate much better (or worse) than the
    champion on 60 held-out examples: the gate and the registry then run for real on it."""
    from driftloop.retrain.gate import ExampleScore

    (work / "adapter").mkdir(parents=True, exist_ok=True)
    (work / "adapter" / "adapter_config.json").write_text("{}")
    rng = random.Random(seed)
    champ, cand = [], []
    for _ in range(60):
        nll = rng.uniform(20, 40)
        champ.append(ExampleScore(nll=nll, n_tokens=10, rouge_l=0.2, bleu=5.0, exact_match=0.0, output="x"))
        cand.append(ExampleScore(nll=nll * (0.5 if better else 1.3), n_tokens=10, rouge_l=0.25, bleu=6.0,
                                 exact_match=0.0, output="y"))  # fmt: skip
    return {"train": {"steps": 1}, "timings": {"train_s": 0.1},
            "scores": {"heldout": {"champion": [s.to_dict() for s in champ],
                                   "candidate": [s.to_dict() for s in cand]}}}  # fmt: skip
