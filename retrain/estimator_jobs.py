r"""The learned quality estimator in the service: train it from the labels, version it, score every interaction.

``train_estimator`` gathers the workload's labelled interactions, fits a
:class:`~driftloop.monitor.estimator.QualityEstimator`, saves its plain-data artifact under
``<retrain artifacts>/estimators/<model_id>/<version>/`` and registers it in the model registry as a version
of the family ``estimator:<model_id>``. It becomes the family's ``champion`` when its cross-validated AUC is
not lower than the current champion's (or when there is none); either way an event says why.

Labels, newest first per request: a reviewer's ``human_review`` score (every slice: training, unlike the
estimate, does not need a uniform sample) and else the user's feedback (``feedback_latest``). A reviewer's
label wins for the same request because user feedback is a biased sample (people rate what annoyed or
delighted them) and a noisy one; the reviewer read the answer against a rubric. Positive means
``value >= feedback.positive_threshold`` for both (the one definition).

``score_windows`` loads the champion and writes ``estimator:<version>`` scores (``<version>`` is the
artifact's content hash, so a score names exactly the model that produced it) for every recent interaction
of the workload that this version has not scored yet, newest first: the windows the drift check is about
to check are scored before old traffic. ``record_scores`` makes a rerun store nothing twice. The drift
check calls it too, just before it checks (``driftloop.jobs.drift_check_once``), so a window's PPI++
estimate uses the estimator whenever one is enabled.

Both isolate bad records: one that cannot be embedded or stored is counted and skipped, never fatal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, or_, select

from driftloop.monitor.estimator import QualityEstimator
from driftloop.retrain.registry import ModelRegistry, ModelVersion
from driftloop.retrain.runner import artifacts_dir
from driftloop.settings import Settings
from driftloop.store.feedback import feedback_latest
from driftloop.store.models import interactions
from driftloop.store.scores import Score, content_key, positive_label, record_scores, scores

log = logging.getLogger("driftloop.retrain.estimator_jobs")

FAMILY_PREFIX = "estimator:"
SOURCE_PREFIX = "estimator:"
HUMAN_SOURCE = "human_review"
USER_SOURCE = "user"
PROMOTED = "estimator_promoted"  # not "promoted": the post-promotion watch is for served models
NOT_PROMOTED = "estimator_not_promoted"
ACTOR = "estimator_train"


class EstimatorRefused(Exception):
    """Training or scoring cannot be done now (too few labels, one class, no champion); says why and what to do."""


def family_of(model_id: str) -> str:
    """The registry family of a workload's estimators."""
    if not model_id:
        raise ValueError("model_id must not be empty")
    return FAMILY_PREFIX + model_id


@dataclass
class LabelSet:
    """A workload's labelled interactions: text, label (0/1) and where each label came from."""

    request_ids: list[str] = field(default_factory=list)
    records: list[dict[str, str]] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sources:
            out[s] = out.get(s, 0) + 1
        return out


def _time_filter(since: datetime | None, until: datetime | None) -> list[Any]:
    cond = []
    if since is not None:
        cond.append(interactions.c.ts >= since)
    if until is not None:
        cond.append(interactions.c.ts < until)
    return cond


