"""LoRA supervised fine-tuning: driftloop's own training loop (no ``transformers.Trainer``).

Takes the validated settings models that ``driftloop check-config`` checks (``TrainingSettings`` and
``LoraSettings`` of ``retrain.policies[]``): one definition of every limit. Besides torch, transformers and
peft it needs only driftloop.settings (pydantic), so it also runs on a GPU machine with just those installed.

Why it is faster than a plain PEFT + ``Trainer`` run: on CUDA, for Llama-like models, each step's examples are
packed into fixed-length rows with per-document attention, the forward/backward is captured once as a CUDA graph
and the decoder layers are compiled (``retrain/packed.py``: 1.5x the strongest TRL + Liger setup on an H200).
Otherwise (CPU, other architectures, ``training.packing: false``) the padded path below runs:

* **Length-grouped, token-budget batching.** Examples are shuffled, cut into large chunks, sorted by
  length inside each chunk and cut into batches of at most ``batch_tokens`` padded tokens (or
  ``batch_size`` sequences); batch order is shuffled. Padding is a few percent instead of ~half.
* **Exact attention without a mask.** Batches are right-padded and run with a plain causal mask and no
  padding mask: a real token only ever attends to earlier positions of its own row, which are all real,
  so the result is exact, and SDPA can use its fused causal (flash) kernel. Padded positions compute
  garbage that no loss reads. (Packing several documents into one row is not done: with SDPA it needs a
  dense block-diagonal mask, which disables the flash kernel and costs O(row²) attention.)
* **bf16 weights on CUDA** with fp32 LoRA parameters (fp32 master weights and optimizer state), the
  LoRA matmuls under bf16 autocast; fused AdamW; SDPA attention.
* **The LM head only where the loss is.** For the usual decoder-only architectures the vocabulary
  projection runs on response positions only (prompt logits are never needed).
* **No per-step host sync:** losses accumulate on the device and are read every ``log_every`` steps.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from driftloop.retrain import packed
from driftloop.settings.retrain import LoraSettings, TrainingSettings

CONFIG_FILE = "driftloop_train_config.json"
IGNORE_INDEX = -100

_GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")
_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_LLAMA_LIKE = frozenset({"llama", "qwen2", "qwen3", "mistral"})
# Architectures whose causal-LM forward is exactly ``lm_head(backbone(...).last_hidden_state)`` (no logit
# scaling or soft-capping), so the head may run on the response positions only.
_PLAIN_HEAD = frozenset({"gpt2", "llama", "qwen2", "qwen3", "mistral", "phi3"})


# --------------------------------------------------------------------------------------------- config


def save_train_config(directory: str | os.PathLike[str], training: TrainingSettings, lora: LoraSettings) -> Path:
    """Write ``driftloop_train_config.json`` (``{"training": ..., "lora": ...}``) into ``directory``."""
    path = Path(directory) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"training": training.model_dump(), "lora": lora.model_dump()}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def load_train_config(directory: str | os.PathLike[str]) -> tuple[TrainingSettings, LoraSettings]:
    """The settings :func:`save_train_config` wrote into ``directory``, validated again."""
    data = json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))
    return TrainingSettings.model_validate(data["training"]), LoraSettings.model_validate(data["lora"])


@dataclass(frozen=True)
class TrainProgress:
    """Reported every few optimizer steps; ``loss`` is the mean step loss since the previous report."""

    step: int
    total_steps: int
    epoch: float
    loss: float
    tokens: int
    elapsed_s: float


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_lora`. ``train_tokens`` counts real (non-pad) tokens, prompt included."""

    adapter_dir: str
    steps: int
    train_tokens: int
    tokens_per_s: float
    final_loss: float
    duration_s: float
    device: str
    dtype: str
    micro_batch_tokens: int = 0  # padded tokens per micro-batch (0: steps not cut)
    setup_s: float = 0.0  # loading, LoRA wrapping and the memory probe, before the first step


class TrainingCancelled(Exception):
    """``should_stop()`` returned True; nothing was written to the output directory."""


# ------------------------------------------------------------------------------------------ modelling


def _model_type(model: Any) -> str:
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "model_type", "") or "")


