"""Benchmark: LoRA SFT throughput of driftloop's trainer vs. a plain PEFT + ``transformers.Trainer`` run.

Both train the same LoRA (r=16, alpha=32, dropout 0.05, all attention and MLP projections) on the same
examples of the same randomly initialised model (no hub is reachable here): by default a 494M-parameter
model of Qwen2-0.5B's shape (Llama architecture, Qwen2-0.5B's dimensions). Examples are random token ids
with log-normal lengths (median 350 tokens, clipped to 32-1024), split into a prompt (masked out of the
loss) and a response;
a word-level tokenizer maps one word to one token, so both sides see identical ``input_ids``/``labels``.

* ``baseline``: ``Trainer`` with its defaults plus ``bf16=True`` and ``per_device_train_batch_size=8``,
  ``DataCollatorForSeq2Seq`` padding, the model loaded with its defaults (fp32 weights, autocast bf16).
* ``driftloop``: ``retrain.trainer.train_lora`` (length-grouped token-budget batches without padding
  masks, bf16 weights, fused AdamW, SDPA, LM head on response positions only).

Throughput is real (non-padding) tokens per second, prompt included, measured in the same process after
warm-up steps; driftloop trains on exactly the examples the baseline consumed. MFU uses the same model
FLOPs for both: ``4 * N * tokens`` (forward 2N, backward activation gradients 2N; frozen weights get no
weight gradients; N = parameters of all matmul layers, LM head included, LoRA neglected) plus causal
attention ``6 * n_layers * L^2 * d_attn`` per sequence of length L, divided by the GPU's dense bf16 peak.

Imports only torch, transformers, peft, numpy, the standard library and ``retrain.trainer``. Without
CUDA it prints ``skipped: no CUDA device`` and a JSON line of nulls; ``--allow-cpu --model-size tiny``
runs a CPU smoke test. The last line printed is one JSON object: baseline_tokens_per_s,
driftloop_tokens_per_s, ratio, mfu (plus context).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEYS = ("baseline_tokens_per_s", "driftloop_tokens_per_s", "ratio", "mfu")

# Dense bf16 peak (no sparsity), FLOP/s, by device-name substring.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "GH200": 989e12, "B200": 2250e12,
             "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}  # fmt: skip

SIZES: dict[str, dict[str, Any]] = {
    # Qwen2-0.5B's shape: 494M parameters (tied embeddings).
    "0.5b": {
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_theta": 1_000_000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
    "tiny": {
        "vocab_size": 2048,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
    },
}
# (median, min, max) sequence length, default examples, driftloop token budget per step
DATA = {"0.5b": ((350, 32, 1024), 1600, 32768), "tiny": ((48, 16, 128), 96, 1024)}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _null_result(reason: str) -> dict[str, Any]:
    return {**dict.fromkeys(KEYS), "skipped": reason}


# ---------------------------------------------------------------------------------------------- data


def build_tokenizer(out: Path, vocab_size: int) -> Any:
    """A word-level tokenizer: word ``t<i>`` is token ``i``; whitespace separates tokens."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.save_pretrained(str(out))
    # a class name that transformers 4 and 5 both resolve to the tokenizer.json-backed tokenizer
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return tok


def make_rows(n: int, vocab_size: int, lengths: tuple[int, int, int], seed: int) -> list[dict[str, str]]:
    """``n`` prompt/response rows of random words; total tokens (with "\\n"-free prompt and EOS) log-normal."""
    rng = np.random.default_rng(seed)
    med, lo, hi = lengths
    total = np.clip(np.round(np.exp(rng.normal(math.log(med), 0.6, n))), lo, hi).astype(int)
    rows = []
    for t in total:
        n_p = int(np.clip(round(t * rng.uniform(0.3, 0.7)), 1, t - 2))
        n_r = int(t) - n_p - 1  # + EOS
        words = rng.integers(3, vocab_size, int(t) - 1)
        rows.append({"prompt": " ".join(f"t{w}" for w in words[:n_p]),
                     "response": " ".join(f"t{w}" for w in words[n_p : n_p + n_r])})  # fmt: skip
    return rows


