"""Scoring of a model (base + optional LoRA adapter) on evaluation suites, for the promotion gate.

Runs in the training subprocess (it needs torch, transformers and peft). Per example it computes the
summed NLL of the reference tokens (+ eos) given the prompt, with the same formatting as training, and,
when ``generate``, a greedy answer with its ROUGE-L F1, sentence BLEU and exact match, and what the answer
cost: the wall time of the generate call that produced it and the tokens it generated (the gate's cost
report: the student's tokens/s and latency). The results are ``retrain.gate.ExampleScore`` records, which
the daemon gates from JSON (and to which it adds ``similarity`` and ``judge_win``, see ``retrain.distill``).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from driftloop.retrain.gate import ExampleScore
from driftloop.retrain.trainer import (
    encode_example,  # training formatting; its unlabelled prefix is the generation prompt
)

Progress = Callable[[int, int], None]


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_eval(base_model_dir: str, adapter_dir: str | None, device: str | None = None,
                  dtype: torch.dtype | None = None) -> tuple[Any, Any]:  # fmt: skip
    """The base model (with the LoRA adapter in ``adapter_dir`` over it, if given) in eval mode, and its tokenizer.

    ``dtype`` defaults to bfloat16 on a GPU that supports it, float32 otherwise.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or _default_device()
    if dtype is None:
        cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if cuda_bf16 else torch.float32
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tok


def _max_positions(model: Any) -> int | None:
    cfg = model.config
    for k in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, k, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _reference(row: Mapping[str, str]) -> str:
    ref = row.get("reference", row.get("response"))
    if ref is None:
        raise ValueError("an evaluation row needs 'prompt' and 'reference'")
    return str(ref)


def _normalise(s: str) -> str:
    return " ".join(s.split()).casefold()


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


