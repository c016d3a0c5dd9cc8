"""Post-promotion watch: a promoted version whose live quality drops is rolled back automatically."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from driftloop.monitor.alerts.tables import alert_notifications, alerts
from driftloop.monitor.check import DriftCheckJob
from driftloop.retrain.registry import ModelRegistry
from driftloop.retrain.runner import build_promotion_targets
from driftloop.retrain.watch import ROLLBACK_RULE, PromotionWatchJob
from driftloop.store.db import create_engine_from_url
from tests.alpaca import store_records
from tests.helpers import make_settings
from tests.retrain_helpers import toy_records
from tests.vllm_stub import VllmStub

WINDOW = 120


def _settings(pg_url: str, tmp: Path, vllm_url: str) -> Any:
    return make_settings(
        pg_url,
        monitor={"window": {"kind": "count", "size": WINDOW}, "min_window_size": 100, "reports": False,
                 "embeddings": {"enabled": False}, "text_drift": False, "language_sample": 0},
        retrain={"targets": [{"name": "serving", "type": "filesystem", "path": str(tmp / "serving")},
                             {"name": "vllm", "type": "vllm", "url": vllm_url}],
                 "policies": [{"name": "p", "model_id": "toy", "base_model": "/models/base",
                               "trigger": {"condition": "quality.feedback_positive_rate < 0.3"},
                               "targets": ["serving", "vllm"]}],
                 "watch": {"windows": 2, "metric": "quality.feedback_positive_rate", "tolerance": 0.1,
                           "channels": ["log"]}},
    )  # fmt: skip


def _adapter(tmp: Path, name: str) -> str:
    d = tmp / name
    d.mkdir()
    (d / "adapter_config.json").write_text('{"r": 8}')
    (d / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return str(d)


@pytest.mark.parametrize("after_good", [False, True], ids=["quality-drops", "quality-holds"])
def test_watch_rolls_back_when_live_quality_drops(pg_url: str, tmp_path: Path, after_good: bool) -> None:
    with VllmStub() as vllm:
        s = _settings(pg_url, tmp_path, vllm.url)
        eng = create_engine_from_url(pg_url)
        reg = ModelRegistry(eng)
        targets = build_promotion_targets(s)
        now = datetime.now(UTC).replace(microsecond=0)
        # three good windows served by v0 (before), then v1 is promoted ...
        store_records(pg_url, toy_records("A", 3 * WINDOW, start=now - timedelta(hours=1), prefix="before"), "t0")
        base = reg.ensure_base("toy", "/models/base")
        v1 = reg.register("toy", "/models/base", adapter_path=_adapter(tmp_path, "a1"), parent_id=base.id)
        reg.promote(v1.id, targets, actor="gate", reason="gate passed")
        assert "v1" in os.readlink(tmp_path / "serving" / "current")
        watch = PromotionWatchJob(s, eng)
        DriftCheckJob(s, eng).run_once()
        assert watch.run_once()[0].status == "pending"  # no window after the promotion yet
        # ... and two windows after it: users are unhappy (or not)
        store_records(pg_url, toy_records("A", 2 * WINDOW, start=datetime.now(UTC) + timedelta(seconds=5),
                                          good=after_good, prefix="after"), "t1")  # fmt: skip
        DriftCheckJob(s, eng).run_once()
        (res,) = watch.run_once()
        print(f"\nwatch: {res.status}: {res.message}")
        champ = reg.champion("toy")
        if after_good:
            assert res.status == "passed" and champ.id == v1.id
            assert watch.run_once() == []  # decided once
            return
        assert res.status == "rolled_back" and res.before == pytest.approx(1.0) and res.after < 0.5
        assert champ.id == base.id and reg.get(v1.id).status == "rolled_back"
        # both targets serve the previous version again
        assert os.readlink(tmp_path / "serving" / "current").endswith("_base")  # v0 is the base model alone
        assert not any(name.endswith("v1") for name in vllm.loaded)
        # the audit log shows both transitions of v1, with the reason
        acts = [(e["action"], e["to_status"], e["actor"]) for e in reg.events("toy", v1.id)]
        assert ("promoted", "promoted", "gate") in acts and ("rolled_back", "rolled_back", "watch") in acts
        why = next(e["reason"] for e in reg.events("toy", v1.id) if e["action"] == "rolled_back")
        assert "quality.feedback_positive_rate" in why
        # an alert fired and the channel was told
        with eng.connect() as c:
            a = c.execute(select(alerts).where(alerts.c.rule == ROLLBACK_RULE)).mappings().one()
            n = c.execute(select(alert_notifications).where(alert_notifications.c.alert_id == a["id"])).all()
        assert a["state"] == "fired" and a["model_id"] == "toy" and "rolled back v1 -> v0" in a["message"]
        assert len(n) == 1 and n[0].ok
        assert watch.run_once() == []  # the base model is not watched
        eng.dispose()


def test_watch_compares_each_workload_with_itself(pg_url: str, tmp_path: Path) -> None:
    """One workload's drop is not averaged away by another's gain: the blend of two workloads stays at ~0.5
    before and after the promotion, but ``rag`` goes from 1 to 0, so the watch rolls back on it."""
    from sqlalchemy import update

    from driftloop.store.models import interactions

    def store(n: int, start: datetime, *, rag_good: bool, prefix: str) -> None:
        for k, (wl, good) in enumerate((("rag", rag_good), ("agent", not rag_good))):  # interleaved in time
            recs = toy_records("A", n, start=start + timedelta(seconds=k), step=timedelta(seconds=2), good=good,
                               prefix=f"{prefix}-{wl}")  # fmt: skip
            store_records(pg_url, recs, "t")
            with eng.begin() as c:
                c.execute(update(interactions).where(interactions.c.request_id.like(f"{prefix}-{wl}-%"))
                          .values(workload=wl))  # fmt: skip

    with VllmStub() as vllm:
        s = _settings(pg_url, tmp_path, vllm.url)
        eng = create_engine_from_url(pg_url)
        reg = ModelRegistry(eng)
        store(3 * WINDOW, datetime.now(UTC) - timedelta(hours=1), rag_good=True, prefix="before")
        base = reg.ensure_base("toy", "/models/base")
        v1 = reg.register("toy", "/models/base", adapter_path=_adapter(tmp_path, "a1"), parent_id=base.id)
        reg.promote(v1.id, build_promotion_targets(s), actor="gate", reason="gate passed")
        watch = PromotionWatchJob(s, eng)
        DriftCheckJob(s, eng).run_once()
        assert watch.run_once()[0].status == "pending"
        store(2 * WINDOW, datetime.now(UTC) + timedelta(seconds=5), rag_good=False, prefix="after")
        DriftCheckJob(s, eng).run_once()
        (res,) = watch.run_once()
        print(f"\nwatch: {res.status}: {res.message}")
        assert res.status == "rolled_back" and res.before == pytest.approx(1.0) and res.after == pytest.approx(0.0)
        assert "toy[rag]" in res.message and "worst of 2 workloads" in res.message
        failed = next(e for e in reg.events("toy", v1.id) if e["action"] == "watch_failed")
        assert failed["details"]["workload"] == "rag"
        assert failed["details"]["workloads"]["agent"] == {"before": 0.0, "after": 1.0}
        champ = reg.champion("toy")
        assert champ is not None and champ.id == base.id
        eng.dispose()
