"""Detection on real AlpacaEval traffic, checked in-process (rows written with SQLAlchemy Core).

(a) quality drift, same prompts: gpt4_1106_preview answers, then alpaca-7b answers (``win >= 0.5``
    is positive feedback) -> caught within 2 windows by the metrics a sensible rule reads;
(b) input drift, same model: prompts from selfinstruct+helpful_base, then koala+vicuna ->
    prompt text / prompt embedding drift;
(c) no drift: random resamples of one model's records -> the dataset verdict stays quiet in
    >= 95 % of >= 40 windows.
"""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from driftloop.settings import Settings, load_settings
from driftloop.store.db import create_engine_from_url
from monitor.check import DriftCheckJob
from monitor.tables import drift_results, monitor_windows, window_metrics
from tests.alpaca import load
from tests.monitor_helpers import T0, insert_rows, interaction

pytestmark = pytest.mark.slow


def _settings(url: str, tmp_path: Path, size: int, **extra: object) -> Settings:
    mon: dict[str, object] = {"window": {"kind": "count", "size": size}, "reference": {"kind": "previous", "windows": 2},
                              "min_window_size": 100, "reports": False, "reports_dir": str(tmp_path / "reports"),
                              "embeddings": {"sample": 100}, "language_sample": 100}  # fmt: skip
    mon.update(extra)
    return load_settings(None, database={"url": url}, monitor=mon)


def _store(engine: Engine, rows: list[dict], model: str, prefix: str, seed: int) -> None:
    rng = random.Random(seed)
    recs, scores = [], {}
    for i, r in enumerate(rows):
        rec = interaction(i, model=model, prefix=prefix, prompt=r["instruction"], response=r["output"],
                          version=r["generator"], latency=round(rng.lognormvariate(6.5, 0.3), 1),
                          meta={"dataset": r["dataset"]}, ts=T0 + timedelta(seconds=i))  # fmt: skip
        rec["tokens_in"], rec["tokens_out"] = len(r["instruction"].split()), len(r["output"].split())
        recs.append(rec)
        scores[rec["request_id"]] = 1.0 if r["win"] >= 0.5 else 0.0
    insert_rows(engine, recs, scores)


def _metrics(engine: Engine, model: str) -> dict[int, dict[str, float | None]]:
    q = (select(monitor_windows.c.window_index, window_metrics.c.name, window_metrics.c.value)
         .join(window_metrics, window_metrics.c.window_id == monitor_windows.c.id)
         .where(monitor_windows.c.model_id == model))  # fmt: skip
    out: dict[int, dict[str, float | None]] = {}
    with engine.connect() as c:
        for idx, name, value in c.execute(q):
            out.setdefault(int(idx), {})[name] = value
    return out


def _drifted_features(engine: Engine, model: str) -> dict[int, set[str]]:
    q = (select(monitor_windows.c.window_index, drift_results.c.feature)
         .join(drift_results, drift_results.c.window_id == monitor_windows.c.id)
         .where(monitor_windows.c.model_id == model, drift_results.c.drifted))  # fmt: skip
    out: dict[int, set[str]] = {}
    with engine.connect() as c:
        for idx, feat in c.execute(q):
            out.setdefault(int(idx), set()).add(feat)
    return out


def test_quality_and_input_drift_detected(pg_url: str, tmp_path: Path) -> None:
    size = 200
    rng = random.Random(0)
    gpt4, weak = load("gpt4_1106_preview"), {r["instruction"]: r for r in load("alpaca-7b")}
    order = list(range(len(gpt4)))
    rng.shuffle(order)
    switch_a = 4  # windows 0-3 strong model, 4-5 the weak one on the same prompts
    a_rows = [gpt4[i] for i in order[: switch_a * size]] + [weak[gpt4[i]["instruction"]] for i in order[: 2 * size]]
    before = [r for r in gpt4 if r["dataset"] in ("selfinstruct", "helpful_base")]
    after = [r for r in gpt4 if r["dataset"] in ("koala", "vicuna")]
    switch_b = 3
    b_rows = [rng.choice(before) for _ in range(switch_b * size)] + [rng.choice(after) for _ in range(2 * size)]
    eng = create_engine_from_url(pg_url)
    _store(eng, a_rows, "quality", "qa", 1)
    _store(eng, b_rows, "input", "in", 2)
    results = DriftCheckJob(_settings(pg_url, tmp_path, size), eng).run_once()
    assert [r.status for r in results].count("ok") == 5 + 4

    # (a) the rule an operator would write: positive feedback rate below 0.3, or dataset drift
    ma = _metrics(eng, "quality")
    fired_a = [i for i in sorted(ma) if (ma[i].get("quality.feedback_positive_rate") or 1) < 0.3
               or ma[i].get("drift.drifted") == 1]  # fmt: skip
    assert fired_a, ma
    assert all(i >= switch_a for i in fired_a), f"alarms before the switch: {fired_a}"
    delay_a = fired_a[0] - switch_a + 1
    assert delay_a <= 2

    # (b) prompts drift, the model does not
    db = _drifted_features(eng, "input")
    hit_b = [i for i in sorted(db) if {"prompt", "prompt_embedding"} & db[i]]
    assert hit_b and all(i >= switch_b for i in hit_b), db
    delay_b = hit_b[0] - switch_b + 1
    assert delay_b <= 2
    mb = _metrics(eng, "input")
    assert all(mb[i].get("drift.drifted") != 1 for i in range(switch_b)), "dataset drift before the switch"
    print(
        f"\n(a) quality drift: switch at window {switch_a}, first alarm at {fired_a[0]} (delay {delay_a}); "
        f"feedback+ {[round(ma[i].get('quality.feedback_positive_rate') or 0, 2) for i in sorted(ma)]}"
    )
    print(f"(b) input drift: switch at window {switch_b}, prompt drift at {hit_b[0]} (delay {delay_b}); "
          f"drifted features there: {sorted(db[hit_b[0]])}")  # fmt: skip
    eng.dispose()


def test_no_drift_stays_quiet(pg_url: str, tmp_path: Path) -> None:
    size, n_windows = 150, 43
    rng = random.Random(7)
    gpt4 = load("gpt4_1106_preview")
    rows = [r for _ in range(n_windows) for r in rng.sample(gpt4, size)]  # fresh request ids per record
    eng = create_engine_from_url(pg_url)
    _store(eng, rows, "stable", "st", 3)
    results = DriftCheckJob(_settings(pg_url, tmp_path, size, max_windows_per_run=100,
                                      embeddings={"sample": 50}), eng).run_once()  # fmt: skip
    ok = [r for r in results if r.status == "ok" and r.outcome is not None]
    assert len(ok) >= 40
    drifted = [r.window.index for r in ok if r.outcome and r.outcome.drifted]
    rate = len(drifted) / len(ok)
    noisy = {}
    for r in ok:
        for f in r.outcome.features if r.outcome else []:
            if f.drifted:
                noisy[f.feature] = noisy.get(f.feature, 0) + 1
    print(
        f"\n(c) no drift: {len(ok)} windows, dataset verdict drifted in {len(drifted)} ({rate:.1%}); "
        f"single-feature flags: {noisy}"
    )
    assert rate <= 0.05
    eng.dispose()
