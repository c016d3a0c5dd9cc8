"""retrain.packed on a GPU: flash attention's variable-length kernel and the CUDA-graph step (skipped without CUDA).

The CPU suite checks the packed row against the documents one by one with the reference attention
(test_packed.py); these check what only runs on CUDA: the kernel against that reference, the graph replay
against the eager step, and that dropout stays random across replays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytestmark = pytest.mark.gpu

from driftloop.retrain import packed  # noqa: E402
from driftloop.retrain.trainer import _HeadCrossEntropy  # noqa: E402

DEV = torch.device("cuda")


def test_flash_varlen_matches_the_reference_attention() -> None:
    torch.manual_seed(0)
    lens = [700, 1024, 300, 5, 67]
    t = sum(lens)
    q = torch.randn(t, 14, 64, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(t, 2, 64, device=DEV, dtype=torch.bfloat16)
    v = torch.randn(t, 2, 64, device=DEV, dtype=torch.bfloat16)
    bounds = [0]
    for n in lens:
        bounds.append(bounds[-1] + n)
    cu = torch.tensor(bounds + [t] * 3, device=DEV, dtype=torch.int32)  # trailing empty segments allowed

    class M:
        training = False

    out, _ = packed.varlen_attention(M(), q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                     None, scaling=0.125, cu_seq_lens_q=cu, max_length_q=1024)  # fmt: skip
    ref = packed._varlen_reference(q.float(), k.float(), v.float(), bounds, 0.125)
    err = float((out[0].float() - ref).norm() / ref.norm())
    assert err < 1e-2


def _model(tmp: Path, dropout: float) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2)).to(DEV, torch.bfloat16)  # fmt: skip
    m = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "down_proj"],
                                     task_type="CAUSAL_LM"))  # fmt: skip
    for n, p in m.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
    packed.use_varlen_attention(m.get_base_model())
    return m


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_graph_replay_equals_the_eager_step_and_keeps_dropout_random(tmp_path: Path, dropout: float) -> None:
    m = _model(tmp_path, dropout)
    params = [p for p in m.parameters() if p.requires_grad]
    fn = packed.packed_loss_fn(m, _HeadCrossEntropy.apply, 256, 256, use_bf16=True)
    batch = packed.synthetic_batch(2048, 512, 256, DEV)
    for p in params:
        p.grad = torch.zeros_like(p)
    eager = float(fn(batch))
    eager_g = [p.grad.clone() for p in params]
    step = packed.GraphedMicroStep(fn, {k: v.cpu() for k, v in batch.items()}, params, DEV)
    losses, grads = [], []
    for _ in range(2):
        for p in params:
            p.grad.zero_()
        losses.append(float(step({k: v.cpu() for k, v in batch.items()})))
        grads.append([p.grad.clone() for p in params])
    if dropout == 0.0:
        assert losses[0] == pytest.approx(eager, rel=1e-3) and losses[1] == pytest.approx(eager, rel=1e-3)
        for a, b in zip(grads[0], eager_g, strict=True):
            assert torch.allclose(a, b, rtol=1e-2, atol=1e-5)
    else:  # a new dropout mask on every replay
        assert losses[0] != losses[1]
        assert any(not torch.equal(a, b) for a, b in zip(grads[0], grads[1], strict=True))