def default_target_modules(model: Any) -> list[str]:
    """LoRA target module names for ``model``'s architecture.

    GPT-2: ``c_attn, c_proj, c_fc`` (``Conv1D`` layers: LoRA needs ``fan_in_fan_out=True``).
    Llama/Qwen2/Qwen3/Mistral: all attention and MLP projections. Otherwise: the names of all leaf
    ``nn.Linear`` modules except the output head.
    """
    mt = _model_type(model)
    if mt == "gpt2":
        return list(_GPT2_TARGETS)
    if mt in _LLAMA_LIKE:
        return list(_LLAMA_TARGETS)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: list[str] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod is not head and not list(mod.children()):
            leaf = name.rsplit(".", 1)[-1]
            if leaf != "lm_head" and leaf not in names:
                names.append(leaf)
    if not names:
        raise ValueError(f"no nn.Linear layers found for LoRA in model type {mt!r}; set lora.target_modules")
    return names


def _needs_fan_in_fan_out(model: nn.Module, targets: Sequence[str]) -> bool:
    """True when the targeted layers are GPT-2 style ``Conv1D`` (weight stored as (in, out))."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return _model_type(model) == "gpt2"
    wanted = set(targets)
    return any(isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in wanted for n, m in model.named_modules())


# ------------------------------------------------------------------------------------------- encoding


def format_prompt(tokenizer: Any, prompt: str) -> str:
    """The prompt text the model is trained on (and must be generated from).

    With a chat template: the template applied to one user message plus the generation prompt.
    Without: ``prompt + "\\n"``.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)  # fmt: skip
        return str(text)
    return f"{prompt}\n"


