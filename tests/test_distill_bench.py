"""bench/distill.py at a tiny size on the toy GPT-2 and the shared AlpacaEval data: the stages and the JSON line.

The real measurement (SmolLM2-135M-Instruct from its GGUF, hundreds of prompts) runs on the GPU machine
(bench/distill_gpu.sh); here the same code paths run on a 2-layer model so the test takes well under a
minute: importing the real GGUF alone takes about a minute on this machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.alpaca import DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "distill.py"
pytestmark = [pytest.mark.source]

REQUIRED = ("similarity_before", "similarity_after", "diff_ci_low", "diff_ci_high", "decision", "train_tokens_per_s",
            "minutes", "device")  # fmt: skip


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_distill", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _needs_data() -> None:
    if not (DATA_DIR / "gpt4_1106_preview.jsonl.gz").exists():
        pytest.skip(f"AlpacaEval data not found at {DATA_DIR} (set DRIFTLOOP_ALPACAEVAL_DIR)")


def test_split_is_seeded_and_disjoint() -> None:
    _needs_data()
    bench = _bench()
    rows, digest = bench.load_teacher(DATA_DIR, "gpt4_1106_preview")
    assert len(rows) == 805 and len(digest) == 64
    train, held = bench.split(rows, 400, 128, seed=0)
    assert len(train) == 400 and len(held) == 128
    assert not {rows[i]["prompt"] for i in train} & {rows[i]["prompt"] for i in held}
    assert bench.split(rows, 400, 128, seed=0) == (train, held)
    assert bench.split(rows, 400, 128, seed=1) != (train, held)
    with pytest.raises(SystemExit, match="exceed"):
        bench.split(rows, 700, 200, seed=0)
    with pytest.raises(SystemExit, match="teacher data not found"):
        bench.load_teacher(DATA_DIR, "no-such-model")


@pytest.mark.slow
def test_stage_all_then_score_again(tmp_path: Path) -> None:
    _needs_data()
    from driftloop.retrain.toy import build_model

    base = build_model(tmp_path / "toy")
    work, result = tmp_path / "work", tmp_path / "result.json"
    env = {**os.environ, "DRIFTLOOP_ALPACAEVAL_DIR": str(DATA_DIR)}
    args = ["--out", str(work), "--result", str(result)]
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--stage", "all", "--base", str(base), "--train", "8", "--heldout", "4",
         "--epochs", "1", "--max-length", "128", "--max-new-tokens", "8", "--batch-tokens", "512", *args],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training LoRA" in proc.stderr  # progress goes to stderr, stdout ends with the JSON line
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == json.loads(result.read_text())
    for key in REQUIRED:
        assert out[key] is not None, key
    assert out["n_train"] == 8 and out["n_heldout"] == 4
    assert out["diff_ci_low"] <= out["diff"] <= out["diff_ci_high"]
    assert out["diff"] == pytest.approx(out["similarity_after"] - out["similarity_before"], abs=2e-4)
    # 4 held-out prompts are fewer than the gate's min_examples: never a promotion
    assert out["decision"] == "keep" and any("at least" in r for r in out["gate"]["reasons"])
    assert out["train_tokens_per_s"] > 0 and out["minutes"] > 0 and out["device"].startswith("cpu")

    answers = json.loads((work / "answers.json").read_text())
    train = json.loads((work / "train.json").read_text())
    assert len(answers) == 4 and not {a["index"] for a in answers} & set(train["train_indices"])
    assert all(a["teacher"] and isinstance(a["before"], str) and isinstance(a["after"], str) for a in answers)
    assert train["steps"] >= 1 and train["loss_curve"] and (work / "adapter" / "adapter_config.json").is_file()

    # the score stage alone on the generate stage's files gives the same numbers (what the GPU split relies on)
    again = subprocess.run([sys.executable, str(BENCH), "--stage", "score", "--out", str(work)],
                           capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    rescored = json.loads(again.stdout.strip().splitlines()[-1])
    assert {k: rescored[k] for k in REQUIRED} == {k: out[k] for k in REQUIRED}


def test_score_without_generate_names_the_missing_file(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--stage", "score", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0 and "answers.json not found" in proc.stderr
