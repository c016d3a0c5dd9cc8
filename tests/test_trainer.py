"""retrain.trainer on CPU with the tiny local GPT-2 from retrain.toy."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from driftloop.retrain.toy import build_model, sample_pairs  # noqa: E402
from driftloop.retrain.trainer import (  # noqa: E402
    CONFIG_FILE,
    TrainingCancelled,
    TrainProgress,
    default_target_modules,
    encode_example,
    format_prompt,
    load_train_config,
    save_train_config,
    train_lora,
)
from driftloop.settings import ConfigError, format_validation_error, load_settings  # noqa: E402
from driftloop.settings.retrain import LoraSettings, TrainingSettings  # noqa: E402

CHAT_TEMPLATE = "{% for m in messages %}<|user|> {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"


@pytest.fixture(scope="module")
def base_dir(toy_base_model: Path) -> Path:
    """A tiny GPT-2 trained on domain A (the champion the adapter starts from): the session's toy model."""
    return toy_base_model


@pytest.fixture(scope="module")
def tok(base_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_dir))


def _rows(domain: str, n: int, seed: int) -> list[dict[str, str]]:
    return [{"prompt": p, "response": r} for p, r in sample_pairs(domain, n, seed=seed)]


# ----------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"epochs": 0}, "epochs"),
        ({"max_steps": 0}, "max_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_tokens": -5}, "batch_tokens"),
        ({"max_length": 1}, "max_length"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"seed": -1}, "seed"),
        ({"grad_clip": -1.0}, "grad_clip"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    """The trainer takes the policy's TrainingSettings: its limits are the ones check-config enforces."""
    with pytest.raises(ValidationError) as e:
        TrainingSettings(**kwargs)
    assert format_validation_error(e.value)[0].startswith(f"{field}: ")


@pytest.mark.parametrize(("kwargs", "field"), [({"r": 0}, "r"), ({"dropout": 1.0}, "dropout"),
                                               ({"target_modules": [""]}, "target_modules")])  # fmt: skip
def test_lora_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        LoraSettings(**kwargs)
    assert format_validation_error(e.value)[0].startswith(f"{field}: ")


def test_check_config_refuses_what_the_trainer_would() -> None:
    """One definition: a training setting the trainer cannot take is refused at load, with its policy path."""
    policy = {"name": "p", "model_id": "m", "base_model": "/b", "trigger": {"condition": "drift.score > 0.5"}}
    bad = {**policy, "training": {"max_steps": 0}, "lora": {"dropout": 1.0}}
    with pytest.raises(ConfigError) as e:
        load_settings(None, retrain={"policies": [bad]})
    assert any(p.startswith("retrain.policies.0.training.max_steps: ") for p in e.value.problems)
    assert any(p.startswith("retrain.policies.0.lora.dropout: ") for p in e.value.problems)
    ok = load_settings(None, retrain={"policies": [{**policy, "training": {"max_steps": 5}}]}).retrain.policies[0]
    assert isinstance(ok.training, TrainingSettings) and isinstance(ok.lora, LoraSettings)


def test_config_save_load_round_trip(tmp_path: Path) -> None:
    cfg = TrainingSettings(epochs=2.5, max_steps=40, learning_rate=1e-3, batch_tokens=4096, seed=7)
    lora = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["c_attn", "c_fc"])
    path = save_train_config(tmp_path, cfg, lora)
    assert path == tmp_path / CONFIG_FILE
    data = json.loads(path.read_text())
    assert data["lora"]["target_modules"] == ["c_attn", "c_fc"] and data["training"]["max_steps"] == 40
    assert load_train_config(tmp_path) == (cfg, lora)


# ---------------------------------------------------------------------------------------- encoding