def encode_example(tokenizer: Any, prompt: str, response: str, max_length: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one example; labels are ``-100`` on the prompt tokens.

    The response is followed by the EOS token. Too long an example loses prompt tokens from the left
    first; the prompt keeps at most half of ``max_length`` when the response alone would not fit, and the
    response is cut from the right to the rest, so some response tokens always remain.
    """
    if max_length < 2:
        raise ValueError("max_length: must be >= 2")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; set one before training")
    if getattr(tokenizer, "chat_template", None):
        p_ids = list(tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"])
    else:
        p_ids = list(tokenizer(format_prompt(tokenizer, prompt))["input_ids"])
    r_ids = [*tokenizer(response, add_special_tokens=False)["input_ids"], int(eos)]
    if len(p_ids) + len(r_ids) > max_length:
        p_keep = min(len(p_ids), max(max_length - len(r_ids), max_length // 2))
        r_keep = max_length - p_keep
        p_ids = p_ids[len(p_ids) - p_keep :] if p_keep else []
        r_ids = r_ids[:r_keep]
    return p_ids + r_ids, [IGNORE_INDEX] * len(p_ids) + r_ids


# ------------------------------------------------------------------------------------------- batching


@dataclass
class _Batch:
    rows: list[int]  # example indices
    width: int  # padded length
    tokens: int  # real tokens


def _plan_epoch(lengths: Sequence[int], cfg: TrainingSettings, rng: random.Random) -> list[_Batch]:
    """One epoch of length-grouped batches, in random order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if cfg.batch_tokens > 0:
        avg = max(1.0, sum(lengths) / max(1, len(lengths)))
        chunk = max(1, int(64 * cfg.batch_tokens / avg))
    else:
        chunk = 64 * cfg.batch_size
    batches: list[_Batch] = []
    for c0 in range(0, len(order), chunk):
        part = sorted(order[c0 : c0 + chunk], key=lambda i: lengths[i])
        cur: list[int] = []
        width = 0
        for i in part:
            w = max(width, lengths[i])
            full = (w * (len(cur) + 1) > cfg.batch_tokens) if cfg.batch_tokens > 0 else len(cur) >= cfg.batch_size
            if cur and full:
                batches.append(_Batch(cur, width, sum(lengths[j] for j in cur)))
                cur, w = [], lengths[i]
            cur.append(i)
            width = w
        if cur:
            batches.append(_Batch(cur, width, sum(lengths[j] for j in cur)))
    rng.shuffle(batches)
    return batches


def _plan(lengths: Sequence[int], cfg: TrainingSettings) -> tuple[list[_Batch], int]:
    """All optimizer steps of the run and the number of steps in one epoch."""
    rng = random.Random(cfg.seed)
    return packed.repeat_epochs(lambda: _plan_epoch(lengths, cfg, rng), cfg.epochs, cfg.max_steps)


def _collate(batch: _Batch, encoded: Sequence[tuple[list[int], list[int]]], pad_id: int,
             pin: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(input_ids (B, T), flat positions whose next token is scored, their target ids)``, right-padded."""
    ids = torch.full((len(batch.rows), batch.width), pad_id, dtype=torch.long)
    pos: list[int] = []
    tgt: list[int] = []
    for b, i in enumerate(batch.rows):
        x, y = encoded[i]
        ids[b, : len(x)] = torch.tensor(x, dtype=torch.long)
        base = b * batch.width
        for t in range(1, len(y)):
            if y[t] != IGNORE_INDEX:
                pos.append(base + t - 1)
                tgt.append(y[t])
    p = torch.tensor(pos, dtype=torch.long)
    g = torch.tensor(tgt, dtype=torch.long)
    if pin:
        ids, p, g = ids.pin_memory(), p.pin_memory(), g.pin_memory()
    return ids, p, g


# ------------------------------------------------------------------------------------------- training


def _load_base(base_model_dir: str, device: torch.device, dtype: torch.dtype) -> Any:
    import transformers
    from transformers import AutoModelForCausalLM

    major = int(transformers.__version__.split(".")[0])
    kw: dict[str, Any] = {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
    try:
        model = AutoModelForCausalLM.from_pretrained(base_model_dir, attn_implementation="sdpa", **kw)
    except (ValueError, ImportError):  # architecture without SDPA support
        model = AutoModelForCausalLM.from_pretrained(base_model_dir, **kw)
    return model.to(device)  # type: ignore[arg-type]


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:  # ``step`` = optimizer steps taken so far
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))

    return f


def _pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _HeadCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy of ``h @ weight.T`` against ``tgt``, in row chunks, for a frozen head.

    Why: the full ``(scored tokens, vocab)`` logits in fp32 (plus their bf16 copy and gradient) were the
    trainer's largest buffers (the 1.5B out-of-memory). Here at most ``chunk`` rows of logits exist at a
    time, and the gradient w.r.t. ``h`` is computed in the same pass (``(softmax - onehot) @ weight``), so
    the backward re-reads nothing and the head runs two matmuls per chunk, like an unfused head. The head's
    weight gets no gradient (LoRA leaves it frozen; the caller checks). ``row_w`` (optional, 0 or 1 per
    row) masks filler rows of fixed-shape packed batches.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, tgt: torch.Tensor, chunk: int,
                row_w: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad = torch.empty_like(h) if h.requires_grad else None
        w = weight.to(h.dtype)
        for s in range(0, h.shape[0], chunk):
            hc, tc = h[s : s + chunk], tgt[s : s + chunk]
            logits = (hc @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            nll = lse - logits.gather(1, tc[:, None]).squeeze(1)
            if row_w is not None:
                nll = nll * row_w[s : s + chunk]
            total += nll.sum()
            if grad is not None:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                probs[torch.arange(tc.shape[0], device=tc.device), tc] -= 1.0
                if row_w is not None:
                    probs.mul_(row_w[s : s + chunk, None])
                grad[s : s + chunk] = probs.to(h.dtype) @ w
            del logits
        ctx.save_for_backward(*(() if grad is None else (grad,)))
        return total

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        if not ctx.saved_tensors:
            return None, None, None, None, None
        (grad,) = ctx.saved_tensors
        return grad * g.to(grad.dtype), None, None, None, None


def _head_chunk(vocab: int) -> int:
    """Rows per logits chunk: about 1 GiB of fp32 logits (at least 256 rows, at most 8192)."""
    return max(256, min(8192, (1 << 28) // max(1, vocab)))


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _loss_fn(model: Any, use_plain_head: bool) -> LossFn:
    """Loss = summed cross-entropy over the scored (response) positions of the batch (the caller divides)."""
    causal_lm = model.get_base_model()
    head = causal_lm.get_output_embeddings()
    plain = (use_plain_head and isinstance(head, nn.Linear) and head.bias is None
             and not head.weight.requires_grad)  # fmt: skip
    if plain:
        backbone = causal_lm.base_model
        chunk = _head_chunk(head.weight.shape[0])

        def loss(ids: torch.Tensor, pos: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
            h = backbone(input_ids=ids, use_cache=False).last_hidden_state
            h = h.reshape(-1, h.shape[-1]).index_select(0, pos)
            out: torch.Tensor = _HeadCrossEntropy.apply(h, head.weight, tgt, chunk)
            return out

    else:

        def loss(ids: torch.Tensor, pos: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
            logits = model(input_ids=ids, use_cache=False).logits
            logits = logits.reshape(-1, logits.shape[-1]).index_select(0, pos)
            return nn.functional.cross_entropy(logits.float(), tgt, reduction="sum")

    return loss


def _packable(causal_lm: Any) -> bool:
    """True when ``causal_lm`` can train on packed rows (see ``retrain/packed.py``)."""
    head = causal_lm.get_output_embeddings()
    return (_model_type(causal_lm) in packed.PACKABLE and isinstance(head, nn.Linear) and head.bias is None
            and not head.weight.requires_grad)  # fmt: skip


def _split(batch: _Batch, lengths: Sequence[int], cap: int) -> list[_Batch]:
    """``batch`` cut into micro-batches of at most ``cap`` padded tokens (rows kept in length order).

    As few pieces as ``cap`` allows, of about equal size (the smallest largest piece for that count): each
    forward/backward seems to carry a fixed cost (likely the host side of PEFT in eager mode), so a small
    remainder piece would cost nearly as much as a full one.
    """
    if cap <= 0 or batch.width * len(batch.rows) <= cap:
        return [batch]
    rows = sorted(batch.rows, key=lambda i: lengths[i])

    def greedy(limit: int) -> list[_Batch]:
        out: list[_Batch] = []
        cur: list[int] = []
        width = 0
        for i in rows:
            w = max(width, lengths[i])
            if cur and w * (len(cur) + 1) > limit:
                out.append(_Batch(cur, width, sum(lengths[j] for j in cur)))
                cur, w = [], lengths[i]
            cur.append(i)
            width = w
        out.append(_Batch(cur, width, sum(lengths[j] for j in cur)))
        return out

    best = greedy(cap)
    lo, hi = 1, cap  # the smallest limit that still gives len(best) pieces
    while lo < hi:
        mid = (lo + hi) // 2
        if len(greedy(mid)) <= len(best):
            hi = mid
        else:
            lo = mid + 1
    return greedy(lo) if lo < cap else best


def _fit_micro_tokens(loss_of: LossFn, params: Sequence[torch.Tensor], vocab: int, width: int, dev: torch.device,
                      memory_fraction: float, cap: int) -> int:  # fmt: skip
    """Padded tokens per micro-batch that fit (``packed.fit_tokens``, probing ``width``-long rows, all scored)."""

    def probe(n_tok: int) -> int:
        rows = max(1, n_tok // width)
        ids = torch.randint(3, vocab, (rows, width), device=dev)
        pos = torch.arange(rows * width - 1, device=dev)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = loss_of(ids, pos, ids.reshape(-1)[1:])
        loss.backward()
        return rows * width

    fit = packed.fit_tokens(probe, (2048, 6144), params, dev, memory_fraction)
    return max(width, min(cap, fit) if cap > 0 else fit)


def train_lora(
    base_model_dir: str,
    train_rows: Sequence[Mapping[str, str]],
    out_dir: str,
    cfg: TrainingSettings,
    lora: LoraSettings | None = None,
    *,
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | None = None,
    log_every: int = 10,
) -> TrainResult:
    """Train a LoRA adapter on ``train_rows`` (``{"prompt", "response"}``) and save it to ``out_dir``.

    The base model loads in bf16 on CUDA (when supported) and fp32 otherwise. ``out_dir`` receives the
    PEFT adapter (``save_pretrained``) and ``driftloop_train_config.json``; nothing is written if the run
    fails or ``should_stop()`` (checked before every step) returns True, which raises
    :class:`TrainingCancelled`. ``progress`` is called every ``log_every`` steps and after the last.
    Deterministic for a given ``cfg.seed`` on CPU. ``lora``: the adapter's shape (default ``LoraSettings()``).

    An optimizer step always covers the batch ``cfg`` asks for (``batch_tokens`` or ``batch_size``): what is
    learned does not depend on the GPU. Only how it is cut into micro-batches (gradients accumulated, loss =
    mean over the step's scored tokens) does: ``cfg.micro_batch_tokens`` None = on CUDA, the most padded tokens
    that fit in ``cfg.memory_fraction`` of the free memory (measured by a probe), on CPU no cutting; 0 = never
    cut; > 0 = at most that many. Fewer, larger micro-batches are faster: at 0.5B on an H200 a 32K-token step
    ran at 66K tokens/s whole and 46K in two 16K halves.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    lora = lora or LoraSettings()
    if not train_rows:
        raise ValueError("train_rows: no training examples")
    if log_every < 1:
        raise ValueError("log_every: must be >= 1")
    t_start = time.perf_counter()
    dev = _pick_device(device)
    on_cuda = dev.type == "cuda"
    use_bf16 = on_cuda and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    encoded = [encode_example(tokenizer, str(r["prompt"]), str(r["response"]), cfg.max_length) for r in train_rows]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(tokenizer.eos_token_id)
    lengths = [len(x) for x, _ in encoded]

    model = _load_base(base_model_dir, dev, dtype)
    targets = list(lora.target_modules) if lora.target_modules else default_target_modules(model)
    lcfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=targets, fan_in_fan_out=_needs_fan_in_fan_out(model, targets),
                      bias="none", task_type="CAUSAL_LM")  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, lcfg)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # fp32 master weights for the adapter
        p.data = p.data.float()
    if use_bf16:  # LoRA matmuls run in bf16 under autocast; skip peft's cast of activations to fp32
        for m in model.modules():
            if hasattr(m, "cast_input_dtype_enabled"):
                m.cast_input_dtype_enabled = False  # type: ignore[assignment]
    model.config.use_cache = False
    model.train()
    base: Any = model.get_base_model()
    vocab = int(base.get_output_embeddings().weight.shape[0])
    packable = _packable(base)
    if cfg.packing and not packable:
        raise ValueError(f"training.packing: model type {_model_type(base)!r} cannot be packed "
                         f"(supported: {sorted(packed.PACKABLE)} with a plain LM head); unset it")  # fmt: skip
    packing = packable and (on_cuda if cfg.packing is None else cfg.packing)

    if packing:
        step_docs, per_epoch = packed.plan_steps(lengths, batch_tokens=cfg.batch_tokens, batch_size=cfg.batch_size,
                                                 epochs=cfg.epochs, max_steps=cfg.max_steps, seed=cfg.seed)  # fmt: skip
        total = len(step_docs)
    else:
        plan, per_epoch = _plan(lengths, cfg)
        total = len(plan)

    opt_kw: dict[str, Any] = {"fused": True} if on_cuda else {}
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, **opt_kw)
    warmup = math.ceil(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, warmup))
    loss_acc = torch.zeros((), device=dev, dtype=torch.float32)
    keep_grads = False  # a captured graph adds into .grad: zero it, never drop it

    if packing:
        packed.use_varlen_attention(base)
        enc = packed.Encoded(encoded)
        max_seg = max(lengths)
        head_chunk = _head_chunk(vocab)
        micro_fn = packed.packed_loss_fn(model, _HeadCrossEntropy.apply, head_chunk, max_seg, use_bf16)
        biggest = max(sum(lengths[i] for i in d) for d in step_docs)
        if cfg.micro_batch_tokens:
            fit = cfg.micro_batch_tokens
        elif cfg.micro_batch_tokens is None and on_cuda:
            fit = min(packed.DEFAULT_PACK_TOKENS,
                      packed.fit_pack_tokens(micro_fn, params, vocab, max_seg, dev, cfg.memory_fraction))  # fmt: skip
        else:
            fit = biggest
        pack_tokens = packed.pack_size(biggest, fit, max_seg)
        micro_cap = pack_tokens
        psteps = packed.pack_steps(step_docs, enc.lengths, enc.scored, pack_tokens)
        shapes = packed.Shapes.of(psteps, enc.lengths, enc.scored, pack_tokens)
        if cfg.compile or (cfg.compile is None and on_cuda):
            packed.compile_layers(base)

        def host_batches(st: packed.PackedStep) -> list[dict[str, torch.Tensor]]:
            inv = torch.tensor(1.0 / max(1, st.scored), dtype=torch.float32)
            out = []
            for p in st.packs:
                bt = packed.collate_pack(p, enc, shapes, pad_id)
                bt["inv"] = inv
                out.append({k: v.pin_memory() for k, v in bt.items()} if on_cuda else bt)
            return out

        runner: Callable[[dict[str, torch.Tensor]], torch.Tensor]
        if on_cuda and cfg.cuda_graphs:
            runner = packed.GraphedMicroStep(micro_fn, host_batches(psteps[0])[0], params, dev)
            keep_grads = True
        else:

            def runner(bt: dict[str, torch.Tensor]) -> torch.Tensor:
                return micro_fn({k: v.to(dev, non_blocking=True) for k, v in bt.items()})

        def steps() -> Iterator[tuple[int, Callable[[], None]]]:
            for st in psteps:
                hb = host_batches(st)

                def run(hb: list[dict[str, torch.Tensor]] = hb) -> None:
                    for bt in hb:
                        loss_acc.add_(runner(bt))

                yield st.tokens, run

    else:
        loss_of = _loss_fn(model, _model_type(base) in _PLAIN_HEAD)
        if cfg.micro_batch_tokens is None:
            micro_cap = 0
            if on_cuda:
                micro_cap = _fit_micro_tokens(loss_of, params, vocab, min(cfg.max_length, max(lengths)), dev,
                                              cfg.memory_fraction, 0)  # fmt: skip
        else:
            micro_cap = max(0, cfg.micro_batch_tokens)

        def steps() -> Iterator[tuple[int, Callable[[], None]]]:
            for b in plan:
                micro = []
                for m in _split(b, lengths, micro_cap):
                    ids, pos, tgt = _collate(m, encoded, pad_id, pin=on_cuda)
                    if pos.numel():
                        micro.append((ids, pos, tgt))
                scored = sum(int(x[1].numel()) for x in micro)
                on_dev = [tuple(t.to(dev, non_blocking=True) for t in x) for x in micro]

                def run(on_dev: list[tuple[torch.Tensor, ...]] = on_dev, scored: int = scored) -> None:
                    for ids, pos, tgt in on_dev:
                        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
                            loss = loss_of(ids, pos, tgt) / scored
                        loss.backward()
                        loss_acc.add_(loss.detach().float())

                yield b.tokens, run

    n_acc = 0
    last_loss = float("nan")
    tokens = 0
    t_loop = time.perf_counter()
    for step, (step_tokens, run) in enumerate(steps(), start=1):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"training cancelled at step {step - 1}/{total}")
        run()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=not keep_grads)
        n_acc += 1
        tokens += step_tokens
        if step % log_every == 0 or step == total:
            last_loss = float(loss_acc.item()) / n_acc  # the only host sync
            loss_acc.zero_()
            n_acc = 0
            if not math.isfinite(last_loss):
                raise FloatingPointError(f"training loss is {last_loss} at step {step}")
            if progress is not None:
                progress(TrainProgress(step=step, total_steps=total, epoch=step / per_epoch, loss=last_loss,
                                       tokens=tokens, elapsed_s=time.perf_counter() - t_loop))  # fmt: skip
    if on_cuda:
        torch.cuda.synchronize(dev)
    loop_s = time.perf_counter() - t_loop

    _save_adapter(model, cfg, lora, Path(out_dir))
    return TrainResult(adapter_dir=str(out_dir), steps=total, train_tokens=tokens,
                       tokens_per_s=tokens / loop_s if loop_s > 0 else 0.0, final_loss=last_loss,
                       duration_s=time.perf_counter() - t_start, device=str(dev),
                       dtype=str(dtype).removeprefix("torch."), micro_batch_tokens=micro_cap,
                       setup_s=t_loop - t_start)  # fmt: skip


def _save_adapter(model: Any, cfg: TrainingSettings, lora: LoraSettings, out: Path) -> None:
    """Save into a temporary sibling directory, then move the files into ``out`` (no half-written adapter)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(tmp))
        save_train_config(tmp, cfg, lora)
        out.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