def build_model(out: Path, size: str, seed: int, device: str) -> dict[str, Any]:
    """Random-weight model of Qwen2's shape saved (fp32) to ``out``; returns its shape facts.

    The Llama architecture with Qwen2-0.5B's dimensions (Qwen2 differs only by q/k/v biases): with
    ``model_type: qwen2`` transformers 5's ``AutoTokenizer`` forces the Qwen2 BPE tokenizer class onto
    any ``tokenizer.json``, which would break the word-level tokenizer used here.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SIZES[size], pad_token_id=0, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(out))
    n_params = sum(p.numel() for p in model.parameters())
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    del model
    return {"n_params": n_params, "n_matmul": n_matmul, "n_layers": cfg.num_hidden_layers,
            "d_attn": cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)}  # fmt: skip


def flops_per_token(shape: dict[str, Any], lengths: list[int]) -> float:
    """Model FLOPs per real token for LoRA training (see the module docstring)."""
    mean_sq_over_mean = sum(x * x for x in lengths) / sum(lengths)
    return 4.0 * shape["n_matmul"] + 6.0 * shape["n_layers"] * shape["d_attn"] * mean_sq_over_mean


# ------------------------------------------------------------------------------------------ baseline


def run_baseline(model_dir: Path, tok: Any, rows: list[dict[str, str]], steps: int, warm: int, seed: int,
                 device: str, work: Path) -> dict[str, Any]:  # fmt: skip
    """Plain PEFT + Trainer, ``bf16=True``, batch 8; real tokens/s over the steps after ``warm``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from driftloop.retrain.trainer import encode_example

    data = []
    for r in rows:
        ids, labels = encode_example(tok, r["prompt"], r["response"], 1024)
        data.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)

    counter = torch.zeros((), dtype=torch.long, device=device)
    padded = [0]

    def count(_mod: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        am = kwargs.get("attention_mask")
        if am is not None:
            counter.add_(am.sum())
            padded[0] += am.numel()

    hook = model.get_base_model().base_model.register_forward_pre_hook(count, with_kwargs=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    marks: dict[str, tuple[float, int, int]] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step in (warm, steps):
                sync()
                marks["t0" if state.global_step == warm else "t1"] = (
                    time.perf_counter(),
                    int(counter.item()),
                    padded[0],
                )

    args = TrainingArguments(output_dir=str(work / "baseline"), per_device_train_batch_size=8, bf16=device == "cuda",
                             max_steps=steps, save_strategy="no", report_to=[], seed=seed, disable_tqdm=True,
                             logging_steps=max(10, steps // 5), use_cpu=device == "cpu")  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[Clock()],
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))  # fmt: skip
    t = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t
    hook.remove()
    (t0, k0, p0), (t1, k1, p1) = marks["t0"], marks["t1"]
    res = {"tokens_per_s": (k1 - k0) / (t1 - t0), "measured_tokens": k1 - k0, "measured_steps": steps - warm,
           "padding_frac": 1 - (k1 - k0) / max(1, p1 - p0), "wall_s": wall, "final_loss": float(out.training_loss)}  # fmt: skip
    del trainer, model
    return res


# ----------------------------------------------------------------------------------------- driftloop


def run_driftloop(model_dir: Path, rows: list[dict[str, str]], batch_tokens: int, seed: int, device: str,
                  work: Path) -> dict[str, Any]:  # fmt: skip
    """``retrain.trainer.train_lora`` over ``rows`` (one epoch); real tokens/s after the first report."""
    from driftloop.retrain.trainer import TrainProgress, train_lora
    from driftloop.settings.retrain import LoraSettings, TrainingSettings

    cfg = TrainingSettings(epochs=1.0, learning_rate=2e-4, batch_tokens=batch_tokens, max_length=1024, seed=seed)
    lora = LoraSettings(r=16, alpha=32, dropout=0.05, target_modules=list(LORA_TARGETS))
    seen: list[TrainProgress] = []
    # a rough step count to pick the report interval (one report = one host sync)
    approx_steps = max(1, sum(len(r["prompt"].split()) + len(r["response"].split()) + 1 for r in rows) // batch_tokens)
    log_every = 5 if approx_steps >= 20 else 1
    res = train_lora(str(model_dir), rows, str(work / "adapter"), cfg, lora, progress=seen.append, device=device,
                     log_every=log_every)  # fmt: skip
    a, b = seen[0], seen[-1]
    if b.step == a.step:
        a = TrainProgress(step=0, total_steps=b.total_steps, epoch=0.0, loss=0.0, tokens=0, elapsed_s=0.0)
    return {"tokens_per_s": (b.tokens - a.tokens) / (b.elapsed_s - a.elapsed_s), "measured_tokens": b.tokens - a.tokens,
            "measured_steps": b.step - a.step, "steps": res.steps, "whole_loop_tokens_per_s": res.tokens_per_s,
            "wall_s": res.duration_s, "final_loss": res.final_loss, "dtype": res.dtype}  # fmt: skip


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run both trainers, print the comparison and a JSON line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-size", choices=sorted(SIZES), default="0.5b")
    ap.add_argument("--examples", type=int, default=None, help="examples generated (default 1600; tiny 96)")
    ap.add_argument("--steps", type=int, default=None, help="baseline optimizer steps (default: one epoch of batch 8)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="baseline steps excluded from timing (default 10)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="driftloop token budget per step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-cpu", action="store_true", help="run on CPU when there is no CUDA device (smoke test)")
    ap.add_argument("--only", choices=("both", "baseline", "driftloop"), default="both")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak; default from the GPU name")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")
    a = ap.parse_args(argv)

    import peft
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not a.allow_cpu:
        print("skipped: no CUDA device (use --allow-cpu --model-size tiny for a CPU smoke test)")
        print(json.dumps(_null_result("no CUDA device")))
        return 0
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = a.peak_tflops * 1e12 if a.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    (lens, n_default, bt_default) = DATA[a.model_size]
    n_ex = a.examples or n_default
    steps = a.steps or max(2, n_ex // 8)
    warm = a.warmup_steps if a.warmup_steps is not None else min(10, steps // 4)
    if not 0 < warm < steps:
        ap.error("--warmup-steps must be between 1 and --steps - 1")
    batch_tokens = a.batch_tokens or bt_default
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    print(f"device: {gpu}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    with tempfile.TemporaryDirectory(prefix="driftloop-bench-ft-") as tmp:
        work = Path(tmp)
        mdir = work / "model"
        t = time.perf_counter()
        shape = build_model(mdir, a.model_size, a.seed, device)
        tok = build_tokenizer(mdir, SIZES[a.model_size]["vocab_size"])
        rows = make_rows(n_ex, SIZES[a.model_size]["vocab_size"], lens, a.seed)[: steps * 8]
        lengths = [len(r["prompt"].split()) + len(r["response"].split()) + 1 for r in rows]
        fpt = flops_per_token(shape, lengths)
        print(f"model: {a.model_size} (Llama architecture, Qwen2 layer shapes), {shape['n_params'] / 1e6:.0f}M parameters ({shape['n_matmul'] / 1e6:.0f}M in "
              f"matmuls), random weights; built in {time.perf_counter() - t:.1f} s")  # fmt: skip
        print(f"data: {len(rows)} examples, {sum(lengths)} real tokens, length median {int(np.median(lengths))} "
              f"mean {np.mean(lengths):.0f} max {max(lengths)}; LoRA r=16 alpha=32 on {', '.join(LORA_TARGETS)}")  # fmt: skip

        def mfu(tps: float | None) -> float | None:
            return None if (tps is None or not peak) else tps * fpt / peak

        base = drift = None
        if a.only in ("both", "baseline"):
            base = run_baseline(mdir, tok, rows, steps, warm, a.seed, device, work)
            print(f"baseline  (PEFT + Trainer, bf16={device == 'cuda'}, batch 8): {base['tokens_per_s']:,.0f} real "
                  f"tokens/s over steps {warm + 1}-{steps} ({base['measured_tokens']} tokens, "
                  f"{100 * base['padding_frac']:.0f}% padding), MFU {_pct(mfu(base['tokens_per_s']))}, "
                  f"loss {base['final_loss']:.3f}, {base['wall_s']:.1f} s")  # fmt: skip
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        if a.only in ("both", "driftloop"):
            drift = run_driftloop(mdir, rows, batch_tokens, a.seed, device, work)
            print(f"driftloop (retrain.trainer, {drift['dtype']}, {batch_tokens} tokens/step): "
                  f"{drift['tokens_per_s']:,.0f} real tokens/s over {drift['measured_steps']} of {drift['steps']} steps "
                  f"({drift['measured_tokens']} tokens; whole loop {drift['whole_loop_tokens_per_s']:,.0f}), "
                  f"MFU {_pct(mfu(drift['tokens_per_s']))}, loss {drift['final_loss']:.3f}, {drift['wall_s']:.1f} s")  # fmt: skip

    b_tps = base["tokens_per_s"] if base else None
    d_tps = drift["tokens_per_s"] if drift else None
    ratio = d_tps / b_tps if (b_tps and d_tps) else None
    formula = "MFU = tokens/s * (4*N_matmul + 6*n_layers*d_attn*E[L^2]/E[L]) / peak_bf16_dense"
    print(f"ratio driftloop/baseline: {ratio:.2f}x" if ratio else "ratio: n/a")
    print(f"{formula}; N_matmul={shape['n_matmul']}, {fpt / 1e9:.2f} GFLOP/token, peak "
          f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")  # fmt: skip
    result = {
        "baseline_tokens_per_s": _r(b_tps), "driftloop_tokens_per_s": _r(d_tps), "ratio": _r(ratio, 3),
        "mfu": _r(mfu(d_tps), 4), "baseline_mfu": _r(mfu(b_tps), 4), "device": gpu, **versions,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "model_size": a.model_size, "n_params": shape["n_params"],
        "examples": len(rows), "real_tokens": sum(lengths), "baseline_steps": steps, "warmup_steps": warm,
        "batch_tokens": batch_tokens, "baseline_padding_frac": _r(base["padding_frac"], 3) if base else None,
        "mfu_formula": formula, "peak_flops": peak,
    }  # fmt: skip
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


if __name__ == "__main__":
    sys.exit(main())