def gather_labels(conn: Connection, settings: Settings, model_id: str, *, since: datetime | None = None,
                  until: datetime | None = None) -> LabelSet:  # fmt: skip
    """The labelled interactions of ``model_id`` with ``since <= ts < until``: human review over user feedback."""
    est, threshold = settings.quality.estimator, settings.feedback.positive_threshold
    name = settings.quality.estimate.score_name
    it, sc = interactions.c, scores.c
    cond = [it.model_id == model_id, *_time_filter(since, until)]
    value: dict[str, tuple[float, str]] = {}
    # user feedback first, so a reviewer's label for the same request overwrites it
    q_user = (select(feedback_latest.c.request_id, feedback_latest.c.score)
              .join(interactions, it.request_id == feedback_latest.c.request_id)
              .where(*cond, feedback_latest.c.score.is_not(None)))  # fmt: skip
    for rid, v in conn.execute(q_user):
        value[rid] = (float(v), USER_SOURCE)
    q_human = (select(sc.request_id, sc.value).join(interactions, it.request_id == sc.request_id)
               .where(*cond, sc.source == HUMAN_SOURCE, sc.name == name).order_by(sc.ts, sc.id))  # fmt: skip
    for rid, v in conn.execute(q_human):  # oldest first: the newest review of a request wins
        value[rid] = (float(v), HUMAN_SOURCE)
    if not value:
        return LabelSet()
    rows: list[Any] = []
    wanted = sorted(value)
    for i in range(0, len(wanted), 5000):
        rows.extend(conn.execute(select(it.request_id, it.prompt, it.response, it.ts)
                                 .where(it.request_id.in_(wanted[i : i + 5000]))).all())  # fmt: skip
    rows.sort(key=lambda r: (r.ts, r.request_id), reverse=True)  # the newest labels when capped
    out = LabelSet()
    skipped = 0
    for r in rows[: est.train_max_labels]:
        v, src = value[r.request_id]
        if not math.isfinite(v):
            skipped += 1
            continue
        out.request_ids.append(r.request_id)
        out.records.append({"prompt": r.prompt or "", "response": r.response or ""})
        out.labels.append(positive_label(v, threshold))
        out.sources.append(src)
    if skipped:
        log.warning("estimator %s: %d label(s) with a non-finite value skipped", model_id, skipped)
    return out


def _embedding_name(settings: Settings) -> str:
    m = settings.quality.estimator.embedding_model
    return Path(m).name if m else "all-MiniLM-L6-v2"