def test_encode_example_masks_exactly_the_prompt(tok: Any) -> None:
    prompt, response = "Where is my order 1234?", "Your order 1234 is on its way; track it under orders."
    ids, labels = encode_example(tok, prompt, response, max_length=256)
    p_ids = tok(f"{prompt}\n")["input_ids"]
    r_ids = [*tok(response, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    assert ids == p_ids + r_ids
    assert labels == [-100] * len(p_ids) + r_ids
    # the same token sequence the base model was trained on: f"{prompt}\n{response}{eos}"
    assert ids == tok(f"{prompt}\n{response}{tok.eos_token}")["input_ids"]
    assert format_prompt(tok, prompt) == f"{prompt}\n"


def test_encode_example_truncates_prompt_from_the_left(tok: Any) -> None:
    prompt, response = "What is 12 plus 30? " * 20, "12 plus 30 is 42."
    r_ids = [*tok(response, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    full_p = tok(f"{prompt}\n")["input_ids"]
    ids, labels = encode_example(tok, prompt, response, max_length=32)
    assert len(ids) == len(labels) == 32
    assert labels[-len(r_ids) :] == r_ids and ids[-len(r_ids) :] == r_ids
    n_p = 32 - len(r_ids)
    assert ids[:n_p] == full_p[-n_p:]  # the end of the prompt survives
    assert labels[:n_p] == [-100] * n_p
    # an over-long response keeps some of itself
    ids, labels = encode_example(tok, "hi", "word " * 200, max_length=16)
    assert len(ids) == 16 and sum(x != -100 for x in labels) >= 8


def test_encode_example_with_chat_template(tok: Any) -> None:
    import copy

    chat = copy.deepcopy(tok)
    chat.chat_template = CHAT_TEMPLATE
    prompt, response = "Please cancel my order 4321.", "I have cancelled your order 4321."
    text = format_prompt(chat, prompt)
    assert text == f"<|user|> {prompt}\n<|assistant|> "
    ids, labels = encode_example(chat, prompt, response, max_length=256)
    p_ids = chat(text, add_special_tokens=False)["input_ids"]
    r_ids = [*chat(response, add_special_tokens=False)["input_ids"], chat.eos_token_id]
    assert ids == p_ids + r_ids
    assert labels == [-100] * len(p_ids) + r_ids


# ---------------------------------------------------------------------------------- target modules


def test_default_target_modules_gpt2(base_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    assert default_target_modules(model) == ["c_attn", "c_proj", "c_fc"]


def test_default_target_modules_qwen2_and_fallback() -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, Qwen2Config, Qwen2ForCausalLM

    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
    assert default_target_modules(qwen) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=4))  # fmt: skip
    names = default_target_modules(neox)
    assert "embed_out" not in names and "lm_head" not in names
    assert {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"} <= set(names)


# ---------------------------------------------------------------------------------------- training


def _response_nll(model: Any, tok: Any, rows: list[dict[str, str]]) -> float:
    """Mean negative log-likelihood per response token (plain torch, one example at a time)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for r in rows:
            ids, labels = encode_example(tok, r["prompt"], r["response"], 256)
            x = torch.tensor([ids])
            y = torch.tensor(labels[1:])
            logits = model(input_ids=x).logits[0, :-1]
            keep = y != -100
            total += float(torch.nn.functional.cross_entropy(logits[keep], y[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


def test_train_lora_lowers_perplexity_on_the_new_domain(base_dir: Path, tok: Any, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = TrainingSettings(epochs=2, learning_rate=3e-3, batch_tokens=768, warmup_ratio=0.05, seed=3)
    lora = LoraSettings(r=8, alpha=16, dropout=0.0)
    seen: list[TrainProgress] = []
    out = tmp_path / "adapter"
    res = train_lora(str(base_dir), _rows("B", 300, seed=1), str(out), cfg, lora, progress=seen.append,
                     device="cpu", log_every=5)  # fmt: skip

    assert res.adapter_dir == str(out) and res.device == "cpu" and res.dtype == "float32"
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert load_train_config(out) == (cfg, lora)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left
    # progress: every 5 steps and after the last, monotone, tokens add up
    assert seen and seen[-1].step == res.steps == seen[-1].total_steps
    assert [p.step for p in seen] == sorted({*range(5, res.steps + 1, 5), res.steps})
    assert seen[-1].tokens == res.train_tokens > 0 and seen[-1].epoch == pytest.approx(2.0, abs=0.1)
    assert all(math.isfinite(p.loss) for p in seen) and res.final_loss == seen[-1].loss
    assert seen[-1].loss < seen[0].loss
    # every example's real tokens, twice (two epochs)
    n_tokens = sum(len(encode_example(tok, r["prompt"], r["response"], cfg.max_length)[0]) for r in _rows("B", 300, 1))
    assert res.train_tokens == pytest.approx(2 * n_tokens, rel=0.05)

    held_out = _rows("B", 40, seed=99)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    nll_base = _response_nll(base, tok, held_out)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), str(out))
    nll_tuned = _response_nll(tuned, tok, held_out)
    assert math.exp(nll_tuned) < 0.5 * math.exp(nll_base)


def test_train_lora_is_deterministic_on_cpu(base_dir: Path, tmp_path: Path) -> None:
    cfg = TrainingSettings(max_steps=4, learning_rate=1e-3, batch_size=8, seed=5)
    rows = _rows("B", 64, seed=2)
    a = train_lora(str(base_dir), rows, str(tmp_path / "a"), cfg, device="cpu", log_every=2)
    b = train_lora(str(base_dir), rows, str(tmp_path / "b"), cfg, device="cpu", log_every=2)
    assert a.steps == b.steps == 4
    assert a.final_loss == b.final_loss and a.train_tokens == b.train_tokens
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "b" / "adapter_model.safetensors"
    ).read_bytes()


def test_should_stop_cancels_and_leaves_no_adapter(base_dir: Path, tmp_path: Path) -> None:
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    seen: list[TrainProgress] = []
    out = tmp_path / "adapter"
    with pytest.raises(TrainingCancelled):
        train_lora(str(base_dir), _rows("B", 64, seed=2), str(out), TrainingSettings(batch_size=4), progress=seen.append,
                   should_stop=stop, device="cpu", log_every=1)  # fmt: skip
    assert [p.step for p in seen] == [1, 2, 3]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_train_lora_rejects_empty_rows(base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_rows"):
        train_lora(str(base_dir), [], str(tmp_path / "x"), TrainingSettings(), device="cpu")


def test_untrained_model_builds(tmp_path: Path) -> None:
    """retrain.toy's untrained builder is compatible with default_target_modules (GPT-2 Conv1D)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(build_model(tmp_path / "m")))
    assert default_target_modules(model) == ["c_attn", "c_proj", "c_fc"]
