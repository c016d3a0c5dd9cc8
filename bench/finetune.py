"""Benchmark: LoRA SFT throughput of driftloop's trainer vs. the strongest setup a practitioner would pick.

All setups train the same LoRA (r=16, alpha=32, dropout 0.05, all attention and MLP projections) on the
same examples of the same randomly initialised model (no hub is reachable here), Qwen2-shaped (Llama
architecture with Qwen2-0.5B's or Qwen2-1.5B's dimensions; ``--model-size``). Examples are random token
ids with log-normal lengths (median 350 tokens, clipped to 32-1024), split into a prompt (masked out of the
loss) and a response; a word-level tokenizer maps one word to one token, and every setup gets the same
``input_ids``/``labels`` (``retrain.trainer.encode_example``).

* ``driftloop``: ``retrain.trainer.train_lora`` (length-grouped token-budget steps of ``--batch-tokens``,
  micro-batches sized to free memory, bf16 weights, fused AdamW, SDPA, chunked LM head + cross-entropy on
  response positions only).
* ``trl`` (the strongest baseline): TRL ``SFTTrainer`` with ``padding_free=True`` (a batch's rows packed into
  one row), Liger kernels (RMSNorm, RoPE, SwiGLU; TRL's own chunked LM head on label positions only), bf16
  weights, flex attention (document-masked; the GPU image has no flash-attn package), no gradient
  checkpointing, each batch size of ``--trl-batches`` (the fastest one counts).
* ``plain``: PEFT + ``Trainer`` with its defaults plus ``bf16=True``, batch 8, ``DataCollatorForSeq2Seq``
  padding, fp32 weights under autocast (reference only).

Each setup runs in its own process (Liger patches transformers' modules globally), one after the other on
the same GPU. Throughput is real (non-padding) tokens per second, prompt included, over the steps after the
warm-up (compiles, autotuning, the memory probe), whose time is reported separately. Peak memory is that
process's ``torch.cuda.max_memory_reserved``.

MFU counts model FLOPs where a setup needs them: ``4 * N_body`` per token (forward 2N, backward activation
gradients 2N; frozen weights get no weight gradients; LoRA neglected), ``4 * N_head`` per scored (response)
token only (driftloop and TRL compute the LM head there only; the plain Trainer computes it on every
position, padding included, which is not credited), plus causal attention ``6 * n_layers * L^2 * d_attn``
per sequence of length L; over the GPU's dense bf16 peak.

trl, liger-kernel and datasets are benchmark-only (carried to the GPU as wheels by bench/finetune_gpu.sh),
never package dependencies. Without CUDA it prints ``skipped: no CUDA device`` and a JSON line of nulls;
``--allow-cpu --model-size tiny`` is a CPU smoke test (trl without Liger and flex attention there, skipped
when trl is not installed). The last line printed is one JSON object (``KEYS`` first).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEYS = ("ratio", "strongest_baseline", "driftloop_tokens_per_s", "baseline_tokens_per_s", "mfu",
        "peak_reserved_gib", "baseline_peak_reserved_gib", "model_size")  # fmt: skip
SETUPS = ("driftloop", "trl", "plain")
# driftloop's own variants (diagnosis; never the headline): its earlier padded path, packed rows without CUDA
# graphs, and packed rows with the decoder layers compiled.
VARIANTS: dict[str, dict[str, Any]] = {
    "driftloop-padded": {"packing": False}, "driftloop-nograph": {"cuda_graphs": False},
    "driftloop-nocompile": {"compile": False}, "driftloop-16k": {"micro_batch_tokens": 16384},
    "driftloop-24k": {"micro_batch_tokens": 24576}, "driftloop-32k": {"micro_batch_tokens": 32768},
}  # fmt: skip

# Dense bf16 peak (no sparsity), FLOP/s, by device-name substring.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "GH200": 989e12, "B200": 2250e12,
             "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}  # fmt: skip

_QWEN2 = {"vocab_size": 151936, "max_position_embeddings": 32768, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6,
          "tie_word_embeddings": True}  # fmt: skip
SIZES: dict[str, dict[str, Any]] = {
    # Qwen2-0.5B's shape: 494M parameters; Qwen2-1.5B's: 1.54B (both tied embeddings).
    "0.5b": {
        **_QWEN2,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
    },
    "1.5b": {
        **_QWEN2,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
    },
    # Qwen2-7B's shape: 7.6B parameters, untied head (built and trained in bf16: driftloop only)
    "7b": {
        **_QWEN2,
        "tie_word_embeddings": False,
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
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
DATA = {"0.5b": ((350, 32, 1024), 1600, 32768), "1.5b": ((350, 32, 1024), 1600, 32768), "7b": ((350, 32, 1024), 400, 32768),
        "tiny": ((48, 16, 128), 96, 1024)}  # fmt: skip
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_LENGTH = 1024


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

    The Llama architecture with Qwen2's dimensions (Qwen2 differs only by q/k/v biases): with
    ``model_type: qwen2`` transformers 5's ``AutoTokenizer`` forces the Qwen2 BPE tokenizer class onto
    any ``tokenizer.json``, which would break the word-level tokenizer used here.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SIZES[size], pad_token_id=0, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    if size == "7b":  # 15 GB on disk instead of 30
        model = model.bfloat16()
    model.save_pretrained(str(out))
    head = model.get_output_embeddings()
    shape = {"n_params": sum(p.numel() for p in model.parameters()), "n_head": head.weight.numel(),
             "n_body": sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head),
             "n_layers": cfg.num_hidden_layers,
             "d_attn": cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)}  # fmt: skip
    del model
    return shape


def flops_per_token(shape: dict[str, Any], lengths: list[int], scored: list[int]) -> float:
    """Model FLOPs per real token for LoRA training (see the module docstring)."""
    total = sum(4.0 * shape["n_body"] * n + 4.0 * shape["n_head"] * r + 6.0 * shape["n_layers"] * shape["d_attn"] * n * n
                for n, r in zip(lengths, scored, strict=True))  # fmt: skip
    return total / sum(lengths)


# ------------------------------------------------------------------------------------------- workers


def _peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None


def _warm_steps(steps: int) -> int:
    return min(10, max(2, steps // 5))


def _encoded(model_dir: Path, rows: list[dict[str, str]]) -> tuple[Any, list[tuple[list[int], list[int]]]]:
    from transformers import AutoTokenizer

    from driftloop.retrain.trainer import encode_example

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return tok, [encode_example(tok, r["prompt"], r["response"], MAX_LENGTH) for r in rows]


def _run_hf(kind: str, meta: dict[str, Any], rows: list[dict[str, str]], batch: int, work: Path) -> dict[str, Any]:
    """``trl`` or ``plain`` (see the module docstring): real tokens/s over the steps after the warm-up."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainerCallback

    t_start = time.perf_counter()
    cuda, seed, mdir = meta["device"] == "cuda", meta["seed"], Path(meta["model_dir"])
    tok, enc = _encoded(mdir, rows)
    steps = meta["plain_steps"] if kind == "plain" else math.ceil(len(enc) / batch)
    steps = min(steps, math.ceil(len(enc) / batch))
    warm = _warm_steps(steps)
    lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    common = {"output_dir": str(work / f"out-{kind}"), "per_device_train_batch_size": batch, "bf16": cuda,
              "max_steps": steps, "learning_rate": 2e-4, "save_strategy": "no", "report_to": [], "seed": seed,
              "disable_tqdm": True, "logging_steps": max(10, steps // 5), "use_cpu": not cuda}  # fmt: skip
    counter = torch.zeros((), dtype=torch.long, device=meta["device"])
    padded = [0]

    def count(_mod: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        am = kwargs.get("attention_mask")
        if am is not None and am.dim() == 2:
            counter.add_(am.sum())
            padded[0] += am.numel()
        else:  # padding-free: one packed row, every token real
            n = kwargs["input_ids"].numel()
            counter.add_(n)
            padded[0] += n

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    marks: dict[int, tuple[float, int, int]] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step in (warm, steps):
                sync()
                marks[state.global_step] = (time.perf_counter(), int(counter.item()), padded[0])

    if kind == "trl":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        model = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=torch.bfloat16 if cuda else torch.float32,
                                                     attn_implementation="flex_attention" if cuda else "sdpa")  # fmt: skip
        ds = Dataset.from_dict({"input_ids": [x for x, _ in enc], "labels": [y for _, y in enc]})
        args = SFTConfig(**common, padding_free=True, max_length=None, use_liger_kernel=cuda,
                         gradient_checkpointing=False, dataset_num_proc=None)  # fmt: skip
        trainer: Any = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lcfg,
                                  callbacks=[Clock()])  # fmt: skip
    else:
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        pmodel = get_peft_model(AutoModelForCausalLM.from_pretrained(str(mdir)), lcfg)
        data = [{"input_ids": x, "attention_mask": [1] * len(x), "labels": y} for x, y in enc]
        trainer = Trainer(model=pmodel, args=TrainingArguments(**common), train_dataset=data, callbacks=[Clock()],
                          data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))  # fmt: skip
    backbone = trainer.model.get_base_model().base_model
    hook = backbone.register_forward_pre_hook(count, with_kwargs=True)
    t_train = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t_train
    hook.remove()
    (t0, k0, p0), (t1, k1, p1) = marks[warm], marks[steps]
    return {"tokens_per_s": (k1 - k0) / (t1 - t0), "measured_tokens": k1 - k0, "measured_steps": steps - warm,
            "steps": steps, "batch": batch, "padding_frac": 1 - (k1 - k0) / max(1, p1 - p0),
            "setup_s": t_train - t_start, "warmup_s": t0 - t_train, "train_wall_s": wall,
            "final_loss": float(out.training_loss), "peak_reserved_gib": _peak_gib(),
            "attn": str(getattr(trainer.model.config, "_attn_implementation", "")),
            "gradient_checkpointing": bool(trainer.args.gradient_checkpointing)}  # fmt: skip