@torch.inference_mode()
def _nll(model: Any, encoded: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int,
         tick: Callable[[int], None]) -> list[tuple[float, int]]:  # fmt: skip
    """Summed NLL and count of the labelled tokens per example; right-padded batches sorted by length."""
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    for batch in _batches(order, batch_size):
        width = max(len(encoded[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            x, y = encoded[i]
            ids[row, : len(x)] = torch.tensor(x)
            labels[row, : len(y)] = torch.tensor(y)
            mask[row, : len(x)] = 1
        if width < 2:
            tick(len(batch))
            continue
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        target = labels[:, 1:].to(device)
        for row, i in enumerate(batch):  # one row at a time: a float32 copy of a big vocabulary's logits is large
            lp = torch.nn.functional.cross_entropy(logits[row, :-1].float(), target[row], ignore_index=-100,
                                                   reduction="sum")  # fmt: skip
            out[i] = (float(lp), int((target[row] != -100).sum()))
        tick(len(batch))
    return out


@dataclass(frozen=True)
class Generated:
    """One greedy answer and its cost: the generate call's wall time, its batch size, the tokens generated."""

    text: str
    tokens: int
    latency_s: float
    batch: int


def _generate(model: Any, prompts: list[list[int]], pad_id: int, eos_id: int | None, max_new_tokens: int,
              batch_size: int, tokenizer: Any, tick: Callable[[int], None]) -> list[str]:  # fmt: skip
    """Greedy answers, left-padded batches sorted by prompt length, cut at the first eos."""
    return [g.text for g in _generate_timed(model, prompts, pad_id, eos_id, max_new_tokens, batch_size, tokenizer,
                                            tick)]  # fmt: skip


@torch.inference_mode()
def _generate_timed(model: Any, prompts: list[list[int]], pad_id: int, eos_id: int | None, max_new_tokens: int,
                    batch_size: int, tokenizer: Any, tick: Callable[[int], None]) -> list[Generated]:  # fmt: skip
    """Greedy answers, left-padded batches sorted by prompt length, cut at the first eos, each with its cost."""
    device = next(model.parameters()).device
    out: list[Generated] = [Generated("", 0, 0.0, 1)] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    stop = {t for t in (eos_id, pad_id) if t is not None}
    for batch in _batches(order, batch_size):
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            p = prompts[i]
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        t0 = time.perf_counter()
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=eos_id)  # fmt: skip
        new_ids = gen[:, width:].tolist()  # on the host: the device finished the batch
        took = time.perf_counter() - t0
        for row, i in enumerate(batch):
            new = new_ids[row]
            cut = next((k for k, t in enumerate(new) if t in stop), len(new))
            text = tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
            out[i] = Generated(text, cut, took, len(batch))
        tick(len(batch))
    return out


def score_examples(model: Any, tokenizer: Any, rows: Sequence[Mapping[str, str]], *, max_length: int = 512,
                   max_new_tokens: int = 64, batch_size: int = 16, generate: bool = True,
                   progress: Progress | None = None) -> list[ExampleScore]:  # fmt: skip
    """Score ``model`` on ``rows`` (``prompt`` + ``reference``): NLL of the reference and, if ``generate``,
    ROUGE-L / BLEU / exact match of the greedy answer. ``progress(done, total)`` after each batch."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    max_pos = _max_positions(model)
    if max_pos is not None:
        max_length = min(max_length, max_pos)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    refs = [_reference(r) for r in rows]
    encoded = [encode_example(tokenizer, str(r["prompt"]), ref, max_length) for r, ref in zip(rows, refs, strict=True)]
    total = len(rows) * (2 if generate else 1)
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        if progress is not None:
            progress(done[0], total)

    nll = _nll(model, [(list(x), list(y)) for x, y in encoded], pad_id, batch_size, tick)
    if not generate:
        return [ExampleScore(nll=v, n_tokens=t) for v, t in nll]

    import sacrebleu
    from rouge_score import rouge_scorer

    keep = max(1, max_length - max_new_tokens)
    prompts: list[list[int]] = []
    for x, y in encoded:
        k = next((j for j, lab in enumerate(y) if lab != -100), len(y))  # the prompt: the unlabelled prefix
        prompts.append(list(x[:k])[-keep:] or [pad_id])
    outputs = _generate_timed(model, prompts, pad_id, tokenizer.eos_token_id, max_new_tokens, batch_size, tokenizer, tick)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = []
    for (v, t), ref, g in zip(nll, refs, outputs, strict=True):
        hyp = g.text
        scores.append(ExampleScore(nll=v, n_tokens=t, rouge_l=float(scorer.score(ref, hyp)["rougeL"].fmeasure),
                                   bleu=float(sacrebleu.sentence_bleu(hyp, [ref]).score),
                                   exact_match=float(_normalise(hyp) == _normalise(ref)), output=hyp,
                                   gen_latency_s=g.latency_s, gen_tokens=g.tokens, gen_batch=g.batch))  # fmt: skip
    return scores


def evaluate_pair(base_model_dir: str, champion_adapter: str | None, candidate_adapter: str | None,
                  suites: Mapping[str, Sequence[Mapping[str, str]]], *, device: str | None = None,
                  progress: Progress | None = None, **kw: Any) -> dict[str, tuple[list[ExampleScore], list[ExampleScore]]]:  # fmt: skip
    """Score champion and candidate (each loaded once) on every suite: ``{suite: (champion, candidate)}``.

    ``None`` as an adapter means the bare base model. ``kw`` goes to ``score_examples``; ``progress`` sees
    the whole job (both models, all suites).
    """
    per_model = sum(len(v) for v in suites.values()) * (2 if kw.get("generate", True) else 1)
    results: dict[str, list[list[ExampleScore]]] = {name: [] for name in suites}
    for k, adapter in enumerate((champion_adapter, candidate_adapter)):
        model, tok = load_for_eval(base_model_dir, adapter, device)
        offset = k * per_model
        for name, rows in suites.items():

            def prog(done: int, _total: int, base: int = offset) -> None:
                if progress is not None:
                    progress(base + done, 2 * per_model)

            results[name].append(score_examples(model, tok, rows, progress=prog, **kw))
            offset += len(rows) * (2 if kw.get("generate", True) else 1)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {name: (v[0], v[1]) for name, v in results.items()}


def load_golden_set(path: str | Path) -> list[dict[str, str]]:
    """A pinned evaluation suite: JSONL of ``{"prompt", "reference"}`` (or ``"response"``); blank lines skipped."""
    p = Path(path)
    rows: list[dict[str, str]] = []
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"golden set {p}: cannot read it ({e})") from None
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"golden set {p}, line {no}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"golden set {p}, line {no}: expected a JSON object, got {type(obj).__name__}")
        prompt = obj.get("prompt")
        ref = obj.get("reference", obj.get("response"))
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"golden set {p}, line {no}: needs a non-empty string 'prompt'")
        if not isinstance(ref, str):
            raise ValueError(f"golden set {p}, line {no}: needs a string 'reference' (or 'response')")
        rows.append({"prompt": prompt, "reference": ref})
    if not rows:
        raise ValueError(f"golden set {p}: no examples")
    return rows
