"""A tiny Llama model written as a GGUF file, the way llama.cpp's converter writes one, for import tests.

CI must not download (or dequantize) a 93 MB model in every test, so the tests of ``driftloop models import``
build a two-layer Llama from a config, with the byte-level BPE tokenizer of :mod:`retrain.toy`, and write it
with the ``gguf`` package: F32 tensors (so the import must reproduce the logits exactly), the tokenizer as
``tokenizer.ggml.*`` metadata (model ``gpt2``: tokens, merges, token types) and a chat template.

What makes a file llama.cpp-shaped (and what transformers' GGUF loader undoes): tensor names from
``gguf.get_tensor_name_map``, and Q/K projection rows permuted for llama.cpp's rotary layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}<|pad|>{{ message['role'] }}\n{{ message['content'] }}<|endoftext|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|pad|>assistant\n{% endif %}"
)


def _permute(w: Any, n_head: int, n_head_kv: int | None) -> Any:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py): HF rotary halves -> interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def build_tiny_llama(out_dir: Path, *, seed: int = 0) -> Path:
    """A randomly initialised 2-layer Llama (GQA: 4 heads, 2 KV heads) with the toy tokenizer, saved as HF files."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from driftloop.retrain.toy import build_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out_dir, vocab_size=400)
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # RMSNorm weights start at 1: make them differ so a mix-up of norms shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(out_dir))
    return out_dir


def write_gguf(hf_dir: Path, path: Path, *, name: str = "tiny-llama", chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """Write the Llama model in ``hf_dir`` (from :func:`build_tiny_llama`) to ``path`` as an F32 GGUF."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import LlamaConfig

    cfg = LlamaConfig.from_pretrained(str(hf_dir))
    tj = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    for added in tj.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "token ids must be dense"
    specials = {a["content"] for a in tj.get("added_tokens", []) if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(int(cfg.num_key_value_heads or cfg.num_attention_heads))
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(dict(cfg.rope_parameters or {})["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|endoftext|>"])
    w.add_eos_token_id(vocab["<|endoftext|>"])
    w.add_pad_token_id(vocab["<|pad|>"])
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, t in sorted(load_file(str(hf_dir / "model.safetensors")).items()):
        g_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if g_name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name}")
        data = t.astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, cfg.num_attention_heads, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, cfg.num_attention_heads, cfg.num_key_value_heads)
        w.add_tensor(g_name, np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