def _run_driftloop(
    meta: dict[str, Any], rows: list[dict[str, str]], work: Path, variant: str = "driftloop"
) -> dict[str, Any]:
    """``retrain.trainer.train_lora`` over ``rows`` (one epoch); real tokens/s after the first report."""
    from driftloop.retrain.trainer import TrainProgress, train_lora
    from driftloop.settings.retrain import LoraSettings, TrainingSettings

    bt = meta["batch_tokens"]
    cfg = TrainingSettings(
        epochs=1.0,
        learning_rate=2e-4,
        batch_tokens=bt,
        max_length=MAX_LENGTH,
        seed=meta["seed"],
        **{"micro_batch_tokens": meta["micro_batch_tokens"], **VARIANTS.get(variant, {})},
    )
    lora = LoraSettings(r=16, alpha=32, dropout=0.05, target_modules=list(LORA_TARGETS))
    seen: list[TrainProgress] = []
    approx_steps = max(1, sum(len(r["prompt"].split()) + len(r["response"].split()) + 1 for r in rows) // bt)
    log_every = 5 if approx_steps >= 20 else 1
    res = train_lora(meta["model_dir"], rows, str(work / "adapter"), cfg, lora, progress=seen.append,
                     device=meta["device"], log_every=log_every)  # fmt: skip
    a, b = seen[0], seen[-1]
    if b.step == a.step:
        a = TrainProgress(step=0, total_steps=b.total_steps, epoch=0.0, loss=0.0, tokens=0, elapsed_s=0.0)
    return {"tokens_per_s": (b.tokens - a.tokens) / (b.elapsed_s - a.elapsed_s), "measured_tokens": b.tokens - a.tokens,
            "measured_steps": b.step - a.step, "steps": res.steps, "batch_tokens": bt,
            "micro_batch_tokens": res.micro_batch_tokens, "whole_loop_tokens_per_s": res.tokens_per_s,
            "setup_s": res.setup_s, "warmup_s": a.elapsed_s, "train_wall_s": res.duration_s - res.setup_s,
            "final_loss": res.final_loss, "dtype": res.dtype, "peak_reserved_gib": _peak_gib()}  # fmt: skip


def worker(name: str, work: Path, batch: int) -> int:
    """One setup in this process; writes ``result-<name>[-<batch>].json`` into ``work``."""
    meta = json.loads((work / "meta.json").read_text(encoding="utf-8"))
    rows = json.loads((work / "rows.json").read_text(encoding="utf-8"))
    if name.startswith("driftloop"):
        res, tag = _run_driftloop(meta, rows, work, name), name
    else:
        res, tag = _run_hf(name, meta, rows, batch, work), f"{name}-{batch}"
    (work / f"result-{tag}.json").write_text(json.dumps(res), encoding="utf-8")
    return 0


# ---------------------------------------------------------------------------------------------- main


def _spawn(name: str, work: Path, batch: int, log_dir: Path | None) -> tuple[dict[str, Any] | None, str]:
    """Run one setup in a child process; ``(result or None, the error's last lines)``."""
    tag = name if name.startswith("driftloop") else f"{name}-{batch}"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--work",
        str(work),
        "--trl-batch",
        str(batch),
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    log = proc.stdout + proc.stderr
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{tag}.log").write_text(log, encoding="utf-8")
    path = work / f"result-{tag}.json"
    if proc.returncode == 0 and path.exists():
        res: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        res["process_s"] = time.perf_counter() - t
        return res, ""
    lines = [ln for ln in log.splitlines() if ln.strip()]
    oom = next((ln for ln in reversed(lines) if "out of memory" in ln.lower()), None)
    return None, oom or "\n".join(lines[-15:])


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the setups, print the comparison and a JSON line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model-size", choices=sorted(SIZES), default="0.5b")
    ap.add_argument("--examples", type=int, default=None, help="examples generated (default 1600; tiny 96)")
    ap.add_argument(
        "--setups", default=",".join(SETUPS), help="comma-separated, of: " + ", ".join((*SETUPS, *VARIANTS))
    )
    ap.add_argument("--trl-batches", default="64", help="TRL per-device batch sizes tried (the fastest counts)")
    ap.add_argument("--plain-steps", type=int, default=None, help="plain Trainer steps (default: one epoch of batch 8)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="driftloop token budget per optimizer step")
    ap.add_argument("--micro-batch-tokens", type=int, default=None,
                    help="driftloop tokens per micro-batch (default: fitted to free GPU memory)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-cpu", action="store_true", help="run on CPU when there is no CUDA device (smoke test)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak; default from the GPU name")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")
    ap.add_argument("--log-dir", type=Path, default=None, help="write each setup's output there")
    ap.add_argument("--worker", choices=(*SETUPS, *VARIANTS), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--trl-batch", type=int, default=8, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.worker, a.work, a.trl_batch)

    import peft
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not a.allow_cpu:
        print("skipped: no CUDA device (use --allow-cpu --model-size tiny for a CPU smoke test)")
        print(json.dumps(_null_result("no CUDA device")))
        return 0
    setups = [s for s in a.setups.split(",") if s]
    if not set(setups) <= {*SETUPS, *VARIANTS}:
        ap.error(f"--setups: choose from {', '.join((*SETUPS, *VARIANTS))}")
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = a.peak_tflops * 1e12 if a.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    (lens, n_default, bt_default) = DATA[a.model_size]
    n_ex = a.examples or n_default
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                "trl": _version("trl"), "liger_kernel": _version("liger-kernel")}  # fmt: skip
    print(f"device: {gpu}; " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)

    with tempfile.TemporaryDirectory(prefix="driftloop-bench-ft-") as tmp:
        work = Path(tmp)
        mdir = work / "model"
        t = time.perf_counter()
        shape = build_model(mdir, a.model_size, a.seed, device)
        tok = build_tokenizer(mdir, SIZES[a.model_size]["vocab_size"])
        rows = make_rows(n_ex, SIZES[a.model_size]["vocab_size"], lens, a.seed)
        from driftloop.retrain.trainer import IGNORE_INDEX, encode_example

        enc = [encode_example(tok, r["prompt"], r["response"], MAX_LENGTH) for r in rows]
        lengths = [len(x) for x, _ in enc]
        scored = [sum(1 for v in y[1:] if v != IGNORE_INDEX) for _, y in enc]
        fpt = flops_per_token(shape, lengths, scored)
        print(f"model: {a.model_size} (Llama architecture, Qwen2 shapes), {shape['n_params'] / 1e6:.0f}M parameters, random "
              f"weights; built in {time.perf_counter() - t:.1f} s")  # fmt: skip
        print(f"data: {len(rows)} examples, {sum(lengths)} real tokens ({sum(scored)} scored), length median "
              f"{int(np.median(lengths))} mean {np.mean(lengths):.0f} max {max(lengths)}; LoRA r=16 alpha=32 on "
              f"{', '.join(LORA_TARGETS)}", flush=True)  # fmt: skip
        meta = {"device": device, "seed": a.seed, "model_dir": str(mdir), "batch_tokens": a.batch_tokens or bt_default,
                "micro_batch_tokens": a.micro_batch_tokens, "plain_steps": a.plain_steps or max(2, len(rows) // 8)}  # fmt: skip
        (work / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        (work / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
        if device == "cuda":
            torch.cuda.empty_cache()

        results: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        for name in setups:
            batches = [int(b) for b in a.trl_batches.split(",")] if name == "trl" else [8]
            for batch in batches:
                label = name if name.startswith("driftloop") else f"{name}-{batch}"
                if name == "trl" and _version("trl") is None:
                    errors[label] = "trl is not installed"
                    print(f"{label}: skipped (trl is not installed)", flush=True)
                    continue
                res, err = _spawn(name, work, batch, a.log_dir)
                if res is None:
                    errors[label] = err
                    print(f"{label}: FAILED: {err}", flush=True)
                    continue
                res["mfu"] = res["tokens_per_s"] * fpt / peak if peak else None
                results[label] = res
                print(f"{label}: {res['tokens_per_s']:,.0f} real tokens/s over {res['measured_steps']} steps, MFU "
                      f"{_pct(res['mfu'])}, peak reserved {_gib(res['peak_reserved_gib'])}, setup {res['setup_s']:.1f} s, "
                      f"warm-up {res['warmup_s']:.1f} s, loss {res['final_loss']:.3f}", flush=True)  # fmt: skip

    trl = [k for k in results if k.startswith("trl-")]
    best = max(
        trl or [k for k in results if k.startswith("plain")] or [""],
        key=lambda k: results[k]["tokens_per_s"] if k else 0,
    )
    drift = results.get("driftloop")
    base = results.get(best)
    plain = results.get("plain-8")
    ratio = drift["tokens_per_s"] / base["tokens_per_s"] if (drift and base) else None
    name = (f"TRL {versions['trl']} SFTTrainer padding-free + Liger {versions['liger_kernel']} + {base['attn']}, bf16 "
            f"weights, batch {base['batch']}" if best.startswith("trl") and base else
            "PEFT + Trainer, bf16 autocast, batch 8" if base else None)  # fmt: skip
    formula = ("MFU = tokens/s * (4*N_body + 4*N_head*scored/real + 6*n_layers*d_attn*E[L^2]/E[L]) / peak_bf16_dense "
               "(LM head credited on scored tokens only)")  # fmt: skip

    def g(r: dict[str, Any] | None, k: str, nd: int = 1) -> Any:
        return None if r is None or r.get(k) is None else round(r[k], nd)

    print(f"ratio driftloop / strongest ({name}): {ratio:.2f}x" if ratio else "ratio: n/a")
    print(f"{formula}; N_body={shape['n_body']}, N_head={shape['n_head']}, {fpt / 1e9:.2f} GFLOP/real token, peak "
          f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")  # fmt: skip
    result = {
        "ratio": _r(ratio, 3), "strongest_baseline": name,
        "driftloop_tokens_per_s": g(drift, "tokens_per_s"), "baseline_tokens_per_s": g(base, "tokens_per_s"),
        "mfu": g(drift, "mfu", 4), "peak_reserved_gib": g(drift, "peak_reserved_gib"),
        "baseline_peak_reserved_gib": g(base, "peak_reserved_gib"), "model_size": a.model_size,
        "baseline_mfu": g(base, "mfu", 4), "plain_tokens_per_s": g(plain, "tokens_per_s"), "plain_mfu": g(plain, "mfu", 4),
        "plain_peak_reserved_gib": g(plain, "peak_reserved_gib"), "device": gpu, **versions,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "n_params": shape["n_params"], "examples": len(rows),
        "real_tokens": sum(lengths), "scored_tokens": sum(scored), "mfu_formula": formula, "peak_flops": peak,
        "setups": {k: {kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in r.items()} for k, r in results.items()},
        "errors": errors,
    }  # fmt: skip
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _gib(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} GiB"


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


if __name__ == "__main__":
    sys.exit(main())
