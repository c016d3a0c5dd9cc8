"""bench/finetune.py's FLOPs accounting and the trainer pieces it relies on (chunked head loss, micro-batches)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from driftloop.retrain.trainer import _Batch, _HeadCrossEntropy, _split  # noqa: E402


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "finetune.py"
    spec = importlib.util.spec_from_file_location("bench_finetune", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_finetune"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_flops_credit_the_head_on_scored_tokens_only() -> None:
    fpt = _bench().flops_per_token
    shape = {"n_body": 100, "n_head": 1000, "n_layers": 2, "d_attn": 4}
    # one sequence of 10 tokens, 3 scored: 4*100*10 + 4*1000*3 + 6*2*4*100, per token
    assert fpt(shape, [10], [3]) == pytest.approx((4000 + 12000 + 4800) / 10)
    assert fpt(shape, [10], [0]) < fpt(shape, [10], [3])


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_head_loss_matches_cross_entropy(chunk: int) -> None:
    g = torch.Generator().manual_seed(chunk)
    h = torch.randn(50, 16, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(300, 16, dtype=torch.float64, generator=g)
    t = torch.randint(0, 300, (50,), generator=g)
    got = _HeadCrossEntropy.apply(h, w, t, chunk)
    (grad,) = torch.autograd.grad(got * 0.5, h)
    ref = torch.nn.functional.cross_entropy(h @ w.t(), t, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref * 0.5, h)
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert float((grad - ref_grad).norm() / ref_grad.norm()) < 1e-6


def test_split_keeps_every_row_once_within_the_cap_in_even_pieces() -> None:
    lengths = [100 + 7 * i for i in range(40)]
    batch = _Batch(list(range(40)), max(lengths), sum(lengths))
    assert _split(batch, lengths, 0) == [batch]
    pieces = _split(batch, lengths, 2500)
    assert sorted(i for p in pieces for i in p.rows) == list(range(40))
    assert all(p.width * len(p.rows) <= 2500 for p in pieces)
    assert all(p.width == max(lengths[i] for i in p.rows) for p in pieces)
    assert all(p.tokens == sum(lengths[i] for i in p.rows) for p in pieces)
    sizes = [p.width * len(p.rows) for p in pieces]
    assert min(sizes) > 0.5 * max(sizes)
