r"""A learned quality estimator: calibrated P(positive) for every interaction of a window.

Features: the MiniLM embeddings of the prompt and of the response (``driftloop.monitor.embeddings``,
onnxruntime) and a few cheap ones (log lengths, their ratio, line structure, and the refusal / apology
flags of ``driftloop.monitor.features``). Model: an L2 logistic regression on standardised features;
its out-of-fold decision values (stratified k-fold) fit a Platt sigmoid, so the probabilities are
calibrated on records the regression did not see; the regression is then refitted on all labels.

Be realistic about what it can do (docs/quality.md): from a small embedding model it tells a weak
model's answers from a strong one's well, but ranks answers *within* one model barely better than
chance. Its value is as the machine score of PPI (which stays unbiased however poor the score is) and
in tracking shifts, not as a label.

Artifacts are plain data, never pickle: ``estimator.npz`` (scaler, coefficients, Platt parameters)
and ``estimator.json`` (a validated config with the feature spec, the embedding model's digest,
training size, label rate, CV AUC and Brier score). The version is a content hash of both, so the
same model always has the same version and any change to the file shows.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from driftloop.monitor.features import APOLOGY_RE, REFUSAL_RE
from driftloop.settings.estimator import EstimatorSettings

Embed: TypeAlias = Callable[[list[str]], np.ndarray]
Records: TypeAlias = pd.DataFrame | Sequence[Mapping[str, Any]]

CONFIG_FILE = "estimator.json"
ARRAYS_FILE = "estimator.npz"
CHEAP_FEATURES = (
    "log_prompt_chars", "log_response_chars", "log_length_ratio", "log_response_lines", "has_code",
    "is_refusal", "is_apology", "is_empty",
)  # fmt: skip
_ARRAYS = ("mean", "scale", "coef", "intercept", "platt")


class EstimatorMismatch(ValueError):
    """An artifact that does not fit this code or this embedding model (its predictions would be garbage)."""


class FeatureSpec(BaseModel):
    """What the feature vector is: a saved model is only valid with exactly the same spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec_version: int = 1
    text_fields: tuple[str, ...] = ("prompt", "response")
    cheap: tuple[str, ...] = CHEAP_FEATURES
    max_chars: int = 600
    max_tokens: int = 64


