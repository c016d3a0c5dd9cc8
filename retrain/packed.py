"""Packed, fixed-shape training steps: documents packed into rows with document-masked (varlen) attention.

Why: profiling the padded trainer at 0.5B on an H200 showed a third of each step's wall time as GPU idle
between ~6 500 small kernel launches (PEFT and transformers in eager mode), and every batch had another shape.
Packing the step's documents into rows of exactly ``pack_tokens`` tokens makes every forward/backward the same
shape, so it can be captured once as a CUDA graph and replayed (one launch per micro-batch), and no padding is
computed except the row's tail. Document boundaries are kept exact: attention runs per document
(``cu_seqlens``, flash attention's variable-length kernel on CUDA; a per-document SDPA loop on the CPU) and
positions restart at 0 in every document, so a packed row computes the same function as the documents one by
one.

Only for the Llama-like architectures whose attention goes through transformers' ``AttentionInterface`` and
whose LM head is a plain linear layer (``PACKABLE``); other models keep the padded path.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

T = TypeVar("T")
VARLEN_ATTENTION = "driftloop_varlen"
# Default row length on CUDA (when more fits): with the step captured as a CUDA graph, longer rows gain little
# (H200, LoRA r=16: 0.5B 114K vs 127K tokens/s at 16K vs 32K tokens, 1.5B 52K vs 57K) for 2-3x the memory
# (0.5B 27 vs 75 GiB, 1.5B 53 vs 138 GiB). Less is used when less fits (7B: ~11K).
DEFAULT_PACK_TOKENS = 16384
PACKABLE = frozenset({"llama", "qwen2", "qwen3", "mistral"})
IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------ attention


def _varlen_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int],
                      scale: float | None) -> torch.Tensor:  # fmt: skip
    """Causal attention per segment ``[bounds[i], bounds[i+1])`` of ``(T, H, D)`` tensors, by SDPA (any device)."""
    groups = q.shape[1] // k.shape[1]
    outs = []
    for a, b in itertools.pairwise(bounds):
        if b <= a:
            continue
        qq = q[a:b].transpose(0, 1)
        kk = k[a:b].transpose(0, 1).repeat_interleave(groups, 0)
        vv = v[a:b].transpose(0, 1).repeat_interleave(groups, 0)
        outs.append(F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, scale=scale).transpose(0, 1))
    return torch.cat(outs)


def varlen_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """transformers attention function: causal attention within each packed document of a ``(1, H, T, D)`` row.

    The documents are given by ``cu_seq_lens_q`` (int32 offsets, trailing entries equal to T allowed) and
    ``max_length_q`` (an upper bound of their lengths, a Python int so that the call is graph-capturable).
    Returns ``(1, T, H, D)`` as transformers expects.
    """
    cu = kwargs.get("cu_seq_lens_q")
    max_len = kwargs.get("max_length_q")
    if cu is None or max_len is None or query.shape[0] != 1:
        raise RuntimeError(f"{VARLEN_ATTENTION} attention needs one packed row with cu_seq_lens_q and max_length_q")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D) views
    if q.is_cuda:
        dt = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        out = torch.ops.aten._flash_attention_forward(q.to(dt), k.to(dt), v.to(dt), cu, cu, int(max_len), int(max_len),
                                                      float(dropout) if module.training else 0.0, True, False,
                                                      scale=scaling)[0]  # fmt: skip
    else:
        out = _varlen_reference(q, k, v, [int(x) for x in cu.tolist()], scaling)
    return out.unsqueeze(0), None


def use_varlen_attention(model: Any) -> None:
    """Register :func:`varlen_attention` with transformers and switch ``model`` (a PreTrainedModel) to it."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(VARLEN_ATTENTION)
    else:  # pragma: no cover - older transformers
        model.config._attn_implementation = VARLEN_ATTENTION


# ------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class PackedStep:
    """One optimizer step: its packs (each a tuple of example indices), real and scored token counts."""

    packs: tuple[tuple[int, ...], ...]
    tokens: int
    scored: int