def _better_or_equal(new: dict[str, Any] | None, old: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether ``new`` may replace ``old`` as champion: its CV AUC is not lower (ranking is what PPI uses;
    both are Platt-calibrated out of fold, so calibration is not the tie-breaker)."""
    if old is None:
        return True, "no champion yet"
    a_new, a_old = (new or {}).get("cv_auc"), (old or {}).get("cv_auc")
    if a_old is None:
        return True, "the champion has no CV AUC"
    if a_new is None:
        return False, f"no CV AUC, the champion has {a_old:.4f}"
    if a_new >= a_old:
        return True, f"CV AUC {a_new:.4f} >= champion's {a_old:.4f}"
    return False, f"CV AUC {a_new:.4f} < champion's {a_old:.4f}"


def train_estimator(settings: Settings, engine: Engine, model_id: str, *, since: datetime | None = None,
                    until: datetime | None = None, actor: str = ACTOR) -> ModelVersion:  # fmt: skip
    """Train, save, register and (if not worse) make champion an estimator of ``model_id``.

    Raises :class:`EstimatorRefused` when there are too few labels or only one class; nothing is registered
    then. Retraining on exactly the same labels gives the same content version: the registered one is
    returned and nothing new is added.
    """
    cfg = settings.quality.estimator
    fam = family_of(model_id)
    with engine.connect() as conn:
        ls = gather_labels(conn, settings, model_id, since=since, until=until)
    n, pos = len(ls.labels), int(sum(ls.labels))
    minority = min(pos, n - pos)
    if n < cfg.min_labels:
        raise EstimatorRefused(
            f"estimator for {model_id!r}: {n} labelled interaction(s) {ls.counts() or ''}, need "
            f"quality.estimator.min_labels={cfg.min_labels} (label more in the review queue); nothing registered"
        )
    if minority < 2:
        raise EstimatorRefused(
            f"estimator for {model_id!r}: {pos} positive and {n - pos} negative label(s); both classes need "
            "at least 2 to learn anything; nothing registered"
        )
    est = QualityEstimator(cfg)
    try:
        est.fit(ls.records, ls.labels)
    except ValueError as e:  # the estimator's own refusal (e.g. too few of a class for its folds)
        raise EstimatorRefused(f"estimator for {model_id!r}: {e}; nothing registered") from e
    c = est.config
    assert c is not None
    reg = ModelRegistry(engine)
    for v in reg.versions(fam):
        if (v.config or {}).get("estimator_version") == c.version:
            log.info("%s: estimator %s is already registered as %s", fam, c.version, v.version)
            return v
    where = est.save(artifacts_dir(settings) / "estimators" / _safe(model_id) / c.version)
    metrics = {"n_train": c.n_train, "label_rate": c.label_rate, "cv_auc": c.cv_auc, "brier": c.brier,
               "sources": ls.counts()}  # fmt: skip
    config = {"estimator_version": c.version, "embedding_digest": c.embedding_digest,
              "embedding_dim": c.embedding_dim, "regularization": c.regularization, "cv_folds": cfg.cv_folds,
              "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
              **metrics}  # fmt: skip
    champ = reg.champion(fam)
    v = reg.register(fam, f"{_embedding_name(settings)}@{c.embedding_digest}"[:256], adapter_path=str(where),
                     actor=actor, reason=f"estimator trained on {n} label(s)", config=config, metrics=metrics,
                     parent_id=champ.id if champ else None)  # fmt: skip
    ok, why = _better_or_equal(metrics, champ.metrics if champ else None)
    if ok:
        v = reg.promote(v.id, [], actor=actor, reason=f"estimator champion: {why}", action=PROMOTED)
    else:
        v = reg.set_status(v.id, v.status, actor, f"champion {champ.version if champ else '-'} kept: {why}",
                           action=NOT_PROMOTED, details=metrics)  # fmt: skip
    log.info("%s %s (estimator %s, %d labels, CV AUC %s): %s", fam, v.version, c.version, n, c.cv_auc,
             "champion" if ok else f"not champion ({why})")  # fmt: skip
    return v


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)[:120] or "_"


@dataclass
class ScoreStats:
    """What one scoring run did."""

    version: str = ""
    scored: int = 0
    errors: int = 0
    batches: int = 0


def load_champion(settings: Settings, engine: Engine, model_id: str) -> tuple[ModelVersion, QualityEstimator]:
    """The family's champion and its loaded estimator; EstimatorRefused when there is none."""
    fam = family_of(model_id)
    champ = ModelRegistry(engine).champion(fam)
    if champ is None or not champ.adapter_path:
        raise EstimatorRefused(f"no estimator champion for {model_id!r}: run `driftloop quality estimator train "
                               f"--model {model_id}` first")  # fmt: skip
    return champ, QualityEstimator.load(champ.adapter_path, settings.quality.estimator)


def score_windows(settings: Settings, engine: Engine, model_id: str, *, now: datetime | None = None) -> int:
    """Score ``model_id``'s unscored recent interactions with the champion estimator; returns scores added."""
    return score_interactions(settings, engine, model_id, now=now).scored


def score_interactions(settings: Settings, engine: Engine, model_id: str, *,
                       now: datetime | None = None) -> ScoreStats:  # fmt: skip
    """:func:`score_windows` with its counts (scored, errors, batches)."""
    cfg = settings.quality.estimator
    name = settings.quality.estimate.score_name
    _, est = load_champion(settings, engine, model_id)
    version = est.version
    source = SOURCE_PREFIX + version
    since = (now or datetime.now(UTC)) - timedelta(days=cfg.score_lookback_days)
    it, sc = interactions.c, scores.c
    unscored = ~exists().where(sc.request_id == it.request_id, sc.source == source, sc.name == name)
    st = ScoreStats(version=version)
    cursor: tuple[datetime, int] | None = None
    while st.scored + st.errors < cfg.score_max_per_run:
        limit = min(cfg.score_batch, cfg.score_max_per_run - st.scored - st.errors)
        q = (select(it.id, it.request_id, it.ts, it.prompt, it.response)
             .where(it.model_id == model_id, it.ts >= since, unscored)
             .order_by(it.ts.desc(), it.id.desc()).limit(limit))  # fmt: skip
        if cursor is not None:  # keyset: a record that failed is not read again
            q = q.where(or_(it.ts < cursor[0], and_(it.ts == cursor[0], it.id < cursor[1])))
        with engine.connect() as conn:
            rows = conn.execute(q).all()
        if not rows:
            break
        cursor = (rows[-1].ts, int(rows[-1].id))
        st.batches += 1
        added, errors = _score_batch(engine, est, rows, source, name, version)
        st.scored += added
        st.errors += errors
        if len(rows) < limit:
            break
    if st.errors:
        log.warning("estimator %s on %s: %d interaction(s) could not be scored", version, model_id, st.errors)
    return st


def _score_batch(engine: Engine, est: QualityEstimator, rows: Sequence[Any], source: str, name: str,
                 version: str) -> tuple[int, int]:  # fmt: skip
    """Predict and store one batch; on failure, record by record so one bad record costs only itself."""
    records = [{"prompt": r.prompt or "", "response": r.response or ""} for r in rows]
    try:
        p = est.predict(records)
        items = [_score(r, float(v), source, name, version) for r, v in zip(rows, p, strict=True)]
        with engine.begin() as conn:
            return record_scores(conn, items), 0
    except Exception:
        log.exception("estimator %s: a batch of %d failed; scoring its records one by one", version, len(rows))
    added = errors = 0
    for r, rec in zip(rows, records, strict=True):
        try:
            v = float(est.predict([rec])[0])
            with engine.begin() as conn:
                added += record_scores(conn, [_score(r, v, source, name, version)])
        except Exception as e:
            errors += 1
            log.warning("estimator %s: interaction %s not scored: %s", version, r.request_id, e)
    return added, errors


def _score(r: Any, p: float, source: str, name: str, version: str) -> Score:
    if not math.isfinite(p):
        raise ValueError(f"prediction {p!r} is not finite")
    return Score(r.request_id, source, min(1.0, max(0.0, p)), name=name,
                 content_key=content_key(r.prompt, r.response, version), event=version)  # fmt: skip


def workloads(engine: Engine, settings: Settings, *, with_champion: bool) -> list[str]:
    """The model ids the jobs work on: every workload with traffic (and, for scoring, an estimator champion)."""
    from driftloop.monitor.windows import models

    with engine.connect() as conn:
        ids = list(models(conn))
    if not with_champion:
        return ids
    fams = set(ModelRegistry(engine).families())
    return [m for m in ids if family_of(m) in fams]


# -- the gate: the estimator as an extra metric ----------------------------------------------------------------
def suite_prompts(eval_path: str | Path, golden_path: str | Path | None) -> dict[str, list[str]]:
    """The prompts of the gate's suites in the worker's order: ``heldout`` (the snapshot's eval.jsonl) and
    ``golden`` (the pinned set; blank lines skipped, as ``retrain.evaluate.load_golden_set`` does)."""
    import json

    def read(p: str | Path) -> list[str]:
        lines = Path(p).read_text(encoding="utf-8").splitlines()
        return [str(json.loads(line).get("prompt") or "") for line in lines if line.strip()]

    out = {"heldout": read(eval_path)}
    if golden_path:
        out["golden"] = read(golden_path)
    return out


def add_estimates(settings: Settings, engine: Engine, model_id: str, suites: dict[str, tuple[list[Any], list[Any]]],
                  prompts: dict[str, list[str]]) -> tuple[dict[str, tuple[list[Any], list[Any]]], list[str]]:  # fmt: skip
    """``suites`` (gate ``ExampleScore`` lists) with ``estimate`` = the workload's estimator champion's
    P(positive) of each generated answer, for champion and candidate alike; and notes on what was not scored.

    One estimator scores both sides, so its bias cancels in the paired difference; a suite it cannot score
    (no champion, no generated answers, prompts that do not line up) keeps no estimate and the gate says so.
    """
    from dataclasses import replace

    try:
        _, est = load_champion(settings, engine, model_id)
    except Exception as e:  # no champion, or an artifact that does not fit: the gate goes on without it
        return suites, [f"estimate: not computed ({e})"]
    out = dict(suites)
    notes: list[str] = []
    for name, (champ, cand) in suites.items():
        ps = prompts.get(name)
        if ps is None or len(ps) != len(champ) or len(champ) != len(cand):
            notes.append(f"estimate on {name}: not computed (the suite's prompts do not line up with its scores)")
            continue
        if any(x.output is None for x in [*champ, *cand]):
            notes.append(f"estimate on {name}: not computed (no generated answers; set gate.generate)")
            continue
        recs = [{"prompt": p, "response": x.output} for side in (champ, cand) for p, x in zip(ps, side, strict=True)]
        try:
            p = est.predict(recs)
        except Exception as e:
            notes.append(f"estimate on {name}: not computed ({e})")
            continue
        n = len(champ)
        out[name] = ([replace(x, estimate=float(v)) for x, v in zip(champ, p[:n], strict=True)],
                     [replace(x, estimate=float(v)) for x, v in zip(cand, p[n:], strict=True)])  # fmt: skip
    return out, notes
