"""A tiny, fully local language model and two synthetic traffic domains.

Used by the tests, the benchmarks and ``driftloop demo``: no hub is reachable, so the tokenizer is
trained here on the domains' own text and the model is a small GPT-2 built from a config.

Domain ``A`` is arithmetic questions, domain ``B`` is account-support questions. Each prompt has one
deterministic correct answer, so a model can learn a domain and ROUGE-L/perplexity show it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DOMAINS = ("A", "B")

_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
_ITEMS = ["invoice", "order", "ticket", "subscription", "refund", "delivery", "device", "license"]
_PLANS = ["basic", "plus", "team", "enterprise"]


def _domain_a(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    kind = rng.randrange(4)
    if kind == 0:
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == 1:
        hi, lo = max(a, b), min(a, b)
        return f"What is {hi} minus {lo}?", f"{hi} minus {lo} is {hi - lo}."
    if kind == 2:
        x, y = a % 13, b % 13
        return f"Compute {x} times {y}.", f"{x} times {y} equals {x * y}."
    return f"Is {a} an even number?", f"{'Yes' if a % 2 == 0 else 'No'}, {a} is {'even' if a % 2 == 0 else 'odd'}."


def _domain_b(rng: random.Random) -> tuple[str, str]:
    name, item, plan = rng.choice(_NAMES), rng.choice(_ITEMS), rng.choice(_PLANS)
    num = rng.randint(1000, 9999)
    kind = rng.randrange(4)
    if kind == 0:
        return (f"How do I reset the password for account {num}?",
                f"Open settings, choose security and press reset for account {num}.")  # fmt: skip
    if kind == 1:
        return (f"Where is my {item} {num}?",
                f"Your {item} {num} is on its way; track it under orders.")  # fmt: skip
    if kind == 2:
        return (f"Can {name} upgrade to the {plan} plan?",
                f"Yes, {name} can upgrade to the {plan} plan from the billing page.")  # fmt: skip
    return (f"Please cancel my {item} {num}.",
            f"I have cancelled your {item} {num}; a confirmation email is on its way.")  # fmt: skip


def sample_pairs(domain: str, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, correct answer) pairs of ``domain`` (``"A"`` or ``"B"``), deterministic per seed."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; use one of {DOMAINS}")
    rng = random.Random(f"{domain}-{seed}")
    gen = _domain_a if domain == "A" else _domain_b
    return [gen(rng) for _ in range(n)]


def _corpus(n: int = 3000) -> Iterator[str]:
    for d in DOMAINS:
        for p, r in sample_pairs(d, n, seed=12345):
            yield f"{p}\n{r}"


def build_tokenizer(out_dir: str | Path, vocab_size: int = 600) -> Any:
    """Train a byte-level BPE tokenizer on both domains; save it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(_corpus()), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=["<|endoftext|>", "<|pad|>"])  # fmt: skip
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", pad_token="<|pad|>")  # fmt: skip
    tok.save_pretrained(str(out_dir))
    return tok


def build_model(out_dir: str | Path, *, n_layer: int = 2, n_embd: int = 128, n_head: int = 4,
                seed: int = 0) -> Path:  # fmt: skip
    """A randomly initialised GPT-2 with a locally trained tokenizer, saved to ``out_dir``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id)  # fmt: skip
    GPT2LMHeadModel(cfg).save_pretrained(str(out))
    return out


def pretrain_full(model_dir: str | Path, pairs: list[tuple[str, str]], *, epochs: int = 3, lr: float = 3e-3,
                  batch_size: int = 32, seed: int = 0, background: list[str] | None = None) -> dict[str, float]:  # fmt: skip
    """Train all weights of the model in ``model_dir`` on ``pairs`` (the "base model" of a domain); save in place.

    A plain loop on purpose: this stands in for whatever produced the user's base model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    texts = [f"{p}\n{r}{tok.eos_token}" for p, r in pairs] + [f"{t}{tok.eos_token}" for t in background or []]
    rng = random.Random(seed)
    loss_v = float("nan")
    steps = 0
    for _ in range(epochs):
        rng.shuffle(texts)
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=128)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            out = model(**enc, labels=labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            loss_v = float(out.loss.detach())
            steps += 1
    model.save_pretrained(str(model_dir))
    (Path(model_dir) / "driftloop-base.json").write_text(
        json.dumps({"trained_on": len(pairs), "epochs": epochs, "final_loss": loss_v}), encoding="utf-8")  # fmt: skip
    return {"steps": steps, "final_loss": loss_v}


def build_base_model(out_dir: str | Path, domain: str = "A", n: int = 1500, epochs: int = 3,
                     seed: int = 0) -> Path:  # fmt: skip
    """Tokenizer + tiny GPT-2 + brief full training on ``domain``: the champion a test starts from."""
    out = build_model(out_dir, seed=seed)
    # "General knowledge": the other domain's sentences on their own (never a question with its answer),
    # so the base knows the words of every domain but answers only ``domain``'s questions.
    other = [d for d in DOMAINS if d != domain]
    background = [t for d in other for p, r in sample_pairs(d, n // 2, seed=seed + 1000) for t in (p, r)]
    pretrain_full(out, sample_pairs(domain, n, seed=seed), epochs=epochs, seed=seed, background=background)
    return out
