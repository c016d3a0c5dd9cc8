"""Model registry: lineage, aliases, audit log, all-or-nothing promotion, rollback (PostgreSQL and SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from driftloop.connectors.abc import Promotion, PromotionError, PromotionTarget
from driftloop.connectors.filesystem import FilesystemPromotionTarget
from driftloop.retrain.registry import ModelRegistry, PromotionFailed, RegistryError
from driftloop.retrain.tables import model_aliases
from driftloop.settings.connectors import TargetSettings
from driftloop.store.db import create_engine_from_url


class RecordingTarget(PromotionTarget):
    """Remembers what it serves; fails the next ``fail`` applies."""

    def __init__(self, name: str, fail: int = 0) -> None:
        self.name = name
        self.fail = fail
        self.serving: str | None = None
        self.calls: list[str] = []

    def apply(self, p: Promotion) -> None:
        self.calls.append(f"apply {p.version}")
        if self.fail:
            self.fail -= 1
            raise PromotionError(f"{self.name}: refused {p.version}")
        self.serving = p.version

    def revert(self, p: Promotion) -> None:
        self.calls.append(f"revert {p.version}")
        self.serving = p.previous_version


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def reg(request: pytest.FixtureRequest) -> ModelRegistry:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    return ModelRegistry(create_engine_from_url(url))


def _adapter(tmp: Path, name: str) -> str:
    d = tmp / name
    d.mkdir()
    (d / "adapter_config.json").write_text('{"r": 8}')
    (d / "adapter_model.safetensors").write_bytes(name.encode() * 10)
    return str(d)


def test_lineage_aliases_and_audit(reg: ModelRegistry, tmp_path: Path) -> None:
    base = reg.ensure_base("bot", "/models/base")
    assert (base.version, base.status, base.adapter_path) == ("v0", "promoted", None)
    assert reg.ensure_base("bot", "/models/other").id == base.id  # idempotent
    v1 = reg.register("bot", "/models/base", adapter_path=_adapter(tmp_path, "a1"), parent_id=base.id, job_id=7,
                      dataset_hash="abc", config={"r": 8}, gate={"promote": True})  # fmt: skip
    assert (v1.version, v1.parent_id, v1.dataset_hash, v1.job_id) == ("v1", base.id, "abc", 7)
    fs = FilesystemPromotionTarget(TargetSettings(name="fs", type="filesystem", path=str(tmp_path / "serve")))
    rec = RecordingTarget("rec")
    reg.promote(v1.id, [fs, rec], actor="test", reason="gate passed")
    assert reg.champion("bot").id == v1.id and reg.alias("bot", "previous").id == base.id
    assert reg.get(base.id).status == "retired" and rec.serving == "v1"
    assert (tmp_path / "serve" / "current").resolve().name.endswith("v1")
    acts = [(e["action"], e["version_id"]) for e in reg.events("bot")]
    assert ("promoted", v1.id) in acts and ("retired", base.id) in acts
    with pytest.raises(RegistryError, match="already the champion"):
        reg.promote(v1.id, [rec], actor="test", reason="again")


def test_failed_target_leaves_serving_and_registry_unchanged(reg: ModelRegistry, tmp_path: Path) -> None:
    base = reg.ensure_base("bot", "/models/base")
    v1 = reg.register("bot", "/models/base", adapter_path=_adapter(tmp_path, "a1"), parent_id=base.id)
    first, second = RecordingTarget("first"), RecordingTarget("second", fail=10)
    with pytest.raises(PromotionFailed, match="unchanged"):
        reg.promote(v1.id, [first, second], actor="test", reason="try")
    assert reg.champion("bot").id == base.id and reg.get(v1.id).status == "candidate"
    # switched once and reverted: the registry does not retry on top of the targets' own retries
    assert first.serving == "v0" and first.calls == ["apply v1", "revert v1"] and second.calls == ["apply v1"]
    ev = [e for e in reg.events("bot") if e["action"] == "promotion_failed"]
    assert len(ev) == 1 and "second: refused v1" in ev[0]["reason"]
    # promoting again once the target works: promoted, consistently
    flaky = RecordingTarget("flaky", fail=1)
    with pytest.raises(PromotionFailed, match="flaky: refused v1"):
        reg.promote(v1.id, [first, flaky], actor="test", reason="retry")
    reg.promote(v1.id, [first, flaky], actor="test", reason="retry")
    assert reg.champion("bot").id == v1.id and first.serving == flaky.serving == "v1"


def test_rollback_restores_previous_on_targets_and_registry(reg: ModelRegistry, tmp_path: Path) -> None:
    base = reg.ensure_base("bot", "/models/base")
    v1 = reg.register("bot", "/models/base", adapter_path=_adapter(tmp_path, "a1"), parent_id=base.id)
    v2 = reg.register("bot", "/models/base", adapter_path=_adapter(tmp_path, "a2"), parent_id=v1.id)
    t = RecordingTarget("t")
    reg.promote(v1.id, [t], actor="test", reason="r1")
    reg.promote(v2.id, [t], actor="test", reason="r2")
    restored = reg.rollback("bot", [t], actor="watch", reason="quality dropped")
    assert restored.id == v1.id and t.serving == "v1" and reg.champion("bot").id == v1.id
    assert reg.get(v2.id).status == "rolled_back"
    assert reg.alias("bot", "previous") is None  # the bad version is not one command away from serving
    with pytest.raises(RegistryError, match="no previous version"):
        reg.rollback("bot", [t], actor="test", reason="again")
    v2_events = [(e["action"], e["from_status"], e["to_status"]) for e in reg.events("bot", v2.id)]
    assert ("promoted", "candidate", "promoted") in v2_events and (
        "rolled_back",
        "promoted",
        "rolled_back",
    ) in v2_events
    with reg.engine.connect() as c:
        assert {r.alias for r in c.execute(select(model_aliases))} == {"champion"}


def test_find_by_label_or_id_and_clear_errors(reg: ModelRegistry) -> None:
    base = reg.ensure_base("bot", "/m")
    assert reg.find("bot", "v0").id == base.id == reg.find("bot", str(base.id)).id
    with pytest.raises(RegistryError, match="driftloop models list bot"):
        reg.find("bot", "v9")
