"""retrain.packed: packed rows with per-document attention compute the same loss and gradients as the documents
one by one (CPU reference attention), plans keep every example, and train_lora trains on packed rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from driftloop.retrain import packed  # noqa: E402
from driftloop.retrain.trainer import IGNORE_INDEX, _HeadCrossEntropy, encode_example, train_lora  # noqa: E402
from driftloop.settings.retrain import LoraSettings, TrainingSettings  # noqa: E402


def _lengths(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [int(x) for x in torch.randint(3, 60, (n,), generator=g)]


def test_plan_steps_keeps_every_example_once_per_epoch_within_the_budget() -> None:
    lengths = _lengths(101, 0)
    steps, per_epoch = packed.plan_steps(lengths, batch_tokens=200, batch_size=8, epochs=2, max_steps=-1, seed=3)
    first, second = steps[:per_epoch], steps[per_epoch:]
    assert sorted(i for s in first for i in s) == list(range(101))
    assert sorted(i for s in second for i in s) == list(range(101))
    assert all(sum(lengths[i] for i in s) <= 200 for s in steps)
    assert first != second  # reshuffled
    again, _ = packed.plan_steps(lengths, batch_tokens=200, batch_size=8, epochs=2, max_steps=-1, seed=3)
    assert again == steps
    by_size, _ = packed.plan_steps(lengths, batch_tokens=0, batch_size=8, epochs=1, max_steps=5, seed=3)
    assert len(by_size) == 5 and all(len(s) == 8 for s in by_size)


def test_pack_steps_fill_rows_without_overflow_and_refuse_short_rows() -> None:
    lengths = _lengths(64, 1)
    scored = [n // 2 for n in lengths]
    steps, _ = packed.plan_steps(lengths, batch_tokens=400, batch_size=8, epochs=1, max_steps=-1, seed=0)
    ps = packed.pack_steps(steps, lengths, scored, 128)
    for st, docs in zip(ps, steps, strict=True):
        assert sorted(i for p in st.packs for i in p) == sorted(docs)
        assert all(sum(lengths[i] for i in p) <= 128 for p in st.packs)
        assert st.tokens == sum(lengths[i] for i in docs) and st.scored == sum(scored[i] for i in docs)
    with pytest.raises(ValueError, match="shorter than the longest example"):
        packed.pack_steps(steps, lengths, scored, max(lengths) - 1)


def test_pack_size_splits_a_step_into_equal_rows() -> None:
    assert packed.pack_size(32768, 100_000, 1024) == 32768
    assert packed.pack_size(32768, 20_000, 1024) == 16384
    assert packed.pack_size(1000, 10, 300) == 300  # never below the longest example
    assert packed.pack_size(30000, 40000, 1024) % 64 == 0


def test_collate_pack_positions_segments_and_targets() -> None:
    enc = packed.Encoded([([5, 6, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, 7, 8]), ([9, 10, 11], [IGNORE_INDEX, 10, 11])])
    shapes = packed.Shapes(tokens=16, segments=8, scored=6, max_segment=4)
    b = packed.collate_pack((0, 1), enc, shapes, pad_id=0)
    assert b["ids"].tolist()[:7] == [5, 6, 7, 8, 9, 10, 11] and b["ids"].tolist()[7:] == [0] * 9
    assert b["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert b["cu"].tolist() == [0, 4, 7, 11, 15, 16, 16, 16]  # tail cut into pieces of at most 4
    assert b["pos"].tolist() == [1, 2, 4, 5, 0, 0] and b["tgt"].tolist() == [7, 8, 10, 11, 0, 0]
    assert b["w"].tolist() == [1, 1, 1, 1, 0, 0]
    ids = b["ids"]
    assert all(int(ids[p + 1]) == t for p, t, w in zip(b["pos"], b["tgt"], b["w"], strict=True) if w)


def _tiny_llama(tmp: Path, tokenizer_dir: Path, model_type: str = "llama") -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    kw: dict[str, Any] = {"vocab_size": len(tok), "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
          "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 512}  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**kw)) if model_type == "qwen2" else LlamaForCausalLM(LlamaConfig(**kw))
    out = tmp / model_type
    model.save_pretrained(str(out))
    for f in tokenizer_dir.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt"):
            shutil.copy(f, out / f.name)
    return out


def _rows(n: int) -> list[dict[str, str]]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda"]
    return [{"prompt": " ".join(words[: 2 + i % 5]), "response": " ".join(reversed(words[: 3 + (i * 3) % 7]))}
            for i in range(n)]  # fmt: skip


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_packed_row_computes_the_documents_loss_and_gradients(toy_base_model: Path, tmp_path: Path,
                                                              model_type: str) -> None:  # fmt: skip
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mdir = _tiny_llama(tmp_path, toy_base_model, model_type)
    tok = AutoTokenizer.from_pretrained(str(mdir))
    encoded = [encode_example(tok, r["prompt"], r["response"], 64) for r in _rows(5)]
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                      task_type="CAUSAL_LM")  # fmt: skip

    def model() -> Any:
        torch.manual_seed(1)
        m = get_peft_model(AutoModelForCausalLM.from_pretrained(str(mdir), attn_implementation="sdpa"), lcfg)
        for n, p in m.named_parameters():  # non-zero B so that LoRA matters in the gradients
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
        return m

    ref = model()
    total = torch.zeros(())
    scored = 0
    for ids, labels in encoded:  # the documents one by one, plain transformers
        y = torch.tensor(labels[1:])
        logits = ref(input_ids=torch.tensor([ids])).logits[0, :-1]
        keep = y != IGNORE_INDEX
        total = total + torch.nn.functional.cross_entropy(logits[keep], y[keep], reduction="sum")
        scored += int(keep.sum())
    (total / scored).backward()

    pk = model()
    packed.use_varlen_attention(pk.get_base_model())
    enc = packed.Encoded(encoded)
    max_seg = max(enc.lengths)
    shapes = packed.Shapes(tokens=sum(enc.lengths) + 2 * max_seg + 3, segments=12, scored=sum(enc.scored) + 5,
                           max_segment=max_seg)  # fmt: skip
    batch = packed.collate_pack(range(5), enc, shapes, pad_id=0)
    batch["inv"] = torch.tensor(1.0 / scored)
    fn = packed.packed_loss_fn(pk, _HeadCrossEntropy.apply, 7, max_seg, use_bf16=False)
    loss = fn(batch)
    assert float(loss) == pytest.approx(float(total / scored), rel=1e-5)
    ref_g = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    got_g = {n: p.grad for n, p in pk.named_parameters() if p.requires_grad}
    assert ref_g.keys() == got_g.keys() and ref_g
    for n, g in ref_g.items():
        assert got_g[n] is not None and g is not None
        assert torch.allclose(got_g[n], g, rtol=1e-4, atol=1e-6), n


def test_train_lora_on_packed_rows_learns_and_records_the_settings(toy_base_model: Path, tmp_path: Path) -> None:
    mdir = _tiny_llama(tmp_path, toy_base_model)
    rows = _rows(24)
    cfg = TrainingSettings(epochs=4, batch_tokens=160, max_length=64, learning_rate=3e-3, packing=True,
                           micro_batch_tokens=96)  # fmt: skip
    seen: list[float] = []
    res = train_lora(str(mdir), rows, str(tmp_path / "out"), cfg, LoraSettings(r=4, alpha=8, dropout=0.0),
                     progress=lambda p: seen.append(p.loss), log_every=2)  # fmt: skip
    assert res.micro_batch_tokens >= 96 and res.steps == len(seen) * 2
    assert seen[-1] < seen[0]
    saved = json.loads((tmp_path / "out" / "driftloop_train_config.json").read_text())
    assert saved["training"]["packing"] is True


def test_packing_refuses_a_model_it_cannot_pack(toy_base_model: Path, tmp_path: Path) -> None:
    cfg = TrainingSettings(epochs=1, batch_size=4, max_length=64, packing=True)
    with pytest.raises(ValueError, match=r"training\.packing: model type 'gpt2'"):
        train_lora(str(toy_base_model), _rows(4), str(tmp_path / "o"), cfg)
    assert not (tmp_path / "o").exists()
