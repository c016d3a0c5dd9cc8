"""The MiniLM embedders: the ONNX export gives torch's vectors, is made once and checked, and keeps torch
out of the monitor process."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from driftloop.monitor import embeddings as emb

TEXTS = [
    "How do I reverse a linked list in Python?",
    "Sure! Here is a short poem about autumn leaves falling on a quiet street.",
    "I'm sorry, but I cannot help with that.",
    "",
    "x" * 3000,  # cut at max_tokens
    "Die Hauptstadt von Deutschland ist Berlin. 東京は日本の首都です。",
    "SELECT id, name FROM users WHERE created_at > now() - interval '1 day';",
    "1. Preheat the oven to 180 °C.\n2. Mix the flour and the butter.\n3. Bake for 25 minutes.",
] * 3


@pytest.fixture(scope="module")
def onnx_embedder(tmp_path_factory: pytest.TempPathFactory) -> emb.OnnxEmbedder:
    f = emb.export_onnx(emb.model_path(), tmp_path_factory.mktemp("cache"))
    return emb.OnnxEmbedder(f, emb.model_path())


@pytest.mark.parametrize("max_tokens", [16, 64, 128])
def test_onnx_vectors_equal_sentence_transformers(onnx_embedder: emb.OnnxEmbedder, max_tokens: int) -> None:
    """Same texts, both runtimes: the vectors agree to float rounding, order and padding included."""
    ref = emb.SentenceTransformersEmbedder(emb.model_path()).encode(TEXTS, max_tokens)
    got = onnx_embedder.encode(TEXTS, max_tokens)
    assert got.shape == ref.shape == (len(TEXTS), 384)
    assert np.abs(got - ref).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # a different cut gives different vectors for a long text: max_tokens is applied
    other = onnx_embedder.encode(["word " * 200], 16 if max_tokens != 16 else 128)
    assert np.abs(other - onnx_embedder.encode(["word " * 200], max_tokens)).max() > 1e-4


def test_export_is_made_once_and_recorded(tmp_path: Path) -> None:
    f1 = emb.export_onnx(emb.model_path(), tmp_path)
    meta = json.loads((f1.parent / "export.json").read_text())
    assert meta["source_digest"] == emb.source_digest(emb.model_path())
    assert f1.parent.name == f"{meta['source_digest']}-v{emb.EXPORT_VERSION}"
    assert meta["fused_ops"].get("Attention") == 6  # MiniLM-L6: one fused attention per layer
    assert meta["max_1_minus_cosine"] < emb.EXPORT_TOLERANCE
    mtime = f1.stat().st_mtime_ns
    f2 = emb.export_onnx(emb.model_path(), tmp_path)
    assert f2 == f1 and f2.stat().st_mtime_ns == mtime  # reused, not re-exported


def test_changed_model_gets_a_new_export_key(tmp_path: Path) -> None:
    src = tmp_path / "model"
    shutil.copytree(emb.model_path(), src)
    before = emb.source_digest(str(src))
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(cfg | {"driftloop_test": 1}))
    assert emb.source_digest(str(src)) != before


def test_a_broken_model_fails_export_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match=r"ONNX export of the embedding model failed \(exit 1\)"):
        emb.export_onnx(str(bad), tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("export.json"))
    with pytest.raises(ValueError, match="unknown embeddings runtime 'tf'"):
        emb.load_embedder(None, "tf")


def test_auto_falls_back_to_sentence_transformers_when_onnx_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    monkeypatch.setattr(emb, "onnx_available", lambda: False)
    monkeypatch.setattr(emb, "_models", {})
    # a library configured earlier in the suite may have disabled existing loggers (dictConfig's default)
    monkeypatch.setattr(emb.log, "disabled", False)
    with caplog.at_level(logging.WARNING, logger=emb.log.name):
        got = emb.load_embedder(None, "auto")
    assert got.runtime == "sentence-transformers"
    assert "onnxruntime is not installed" in caplog.text
    with pytest.raises(RuntimeError, match="onnxruntime is not installed"):
        emb.load_embedder(None, "onnx")


def test_a_window_check_keeps_torch_out_of_the_process(tmp_path: Path) -> None:
    """A real window check with embedding drift on (runtime auto), in its own process: the embedding features
    are computed and torch, transformers and sentence-transformers are never imported."""
    script = tmp_path / "check.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from driftloop.monitor.check import DriftCheckJob
from driftloop.store.db import create_engine_from_url, migrate
from tests.helpers import make_settings
from tests.monitor_helpers import insert_rows, interaction
url = "sqlite:///{tmp_path}/m.db"
migrate(url)
eng = create_engine_from_url(url)
insert_rows(eng, [interaction(i, response=f"answer number {{i}} about topic {{i % 7}}") for i in range(300)])
s = make_settings(url, monitor={{"window": {{"kind": "count", "size": 100}}, "min_window_size": 50,
                  "reference": {{"kind": "previous", "windows": 2}}, "reports": False, "text_drift": False,
                  "embeddings": {{"enabled": True, "sample": 40}}}})
res = DriftCheckJob(s, eng).run_once()[-1]
feats = sorted(f.feature for f in res.outcome.features if f.feature.endswith("_embedding"))
print(res.status, feats, sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules))
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, check=False)
    assert out.stdout.strip().splitlines()[-1:] == ["ok ['prompt_embedding', 'response_embedding'] []"], out.stderr
