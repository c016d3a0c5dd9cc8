"""Evaluation on the tiny local GPT-2 of retrain.toy: NLL, generation metrics, golden sets, evaluate_pair + gate."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from driftloop.retrain.evaluate import evaluate_pair, load_for_eval, load_golden_set, score_examples
from driftloop.retrain.gate import decide, point_value
from driftloop.retrain.toy import sample_pairs
from driftloop.settings.retrain import GateSettings


def _rows(domain: str, n: int, seed: int) -> list[dict[str, str]]:
    return [{"prompt": p, "reference": r} for p, r in sample_pairs(domain, n, seed=seed)]


@pytest.fixture(scope="module")
def base_dir(toy_base_model: Path) -> str:
    return str(toy_base_model)  # the session's toy model (tests/conftest.py)


@pytest.fixture(scope="module")
def base(base_dir: str) -> tuple[object, object]:
    return load_for_eval(base_dir, None, device="cpu")


def test_domain_a_much_lower_perplexity_and_better_answers(base: tuple[object, object]) -> None:
    model, tok = base
    calls: list[tuple[int, int]] = []
    a = score_examples(model, tok, _rows("A", 40, 7), max_new_tokens=24, progress=lambda d, t: calls.append((d, t)))
    b = score_examples(model, tok, _rows("B", 40, 7), max_new_tokens=24)
    ppl_a, ppl_b = point_value(a, "perplexity"), point_value(b, "perplexity")
    assert ppl_a * 2 < ppl_b, (ppl_a, ppl_b)  # the base knows B's words (background text), not its answers
    assert all(s.n_tokens > 0 and s.nll > 0 for s in a)
    assert all(isinstance(s.output, str) for s in a + b)
    assert sum(bool(s.output) for s in a) > 30
    assert point_value(a, "rouge_l") > point_value(b, "rouge_l") + 0.2
    assert point_value(a, "bleu") > point_value(b, "bleu")
    # sacrebleu scores a perfect answer 100.00000000000004: the bound allows float rounding
    assert all(s.exact_match in (0.0, 1.0) and 0 <= s.bleu <= 100 + 1e-9 for s in a)  # type: ignore[operator]
    assert calls[-1] == (80, 80) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_batched_equals_unbatched(base: tuple[object, object]) -> None:
    model, tok = base
    rows = _rows("A", 12, 3) + _rows("B", 12, 3)
    random.Random(0).shuffle(rows)
    rows[0] = {"prompt": rows[0]["prompt"] * 4, "reference": rows[0]["reference"]}  # very different lengths
    batched = score_examples(model, tok, rows, batch_size=8, max_new_tokens=16)
    single = score_examples(model, tok, rows, batch_size=1, max_new_tokens=16)
    for x, y in zip(batched, single, strict=True):
        assert x.n_tokens == y.n_tokens
        assert x.nll == pytest.approx(y.nll, abs=1e-4)
        assert x.output == y.output  # left padding does not change greedy answers
        assert x.rouge_l == y.rouge_l


def test_no_generation_scores_nll_only(base: tuple[object, object]) -> None:
    model, tok = base
    s = score_examples(model, tok, _rows("A", 5, 1), generate=False)
    assert all(x.rouge_l is None and x.bleu is None and x.exact_match is None and x.output is None for x in s)
    assert all(x.n_tokens > 0 for x in s)


def test_load_golden_set(tmp_path: Path) -> None:
    p = tmp_path / "golden.jsonl"
    p.write_text('{"prompt": "What is 2 plus 2?", "reference": "2 plus 2 is 4."}\n\n'
                 '{"prompt": "Is 3 an even number?", "response": "No, 3 is odd."}\n', encoding="utf-8")  # fmt: skip
    assert load_golden_set(p) == [
        {"prompt": "What is 2 plus 2?", "reference": "2 plus 2 is 4."},
        {"prompt": "Is 3 an even number?", "reference": "No, 3 is odd."},
    ]
    bad = {
        '{"prompt": "a", "reference": "b"}\n{"prompt": "a", "reference": \n': "line 2: not valid JSON",
        '{"prompt": "a", "reference": "b"}\n\n["a", "b"]\n': "line 3: expected a JSON object",
        '{"reference": "b"}\n': "line 1: needs a non-empty string 'prompt'",
        '{"prompt": "a", "reference": 3}\n': "line 1: needs a string 'reference'",
        "\n\n": "no examples",
    }
    for text, match in bad.items():
        p.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=match):
            load_golden_set(p)
    with pytest.raises(ValueError, match="cannot read"):
        load_golden_set(tmp_path / "missing.jsonl")


def test_evaluate_pair_with_a_fresh_adapter_is_identical_and_not_promoted(base_dir: str, tmp_path: Path) -> None:
    """A just-initialised LoRA adapter (B = 0) loads through peft and scores exactly like the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora).save_pretrained(str(tmp_path / "ad"))
    suites = {"heldout": _rows("A", 20, 11), "golden": _rows("B", 6, 12)}
    seen: list[tuple[int, int]] = []
    scores = evaluate_pair(base_dir, None, str(tmp_path / "ad"), suites, max_new_tokens=16, device="cpu",
                           progress=lambda d, t: seen.append((d, t)))  # fmt: skip
    assert set(scores) == {"heldout", "golden"}
    for ch, ca in scores.values():
        assert [x.output for x in ch] == [x.output for x in ca]
        assert [x.nll for x in ch] == pytest.approx([x.nll for x in ca], abs=1e-4)
    assert seen[-1] == (104, 104) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    d = decide(scores, GateSettings())
    assert not d.promote and "does not lie above" in d.reasons[0]


@pytest.mark.slow  # trains two LoRA adapters and evaluates both (~40 s on 2 cores)
def test_finetune_on_b_promotes_and_shuffled_candidate_is_rejected(base_dir: str, tmp_path: Path) -> None:
    from driftloop.retrain.trainer import train_lora
    from driftloop.settings.retrain import LoraSettings, TrainingSettings

    train = [{"prompt": p, "response": r} for p, r in sample_pairs("B", 400, seed=1)]
    cfg = TrainingSettings(epochs=4, learning_rate=3e-3, batch_size=16, max_length=96, seed=0)
    lora = LoraSettings(r=16, alpha=32, dropout=0.0)
    good = train_lora(base_dir, train, str(tmp_path / "good"), cfg, lora).adapter_dir
    heldout = _rows("B", 60, seed=99)
    spec = GateSettings(n_bootstrap=1000)
    scores = evaluate_pair(base_dir, None, good, {"heldout": heldout}, max_new_tokens=24, max_length=96)
    d = decide(scores, spec)
    assert d.promote, d.summary()
    assert d.comparison("perplexity").improvement > 0.5  # type: ignore[union-attr]

    responses = [r["response"] for r in train]
    random.Random(0).shuffle(responses)
    shuffled = [{"prompt": r["prompt"], "response": x} for r, x in zip(train, responses, strict=True)]
    bad = train_lora(base_dir, shuffled, str(tmp_path / "shuffled"), cfg).adapter_dir
    scores = evaluate_pair(base_dir, good, bad, {"heldout": heldout}, max_new_tokens=24, max_length=96)
    d = decide(scores, spec)
    assert not d.promote, d.summary()
    assert any(r.startswith(("perplexity on heldout", "rouge_l on heldout")) for r in d.reasons), d.reasons