class EstimatorConfig(BaseModel):
    """``estimator.json``: everything needed to check an artifact before using it."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    version: str = Field(pattern=r"^[0-9a-f]{16}$")
    feature_spec: FeatureSpec
    embedding_digest: str = Field(min_length=1)
    embedding_dim: int = Field(ge=1)
    calibration: Literal["platt"] = "platt"
    regularization: float = Field(gt=0)
    n_train: int = Field(ge=1)
    label_rate: float = Field(ge=0, le=1)
    cv_auc: float | None = Field(None, ge=0, le=1)
    brier: float = Field(ge=0, le=1)


def texts_of(records: Records) -> tuple[list[str], list[str]]:
    """(prompts, responses) of records given as a frame or as mappings; missing text is ''."""
    if isinstance(records, pd.DataFrame):
        rows: list[Mapping[str, Any]] = records.to_dict("records")
    else:
        rows = list(records)
    prompts = [str(r.get("prompt") or "") for r in rows]
    responses = [str(r.get("response") or "") for r in rows]
    return prompts, responses


def cheap_features(prompts: list[str], responses: list[str]) -> np.ndarray:
    """The cheap features in ``CHEAP_FEATURES`` order (one row per record)."""
    out = np.empty((len(prompts), len(CHEAP_FEATURES)))
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        head = r[:600]
        out[i] = (
            math.log1p(len(p)),
            math.log1p(len(r)),
            math.log1p(len(r)) - math.log1p(len(p)),
            math.log1p(r.count("\n")),
            float("```" in r),
            float(bool(REFUSAL_RE.search(head))),
            float(bool(APOLOGY_RE.search(head))),
            float(not r.strip()),
        )
    return out


def default_embed(settings: EstimatorSettings, spec: FeatureSpec) -> tuple[Embed, str]:
    """MiniLM through the shared embedding cache, and the digest of the model it runs."""
    from driftloop.monitor.embeddings import EmbeddingCache, model_path, source_digest

    cache = EmbeddingCache(settings.embedding_model, max_chars=spec.max_chars, max_tokens=spec.max_tokens)
    return cache.encode, source_digest(model_path(settings.embedding_model))


class QualityEstimator:
    """``fit`` on labelled records, ``predict`` calibrated P(positive), ``save`` / ``load`` as plain data.

    ``embed`` and ``embedding_digest`` default to MiniLM (loaded on first use); a caller that already holds
    an embedding cache (a benchmark, a job) passes its ``encode`` and the model's digest.
    """

    def __init__(
        self, settings: EstimatorSettings | None = None, embed: Embed | None = None, embedding_digest: str | None = None
    ) -> None:
        if (embed is None) != (embedding_digest is None):
            raise ValueError("pass embed and embedding_digest together (the digest names the embed's model)")
        self.settings = settings or EstimatorSettings()
        self.spec = FeatureSpec()
        self._embed = embed
        self._digest = embedding_digest
        self._arrays: dict[str, np.ndarray] | None = None
        self.config: EstimatorConfig | None = None

    # features -------------------------------------------------------------------------------------------
    def _embedder(self) -> tuple[Embed, str]:
        if self._embed is None or self._digest is None:
            self._embed, self._digest = default_embed(self.settings, self.spec)
        return self._embed, self._digest

    def features(self, records: Records) -> np.ndarray:
        """The feature matrix: prompt embedding, response embedding, cheap features."""
        prompts, responses = texts_of(records)
        if not prompts:
            return np.empty((0, 0))
        embed, _ = self._embedder()
        parts = [np.asarray(embed(prompts), dtype=float), np.asarray(embed(responses), dtype=float)]
        return np.hstack([*parts, cheap_features(prompts, responses)])

    # training -------------------------------------------------------------------------------------------
    def fit(self, records: Records, labels: Sequence[float] | np.ndarray) -> QualityEstimator:
        """Train on ``labels`` (1 = positive, 0 = not; values in [0, 1] are thresholded at 0.5)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import brier_score_loss, roc_auc_score
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        y_raw = np.asarray(labels, dtype=float).ravel()
        if y_raw.size and (not np.all(np.isfinite(y_raw)) or y_raw.min() < 0 or y_raw.max() > 1):
            raise ValueError("labels must be values in [0, 1]")
        y = (y_raw >= 0.5).astype(int)
        x = self.features(records)
        if x.shape[0] != y.size:
            raise ValueError(f"records ({x.shape[0]}) and labels ({y.size}) differ in length")
        minority = int(min(y.sum(), y.size - y.sum()))
        if y.size < self.settings.min_labels or minority < 2:
            raise ValueError(
                f"too few labels to train: {y.size} with {minority} of the rarer class "
                f"(need {self.settings.min_labels} and at least 2 of each class)"
            )
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-9] = 1.0
        z = (x - mean) / scale
        c = self.settings.regularization
        folds = StratifiedKFold(min(self.settings.cv_folds, minority), shuffle=True, random_state=self.settings.seed)
        oof = cross_val_predict(LogisticRegression(C=c, max_iter=2000), z, y, cv=folds, method="decision_function")
        platt = LogisticRegression(C=1e6, max_iter=1000).fit(oof.reshape(-1, 1), y)
        a, b = float(platt.coef_[0, 0]), float(platt.intercept_[0])
        p_oof = _sigmoid(a * oof + b)
        model = LogisticRegression(C=c, max_iter=2000).fit(z, y)
        self._arrays = {
            "mean": mean, "scale": scale, "coef": model.coef_[0].astype(float),
            "intercept": np.array([float(model.intercept_[0])]), "platt": np.array([a, b]),
        }  # fmt: skip
        n_emb = (x.shape[1] - len(CHEAP_FEATURES)) // len(self.spec.text_fields)
        _, digest = self._embedder()
        fields = {
            "feature_spec": self.spec, "embedding_digest": digest, "embedding_dim": n_emb, "regularization": c,
            "n_train": int(y.size), "label_rate": float(y.mean()),
            "cv_auc": float(roc_auc_score(y, oof)), "brier": float(brier_score_loss(y, p_oof)),
        }  # fmt: skip
        self.config = EstimatorConfig(version=_content_hash(self._arrays, fields), **fields)
        return self

    @property
    def version(self) -> str:
        if self.config is None:
            raise RuntimeError("the estimator is not trained or loaded")
        return self.config.version

    # prediction -----------------------------------------------------------------------------------------
    def predict(self, records: Records) -> np.ndarray:
        """Calibrated P(positive) per record."""
        if self._arrays is None:
            raise RuntimeError("the estimator is not trained or loaded")
        x = self.features(records)
        if x.shape[0] == 0:
            return np.empty(0)
        arr = self._arrays
        if x.shape[1] != arr["coef"].size:
            raise EstimatorMismatch(f"feature width {x.shape[1]} differs from the model's {arr['coef'].size}")
        d = ((x - arr["mean"]) / arr["scale"]) @ arr["coef"] + arr["intercept"][0]
        a, b = arr["platt"]
        return _sigmoid(a * d + b)

    # persistence ----------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``estimator.npz`` and ``estimator.json`` into ``directory`` (created); returns it."""
        if self._arrays is None or self.config is None:
            raise RuntimeError("the estimator is not trained or loaded")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **self._arrays)  # type: ignore[arg-type]
        (d / ARRAYS_FILE).write_bytes(buf.getvalue())
        (d / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2) + "\n")
        return d

    @classmethod
    def load(
        cls,
        directory: str | Path,
        settings: EstimatorSettings | None = None,
        embed: Embed | None = None,
        embedding_digest: str | None = None,
    ) -> QualityEstimator:
        """Read an artifact and check it fits: format, feature spec, embedding model, content hash."""
        est = cls(settings, embed, embedding_digest)
        d = Path(directory)
        try:
            config = EstimatorConfig.model_validate_json((d / CONFIG_FILE).read_text())
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no estimator artifact in {d} ({CONFIG_FILE} is missing)") from e
        if config.feature_spec != est.spec:
            raise EstimatorMismatch(
                f"estimator {config.version} was trained with feature spec {config.feature_spec.model_dump()}, "
                f"this code computes {est.spec.model_dump()}: retrain it"
            )
        with np.load(d / ARRAYS_FILE, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k], dtype=float) for k in _ARRAYS}
        fields = config.model_dump(exclude={"version", "format", "calibration"})
        fields["feature_spec"] = config.feature_spec
        if _content_hash(arrays, fields) != config.version:
            raise EstimatorMismatch(f"estimator artifact in {d} does not match its version {config.version}")
        _, digest = est._embedder()
        if digest != config.embedding_digest:
            raise EstimatorMismatch(
                f"estimator {config.version} was trained on embedding model {config.embedding_digest}, "
                f"the configured one is {digest}: retrain it"
            )
        est._arrays, est.config = arrays, config
        return est


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(v, -500, 500))), dtype=float)


def _content_hash(arrays: Mapping[str, np.ndarray], fields: Mapping[str, Any]) -> str:
    """16 hex digits over the arrays' bytes and the config's fields (stable: sorted JSON, float64)."""
    h = hashlib.blake2b(digest_size=8)
    for k in _ARRAYS:
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k], dtype="<f8").tobytes())
    plain = {k: (v.model_dump() if isinstance(v, BaseModel) else v) for k, v in fields.items()}
    h.update(json.dumps(plain, sort_keys=True, default=list).encode())
    return h.hexdigest()
