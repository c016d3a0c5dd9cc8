"""The learned quality estimator: training, calibration, and the plain-data artifact round trip."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from driftloop.monitor.estimator import CONFIG_FILE, EstimatorMismatch, QualityEstimator
from driftloop.settings.estimator import EstimatorSettings

WORDS = [f"w{i}" for i in range(40)]
DIM = 32


def bag_embed(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in for MiniLM: hashed bag of words, unit length (unit logic only)."""
    out = np.zeros((len(texts), DIM))
    for i, t in enumerate(texts):
        for w in t.split():
            out[i, int(hashlib.blake2b(w.encode(), digest_size=2).hexdigest(), 16) % DIM] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms == 0, 1, norms)


def synthetic(n: int, seed: int) -> tuple[list[dict[str, str]], np.ndarray]:
    """Records whose response words shift P(positive): 'w0'..'w4' help, 'w5'..'w9' hurt."""
    rng = np.random.default_rng(seed)
    records, labels = [], []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=6))
        logit = -0.5 + sum(1.2 for w in words if w in WORDS[:5]) - sum(1.2 for w in words if w in WORDS[5:10])
        labels.append(float(rng.random() < 1 / (1 + np.exp(-logit))))
        records.append({"prompt": f"question {rng.integers(50)}", "response": " ".join(words)})
    return records, np.asarray(labels)


def _estimator(digest: str = "bag-v1") -> QualityEstimator:
    return QualityEstimator(EstimatorSettings(regularization=1.0), embed=bag_embed, embedding_digest=digest)


def test_calibrated_and_informative_on_synthetic_data() -> None:
    train, y_train = synthetic(800, seed=1)
    test, y_test = synthetic(800, seed=2)
    est = _estimator().fit(train, y_train)
    p = est.predict(test)
    assert p.shape == (800,) and np.all((p >= 0) & (p <= 1))
    assert abs(p.mean() - y_test.mean()) < 0.04  # calibrated in the large
    hi, lo = p > np.median(p), p <= np.median(p)
    assert y_test[hi].mean() > y_test[lo].mean() + 0.15  # and it ranks
    cfg = est.config
    assert cfg is not None and cfg.n_train == 800 and cfg.cv_auc is not None and cfg.cv_auc > 0.65
    assert cfg.label_rate == pytest.approx(y_train.mean())
    assert 0 < cfg.brier < 0.25


def test_save_load_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    train, y = synthetic(300, seed=3)
    est = _estimator().fit(train, y)
    est.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["estimator.json", "estimator.npz"]
    loaded = QualityEstimator.load(tmp_path / "m", embed=bag_embed, embedding_digest="bag-v1")
    test, _ = synthetic(100, seed=4)
    np.testing.assert_array_equal(loaded.predict(test), est.predict(test))
    assert loaded.version == est.version
    assert len(est.version) == 16
    # the version is a content hash: the same data gives the same version, other labels another one
    assert _estimator().fit(train, y).version == est.version
    assert _estimator().fit(train, 1 - y).version != est.version


def test_load_refuses_another_embedding_model(tmp_path: Path) -> None:
    train, y = synthetic(200, seed=5)
    _estimator().fit(train, y).save(tmp_path)
    with pytest.raises(EstimatorMismatch, match="embedding model bag-v1"):
        QualityEstimator.load(tmp_path, embed=bag_embed, embedding_digest="other-model")


def test_load_refuses_another_feature_spec_and_a_tampered_artifact(tmp_path: Path) -> None:
    train, y = synthetic(200, seed=6)
    _estimator().fit(train, y).save(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    spec_changed = dict(cfg, feature_spec=dict(cfg["feature_spec"], max_tokens=128))
    (tmp_path / CONFIG_FILE).write_text(json.dumps(spec_changed))
    with pytest.raises(EstimatorMismatch, match="feature spec"):
        QualityEstimator.load(tmp_path, embed=bag_embed, embedding_digest="bag-v1")
    (tmp_path / CONFIG_FILE).write_text(json.dumps(dict(cfg, n_train=cfg["n_train"] + 1)))
    with pytest.raises(EstimatorMismatch, match="does not match its version"):
        QualityEstimator.load(tmp_path, embed=bag_embed, embedding_digest="bag-v1")
    (tmp_path / CONFIG_FILE).write_text(json.dumps(dict(cfg, unknown=1)))
    with pytest.raises(ValueError, match="unknown"):
        QualityEstimator.load(tmp_path, embed=bag_embed, embedding_digest="bag-v1")


def test_artifact_holds_no_pickle(tmp_path: Path) -> None:
    train, y = synthetic(200, seed=7)
    _estimator().fit(train, y).save(tmp_path)
    with np.load(tmp_path / "estimator.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype == np.float64 for k in npz.files)


def test_too_few_labels_or_one_class_is_refused() -> None:
    train, y = synthetic(200, seed=8)
    with pytest.raises(ValueError, match="too few labels"):
        _estimator().fit(train[:20], y[:20])
    with pytest.raises(ValueError, match="too few labels"):
        _estimator().fit(train, np.zeros(200))
    with pytest.raises(ValueError, match="differ in length"):
        _estimator().fit(train, y[:100])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _estimator().fit(train, y * 2)
    with pytest.raises(RuntimeError, match="not trained"):
        _estimator().predict(train)


def test_embed_and_digest_come_together() -> None:
    with pytest.raises(ValueError, match="together"):
        QualityEstimator(embed=bag_embed)


@pytest.mark.slow
def test_real_minilm_on_alpacaeval_round_trip(tmp_path: Path) -> None:
    """The default embedder (the shipped MiniLM on onnxruntime): trained, saved, loaded with its digest."""
    from driftloop.monitor.embeddings import model_path, source_digest
    from tests.alpaca import load

    strong, weak = load("FuseChat-Llama-3.2-1B-Instruct")[:60], load("alpaca-7b")[:60]
    records = [{"prompt": r["instruction"], "response": r["output"]} for r in strong + weak]
    labels = np.r_[np.ones(60), np.zeros(60)]  # which model answered: the easy task
    est = QualityEstimator(EstimatorSettings(min_labels=40)).fit(records, labels)
    assert est.config is not None and est.config.embedding_digest == source_digest(model_path(None))
    assert est.config.embedding_dim == 384 and est.config.cv_auc is not None and est.config.cv_auc > 0.8
    est.save(tmp_path)
    again = QualityEstimator.load(tmp_path)
    np.testing.assert_allclose(again.predict(records[:10]), est.predict(records[:10]), rtol=0, atol=1e-12)
