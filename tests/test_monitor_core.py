"""Windows, references, features, insufficient data, persistence and idempotency of the drift check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, func, insert, select

from driftloop.monitor.check import DriftCheckJob, run_check
from driftloop.monitor.drift import benjamini_hochberg, verdict
from driftloop.monitor.features import compute_features, detect_language, window_metrics
from driftloop.monitor.tables import drift_results, monitor_windows
from driftloop.monitor.tables import window_metrics as wm
from driftloop.monitor.windows import due_windows, load_frame, reference_for
from driftloop.settings import Settings
from driftloop.settings.metrics import is_known_metric
from driftloop.store.db import create_engine_from_url
from driftloop.store.models import feedback
from tests.helpers import make_settings
from tests.monitor_helpers import T0, insert_rows, interaction


def _settings(url: str, tmp_path: Path, **monitor: object) -> Settings:
    """Small count windows, no reports, embeddings or text drift unless ``monitor`` says."""
    base: dict[str, object] = {"window": {"kind": "count", "size": 100}, "reference": {"kind": "previous", "windows": 2},
                               "min_window_size": 50, "reports": False, "reports_dir": str(tmp_path / "reports"),
                               "embeddings": {"enabled": False}, "text_drift": False}  # fmt: skip
    return make_settings(url, monitor=base | monitor)


@pytest.fixture
def engine(pg_url: str) -> Engine:
    eng = create_engine_from_url(pg_url)
    yield eng
    eng.dispose()


def test_count_windows_previous_reference(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    s = _settings(pg_url, tmp_path).monitor
    insert_rows(engine, [interaction(i) for i in range(350)] + [interaction(i, model="other") for i in range(120)])
    with engine.connect() as c:
        wins = due_windows(c, s, "m")
        assert [w.index for w in wins] == [0, 1, 2]  # the last 50 rows are not a complete window
        assert [len(w.ids) for w in wins] == [100, 100, 100]
        assert wins[0].start == T0 and wins[2].end == T0 + timedelta(seconds=299)
        ref0, ref2 = reference_for(c, s, wins[0]), reference_for(c, s, wins[2])
        assert ref0.n == 0  # nothing before the first window
        assert ref2.kind == "previous" and ref2.n == 200
        assert set(ref2.ids) == set(wins[0].ids) | set(wins[1].ids)
        assert ref2.start == T0 and ref2.end == T0 + timedelta(seconds=199)
        assert len(due_windows(c, s, "other")) == 1


def test_time_windows_wait_for_grace(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    s = _settings(pg_url, tmp_path, window={"kind": "time", "minutes": 5, "grace_s": 30}).monitor
    # 22 minutes of traffic, one record every 6 s, starting on a 5-minute boundary
    insert_rows(engine, [interaction(i, ts=T0 + timedelta(seconds=6 * i)) for i in range(220)])
    last = T0 + timedelta(seconds=6 * 219)
    with engine.connect() as c:
        wins = due_windows(c, s, "m", now=last + timedelta(seconds=10))
        assert [w.end - w.start for w in wins] == [timedelta(minutes=5)] * 4
        assert [len(w.ids) for w in wins] == [50] * 4
        assert wins[0].start == T0
        # the window [20, 25) min is still open, so it is not due; after it ends + grace it is
        later = due_windows(c, s, "m", now=T0 + timedelta(minutes=25, seconds=31))
        assert len(later) == 5 and len(later[-1].ids) == 20
        ref = reference_for(c, s, wins[3])
        assert ref.n == 100 and ref.start == T0 + timedelta(minutes=5)


def test_segments_split_windows(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    s = _settings(pg_url, tmp_path, segment_keys=["region"]).monitor
    rows = [interaction(i, meta={"region": "eu" if i % 3 else "us"}) for i in range(450)]
    insert_rows(engine, rows)
    with engine.connect() as c:
        wins = due_windows(c, s, "m")
        by_seg: dict[str, int] = {}
        for w in wins:
            by_seg[w.segment] = by_seg.get(w.segment, 0) + 1
        assert by_seg == {"region=eu": 3, "region=us": 1}
        eu = [w for w in wins if w.segment == "region=eu"]
        ref = reference_for(c, s, eu[2])
        assert ref.n == 200
        frame = load_frame(c, ref.ids)
        assert frame["id"].isin([w for win in eu[:2] for w in win.ids]).all()


def test_pinned_and_after_version_references(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    rows = [interaction(i, version="v1" if i < 150 else "v2") for i in range(400)]
    insert_rows(engine, rows)
    pinned = _settings(pg_url, tmp_path, reference={"kind": "pinned", "start": T0.isoformat(),
                                                    "end": (T0 + timedelta(seconds=60)).isoformat()}).monitor  # fmt: skip
    after = _settings(pg_url, tmp_path, reference={"kind": "after_version", "model_version": "v2",
                                                   "records": 80}).monitor  # fmt: skip
    with engine.connect() as c:
        win = due_windows(c, pinned, "m")[3]
        p = reference_for(c, pinned, win)
        assert (p.kind, p.n, p.start, p.end) == ("pinned", 60, T0, T0 + timedelta(seconds=59))
        a = reference_for(c, after, win)
        assert a.kind == "after_version" and a.n == 80 and a.start == T0 + timedelta(seconds=150)
    from driftloop.settings import ConfigError

    with pytest.raises(ConfigError, match=r"monitor\.reference: an after_version reference needs model_version"):
        _settings(pg_url, tmp_path, reference={"kind": "after_version"})


def test_features_and_latest_feedback(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    rows = [
        interaction(0, prompt="What is the capital of France?", response="Paris is the capital of France.",
                    reference="The capital of France is Paris."),
        interaction(1, prompt="Escribe un poema sobre el mar y las olas de la playa", response="I'm sorry, but I can't do that."),
        interaction(2, prompt="Hello?", response=""),
        interaction(3, prompt="Hi", response=None, latency=None),
    ]  # fmt: skip
    insert_rows(engine, rows, scores={"r-m-0": 0.0})
    now = datetime.now(UTC)
    with engine.begin() as c:  # a later feedback row for the same request wins
        c.execute(insert(feedback), {"event_key": "late", "request_id": "r-m-0", "ts": now + timedelta(minutes=1),
                                     "score": 1.0, "source": "event", "ingested_at": now})  # fmt: skip
    with engine.connect() as c:
        raw = load_frame(c, tuple(range(1, 5)))
    f = compute_features(raw, language_sample=10)
    assert list(f["prompt_chars"]) == [float(len(str(r["prompt"]))) for r in rows]
    assert f.loc[0, "prompt_tokens"] == 7.0  # 6 words + "?"
    assert list(f["is_refusal"]) == ["no", "yes", "no", "no"]
    assert list(f["is_apology"]) == ["no", "yes", "no", "no"]
    assert list(f["is_empty"]) == ["no", "no", "yes", "yes"]
    assert list(f["feedback_score"].fillna(-1)) == [1.0, -1, -1, -1]
    assert list(f["has_feedback"]) == ["yes", "no", "no", "no"]
    assert f.loc[0, "language"] == "en" and f.loc[1, "language"] == "es"
    m = window_metrics(f, raw)
    assert m["quality.feedback_positive_rate"] == 1.0 and m["quality.feedback_rate"] == 0.25
    assert m["quality.empty_rate"] == 0.5 and m["quality.refusal_rate"] == 0.25
    assert 0.5 < m["quality.rouge_l"] < 1.0 and m["quality.bleu"] > 0  # type: ignore[operator]
    assert all(is_known_metric(k) for k in m)
    assert detect_language("12345 !!!") == "unknown"
    # language is detected on a bounded sample only; the rest is missing (skipped by the tests)
    many = compute_features(pd.concat([raw] * 30, ignore_index=True), language_sample=10)
    assert many["language"].notna().sum() == 10


def test_benjamini_hochberg_and_verdict(pg_url: str, tmp_path: Path) -> None:
    p = [0.01, 0.04, 0.035, 0.20, 0.001]
    adj = benjamini_hochberg(p)
    # by hand: sorted 0.001,0.01,0.035,0.04,0.2 -> 0.005, 0.025, min(0.0583, 0.05), 0.05, 0.2
    assert np.allclose(adj, [0.025, 0.05, 0.05, 0.2, 0.005])
    from driftloop.monitor.drift import FeatureDrift

    s = _settings(pg_url, tmp_path, fdr_alpha=0.045, drift_share=0.5).monitor
    feats = [FeatureDrift(f"f{i}", "numerical", "ks", v, 0.05, p_value=v) for i, v in enumerate(p)]
    out = verdict(feats, s)
    # raw p < 0.045 would flag 4 of 5; after BH at 0.045 only the two smallest stay
    assert [f.drifted for f in feats] == [True, False, False, False, True]
    assert out.score == pytest.approx(0.4) and not out.drifted
    feats.append(FeatureDrift("emb", "embedding", "embedding_model", 0.9, 0.55, drifted=True))
    assert verdict(feats, s).score == pytest.approx(0.5) and verdict(feats, s).drifted


def _traffic(n: int, start: int, after: bool) -> list[dict[str, object]]:
    """Synthetic traffic; ``after`` shifts prompts (longer), answers (shorter) and latency (slower)."""
    rng = np.random.default_rng(start)
    topics = ["the weather", "our sales", "a recipe", "train times", "the football", "a poem"]
    out = []
    for i in range(start, start + n):
        words = int(rng.integers(3, 10) if after else rng.integers(40, 80))
        prompt = (f"please write a detailed legal analysis of contract clause {i % 23} with citations and caveats"
                  if after else f"tell me about {topics[i % 6]} today")  # fmt: skip
        out.append(interaction(i, prompt=prompt, response=" ".join(f"w{k % 50}" for k in range(words)),
                               latency=float(rng.lognormal(7 if after else 6, 0.3))))  # fmt: skip
    return out


def test_check_persists_and_is_idempotent(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    s = _settings(pg_url, tmp_path, reports=True, text_drift=True,
                  embeddings={"enabled": True, "sample": 60})  # fmt: skip
    rows = _traffic(200, 0, False) + _traffic(100, 200, True) + _traffic(30, 300, True)
    insert_rows(engine, rows, scores={str(r["request_id"]): 1.0 for r in rows[:200]} |
                {str(r["request_id"]): 0.0 for r in rows[200:]})  # fmt: skip
    job = DriftCheckJob(s, engine)
    res = job.run_once()
    assert [r.status for r in res] == ["insufficient_data", "ok", "ok"]
    assert "reference has 0 records" in (res[0].error or "")
    assert res[1].outcome is not None and not res[1].outcome.drifted  # same traffic as its reference
    last = res[2]
    assert last.outcome is not None and last.outcome.drifted
    drifted = {f.feature for f in last.outcome.features if f.drifted}
    assert {"response_chars", "prompt_chars", "latency_ms", "feedback_score"} <= drifted
    assert last.report_path and Path(last.report_path).stat().st_size > 10_000
    assert "DRIFT" in last.summary() and "response_chars" in last.summary()
    assert job.run_once() == []  # idempotent: nothing left to do
    with engine.connect() as c:
        rows_w = c.execute(select(monitor_windows).order_by(monitor_windows.c.window_index)).mappings().all()
        assert [(r["status"], r["n_records"], r["ref_n"], r["ref_kind"]) for r in rows_w] == [
            ("insufficient_data", 100, 0, "previous"),
            ("ok", 100, 100, "previous"),
            ("ok", 100, 200, "previous"),
        ]
        assert rows_w[2]["drifted"] is True and rows_w[2]["report_path"] == last.report_path
        assert rows_w[2]["ref_start"] == T0 and rows_w[2]["window_start"] == T0 + timedelta(seconds=200)
        feats = c.execute(select(drift_results).where(drift_results.c.window_id == rows_w[2]["id"])).mappings().all()
        by = {r["feature"]: r for r in feats}
        assert {"prompt", "response", "prompt_embedding", "response_embedding", "latency_ms"} <= set(by)
        assert by["response_chars"]["drifted"] and by["response_chars"]["method"]
        names = {r[0]: r[1] for r in c.execute(select(wm.c.name, wm.c.value).where(wm.c.window_id == rows_w[2]["id"]))}
        assert all(is_known_metric(n) for n in names)
        assert names["drift.drifted"] == 1.0 and names["quality.feedback_positive_rate"] == 0.0
        assert names["volume.records"] == 100 and "drift.prompt_embedding" in names
        # insufficient data is a result with metrics but no verdict
        assert rows_w[0]["drift_score"] is None
        assert c.execute(select(func.count()).select_from(wm).where(wm.c.window_id == rows_w[0]["id"])).scalar() > 0


def test_small_windows_are_insufficient(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    s = _settings(pg_url, tmp_path, window={"kind": "count", "size": 40}, min_window_size=50)
    insert_rows(engine, [interaction(i) for i in range(120)])
    res = DriftCheckJob(s, engine).run_once()
    assert [r.status for r in res] == ["insufficient_data"] * 3
    assert all(r.outcome is None and "40 records < min_window_size 50" in (r.error or "") for r in res)


def test_run_check_by_index_and_cli(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from driftloop.cli import app

    s = _settings(pg_url, tmp_path)
    insert_rows(engine, _traffic(200, 0, False) + _traffic(100, 200, True))
    with pytest.raises(ValueError, match="not complete"):
        run_check(engine, s, "m", window=7)
    r = run_check(engine, s, "m", window=0, persist=True)
    assert r is not None and r.status == "insufficient_data"
    with pytest.raises(ValueError, match="already checked"):
        run_check(engine, s, "m", window=0)
    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump({"database": {"url": pg_url}, "monitor": s.monitor.model_dump(mode="json")}))
    out = CliRunner().invoke(app, ["monitor", "check", "--model", "m", "--config", str(cfg)])
    assert out.exit_code == 0, out.output
    assert "window #2" in out.output and "DRIFT" in out.output and "response_chars" in out.output
    out = CliRunner().invoke(app, ["monitor", "check", "--model", "nope", "--config", str(cfg)])
    assert out.exit_code == 1 and "no complete unchecked window" in out.output


@pytest.mark.parametrize("kind", ["pg", "sqlite"])
def test_migration_up_down(kind: str, empty_pg_url: str, sqlite_url: str) -> None:
    from sqlalchemy import inspect

    from driftloop.store.db import downgrade, migrate

    url = empty_pg_url if kind == "pg" else sqlite_url
    migrate(url)
    eng = create_engine_from_url(url)
    try:
        names = set(inspect(eng).get_table_names())
        assert {"monitor_windows", "drift_results", "window_metrics"} <= names
        idx = {i["name"] for i in inspect(eng).get_indexes("window_metrics")}
        assert "ix_window_metrics_model_name_end" in idx
        downgrade(url, "base")
        assert not {"monitor_windows", "drift_results", "window_metrics"} & set(inspect(eng).get_table_names())
    finally:
        eng.dispose()


def test_check_on_sqlite(sqlite_url: str, tmp_path: Path) -> None:
    from driftloop.store.db import migrate

    migrate(sqlite_url)
    eng = create_engine_from_url(sqlite_url)
    s = _settings(sqlite_url, tmp_path)
    insert_rows(eng, _traffic(200, 0, False) + _traffic(100, 200, True))
    res = DriftCheckJob(s, eng).run_once()
    assert [r.status for r in res] == ["insufficient_data", "ok", "ok"]
    assert res[2].window_id is not None and res[2].outcome is not None and res[2].outcome.drifted
    eng.dispose()


def test_run_check_without_index_takes_the_named_streams_newest_window(engine: Engine, pg_url: str,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    """Issue 16 review: without an index, a given workload or segment picks that stream's newest due window;
    without them, the newest due window of any stream (what ``monitor check`` without ``--window`` does)."""
    s = _settings(pg_url, tmp_path, segment_keys=["region"])
    # workload "a" (region eu): windows 0 and 1 in the first 200 s; "b": eu 0 and us 0, later
    a = [interaction(i, meta={"region": "eu"}, prefix="a") | {"workload": "a"} for i in range(200)]
    b = [interaction(i, meta={"region": "eu" if i < 300 else "us"}, prefix="b") | {"workload": "b"}
         for i in range(200, 400)]  # fmt: skip
    insert_rows(engine, a + b)
    with engine.connect() as c:
        due = due_windows(c, s.monitor, "m")
    assert {(w.workload, w.segment, w.index) for w in due} == {
        ("a", "region=eu", 0), ("a", "region=eu", 1), ("b", "region=eu", 0), ("b", "region=us", 0)}
    r = run_check(engine, s, "m", workload="a", persist=False)
    assert r is not None and (r.window.workload, r.window.segment, r.window.index) == ("a", "region=eu", 1)
    r = run_check(engine, s, "m", workload="b", segment="region=eu", persist=False)
    assert r is not None and (r.window.workload, r.window.segment, r.window.index) == ("b", "region=eu", 0)
    r = run_check(engine, s, "m", segment="region=eu", persist=False)  # any workload, that segment: b's is newer
    assert r is not None and (r.window.workload, r.window.segment) == ("b", "region=eu")
    r = run_check(engine, s, "m", persist=False)  # any stream: b's us window is the newest
    assert r is not None and (r.window.workload, r.window.segment) == ("b", "region=us")
    assert run_check(engine, s, "m", workload="c") is None  # no such stream: nothing due
    with pytest.raises(ValueError, match="workload 'c' is not complete"):
        run_check(engine, s, "m", window=0, workload="c")