def _bins(docs: Sequence[int], lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing of ``docs`` into bins of ``capacity`` tokens (each doc fits alone)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(docs, key=lambda j: -lengths[j]):
        for b, r in enumerate(room):
            if lengths[i] <= r:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def plan_steps(lengths: Sequence[int], *, batch_tokens: int, batch_size: int, epochs: float, max_steps: int,
               seed: int) -> tuple[list[list[int]], int]:  # fmt: skip
    """The documents of every optimizer step of the run (shuffled every epoch) and the steps per epoch.

    A step holds the next documents of the shuffled order up to ``batch_tokens`` real tokens (``batch_size``
    documents when ``batch_tokens`` is 0); a document longer than the budget is a step of its own.
    """
    rng = random.Random(seed)

    def epoch() -> list[list[int]]:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        if batch_tokens <= 0:
            return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        steps: list[list[int]] = []
        cur: list[int] = []
        tok = 0
        for i in order:
            if cur and tok + lengths[i] > batch_tokens:
                steps.append(cur)
                cur, tok = [], 0
            cur.append(i)
            tok += lengths[i]
        if cur:
            steps.append(cur)
        return steps

    return repeat_epochs(epoch, epochs, max_steps)


def repeat_epochs(epoch: Callable[[], list[T]], epochs: float, max_steps: int) -> tuple[list[T], int]:
    """The run's steps, freshly shuffled epochs (``epoch()``) one after another, cut at ``max_steps`` (> 0) or
    ``epochs`` epochs; and the steps per epoch. Both of the trainer's paths plan with it."""
    first = epoch()
    per_epoch = len(first)
    total = max_steps if max_steps > 0 else max(1, math.ceil(epochs * per_epoch))
    steps = list(first)
    while len(steps) < total:
        steps.extend(epoch())
    return steps[:total], per_epoch


def pack_steps(steps: Sequence[Sequence[int]], lengths: Sequence[int], scored: Sequence[int],
               pack_tokens: int) -> list[PackedStep]:  # fmt: skip
    """Each step's documents packed into rows of ``pack_tokens`` tokens (first-fit decreasing)."""
    if pack_tokens < max(lengths):
        raise ValueError(f"pack_tokens {pack_tokens} is shorter than the longest example ({max(lengths)} tokens)")
    out = []
    for d in steps:
        packs = tuple(tuple(b) for b in _bins(d, lengths, pack_tokens))
        out.append(PackedStep(packs, sum(lengths[i] for i in d), sum(scored[i] for i in d)))
    return out


# ------------------------------------------------------------------------------------------ collation


@dataclass(frozen=True)
class Shapes:
    """The fixed sizes of every packed micro-batch: row tokens, ``cu_seqlens`` entries, scored slots, and
    the longest segment (documents and the pieces the padded tail is cut into)."""

    tokens: int
    segments: int
    scored: int
    max_segment: int

    @staticmethod
    def of(plan: Sequence[PackedStep], lengths: Sequence[int], scored: Sequence[int], pack_tokens: int) -> Shapes:
        max_seg = max(lengths)
        segs = 2
        sc = 1
        for step in plan:
            for p in step.packs:
                pad = pack_tokens - sum(lengths[i] for i in p)
                segs = max(segs, len(p) + math.ceil(pad / max_seg) + 1)
                sc = max(sc, sum(scored[i] for i in p))
        return Shapes(pack_tokens, segs, sc, max_seg)


class Encoded:
    """Examples as numpy arrays: token ids, and per example the offsets whose next token is scored + targets."""

    def __init__(self, encoded: Sequence[tuple[list[int], list[int]]]) -> None:
        self.ids = [np.asarray(x, dtype=np.int64) for x, _ in encoded]
        self.offsets: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        for _x, y in encoded:
            lab = np.asarray(y, dtype=np.int64)
            keep = np.nonzero(lab[1:] != IGNORE_INDEX)[0]
            self.offsets.append(keep)  # position t scores label t+1
            self.targets.append(lab[1:][keep])
        self.lengths = [int(a.shape[0]) for a in self.ids]
        self.scored = [int(a.shape[0]) for a in self.offsets]


def collate_pack(pack: Sequence[int], enc: Encoded, shapes: Shapes, pad_id: int) -> dict[str, torch.Tensor]:
    """One packed row as fixed-shape CPU tensors: ``ids``, ``position_ids``, ``cu`` (int32), scored ``pos``,
    ``tgt`` and ``w`` (1 for a real scored slot, 0 for filler)."""
    t_n, s_n = shapes.tokens, shapes.scored
    ids = np.full(t_n, pad_id, dtype=np.int64)
    posi = np.zeros(t_n, dtype=np.int64)
    cu = np.full(shapes.segments, t_n, dtype=np.int32)
    sp = np.zeros(s_n, dtype=np.int64)
    tg = np.zeros(s_n, dtype=np.int64)
    w = np.zeros(s_n, dtype=np.float32)
    t = seg = ns = 0
    cu[0] = 0
    for i in pack:
        n = enc.lengths[i]
        ids[t : t + n] = enc.ids[i]
        posi[t : t + n] = np.arange(n)
        k = enc.scored[i]
        sp[ns : ns + k] = enc.offsets[i] + t
        tg[ns : ns + k] = enc.targets[i]
        w[ns : ns + k] = 1.0
        t, seg, ns = t + n, seg + 1, ns + k
        cu[seg] = t
    while t < t_n:  # the padded tail: segments of at most max_segment tokens (flash attention's bound)
        n = min(shapes.max_segment, t_n - t)
        posi[t : t + n] = np.arange(n)
        t, seg = t + n, seg + 1
        cu[seg] = t
    return {"ids": torch.from_numpy(ids), "position_ids": torch.from_numpy(posi), "cu": torch.from_numpy(cu),
            "pos": torch.from_numpy(sp), "tgt": torch.from_numpy(tg), "w": torch.from_numpy(w)}  # fmt: skip


# ------------------------------------------------------------------------------------------- the step


MicroFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def packed_loss_fn(model: Any, head_ce: Callable[..., torch.Tensor], chunk: int, max_segment: int,
                   use_bf16: bool) -> MicroFn:  # fmt: skip
    """``batch -> loss`` of one packed row: summed response cross-entropy times ``batch["inv"]``, with backward
    already run (so that the whole forward/backward is one capturable region)."""
    causal_lm = model.get_base_model()
    head = causal_lm.get_output_embeddings()
    backbone = causal_lm.base_model

    def micro(b: dict[str, torch.Tensor]) -> torch.Tensor:
        dev_type = b["ids"].device.type
        with torch.autocast(device_type=dev_type, dtype=torch.bfloat16, enabled=use_bf16, cache_enabled=False):
            h = backbone(input_ids=b["ids"][None], position_ids=b["position_ids"][None], use_cache=False,
                         cu_seq_lens_q=b["cu"], cu_seq_lens_k=b["cu"], max_length_q=max_segment,
                         max_length_k=max_segment).last_hidden_state[0]  # fmt: skip
            h = h.index_select(0, b["pos"])
            loss = head_ce(h, head.weight, b["tgt"], chunk, b["w"]) * b["inv"]
        loss.backward()
        return loss.detach()

    return micro


class GraphedMicroStep:
    """A packed forward/backward captured once as a CUDA graph and replayed for every micro-batch.

    Inputs are copied into static device buffers before each replay (stream-ordered, so the copy waits for the
    previous replay). Gradients accumulate into the parameters' ``.grad`` tensors, which must exist (zeroed,
    never set to None) for the whole run: the graph adds into them. Dropout stays random: the CUDA generator
    advances its offset on every replay.
    """

    def __init__(self, fn: MicroFn, example: dict[str, torch.Tensor], params: Sequence[torch.Tensor],
                 device: torch.device, warmup: int = 3) -> None:  # fmt: skip
        self.static = {k: v.to(device, non_blocking=True).clone() for k, v in example.items()}
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):  # autotuning, lazy initialisation and compiles happen outside the capture
                fn(self.static)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        for p in params:
            p.grad.zero_()  # type: ignore[union-attr]
        torch.cuda.empty_cache()  # the warm-up's cached blocks; the graph gets its own pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = fn(self.static)
        for p in params:
            p.grad.zero_()  # type: ignore[union-attr]

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        for k, v in batch.items():
            self.static[k].copy_(v, non_blocking=True)
        self.graph.replay()
        return self.loss


def pack_size(biggest: int, fit: int, max_segment: int) -> int:
    """Row length for steps of at most ``biggest`` tokens when ``fit`` tokens fit in memory: the step in as
    few equal rows as fit, rounded up to a multiple of 64 (never below the longest example)."""
    n = max(1, math.ceil(biggest / max(1, fit)))
    t = math.ceil(biggest / n / 64) * 64
    return max(max_segment, min(t, fit) if n > 1 else t)


def synthetic_batch(tokens: int, vocab: int, max_segment: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A packed row of random ids (documents of ``max_segment`` tokens, half the positions scored)."""
    ids = torch.randint(3, vocab, (tokens,), device=device)
    posi = torch.arange(tokens, device=device) % max_segment
    n_seg = math.ceil(tokens / max_segment)
    cu = torch.clamp(torch.arange(n_seg + 1, device=device) * max_segment, max=tokens).to(torch.int32)
    pos = torch.arange(0, tokens - 1, 2, device=device)
    return {"ids": ids, "position_ids": posi, "cu": cu, "pos": pos, "tgt": ids[pos + 1],
            "w": torch.ones(pos.shape[0], device=device), "inv": torch.tensor(1.0 / pos.shape[0], device=device)}  # fmt: skip


def fit_tokens(probe: Callable[[int], int], sizes: tuple[int, int], params: Sequence[torch.Tensor],
               device: torch.device, memory_fraction: float) -> int:  # fmt: skip
    """Tokens per forward/backward that fit in ``memory_fraction`` of the GPU memory still free.

    ``probe(n)`` runs one forward/backward of about ``n`` tokens and returns the tokens it used; two probes give
    the bytes per token (the slope) and the fixed workspace (the intercept); their gradients are discarded. Why
    a probe: activation memory per token depends on the architecture, LoRA targets, attention kernel and
    library versions, which no formula here would track.
    """
    peaks: list[tuple[int, int]] = []
    for n in sizes:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        used = probe(n)
        torch.cuda.synchronize(device)
        peaks.append((used, torch.cuda.max_memory_allocated(device) - base))
        for p in params:
            p.grad = None
    (t1, m1), (t2, m2) = peaks
    per_tok = max(1.0, (m2 - m1) / max(1, t2 - t1))
    fixed = max(0.0, m1 - per_tok * t1)
    free, _total = torch.cuda.mem_get_info(device)
    avail = free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int((memory_fraction * avail - fixed) / per_tok)


def fit_pack_tokens(fn: MicroFn, params: Sequence[torch.Tensor], vocab: int, max_segment: int, device: torch.device,
                    memory_fraction: float) -> int:  # fmt: skip
    """Packed row tokens that fit (:func:`fit_tokens`, probing rows of random documents)."""

    def probe(n: int) -> int:
        n = max(n, 2 * max_segment)
        fn(synthetic_batch(n, vocab, max_segment, device))
        return n

    return max(max_segment, fit_tokens(probe, (4096, 12288), params, device, memory_fraction))


def compile_layers(causal_lm: Any) -> None:
    """``torch.compile`` every decoder layer (static shapes: the packed rows never change size)."""
    layers = getattr(getattr(causal_lm, "model", None), "layers", None)
    if layers is None:
        raise ValueError("training.compile: the model has no model.layers to compile")
    for layer in layers:
        layer.compile(dynamic=False)
