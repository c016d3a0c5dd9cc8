"""The model registry: versions with lineage, ``champion``/``previous`` aliases and an audit log.

Promotion is consistent with serving: the targets are switched first, once (each target retries its
own transient failures, e.g. the vLLM connector its HTTP calls; the registry does not retry on top,
so retries are never nested); if any target still fails, the ones already switched
are reverted and the registry is left as it was, with a ``promotion_failed`` event saying why. Only
when every target took the new version do the aliases and statuses change, in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from driftloop.connectors.abc import Promotion, PromotionTarget
from driftloop.retrain.tables import model_aliases, model_events, model_versions
from driftloop.retry import retrying

log = logging.getLogger("driftloop.retrain.registry")


class RegistryError(Exception):
    """A registry operation that cannot be done (unknown version, wrong status, ...); says what to do."""


class PromotionFailed(RegistryError):
    """A target refused the promotion; serving and the registry are unchanged."""


@dataclass(frozen=True)
class ModelVersion:
    """A registered version (a row of ``model_versions``)."""

    id: int
    family: str
    version: str
    status: str
    base_model: str
    adapter_path: str | None
    parent_id: int | None
    job_id: int | None
    policy: str | None
    dataset_hash: str | None
    dataset_path: str | None
    config: dict[str, Any] | None
    metrics: dict[str, Any] | None
    gate: dict[str, Any] | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ModelVersion:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["created_at"] = self.created_at.isoformat()
        return d


class ModelRegistry:
    """Versions, aliases and the audit log of model families, in the driftloop database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- reads -----------------------------------------------------------------------------------
    def get(self, version_id: int) -> ModelVersion:
        with self.engine.connect() as c:
            row = c.execute(select(model_versions).where(model_versions.c.id == version_id)).mappings().first()
        if row is None:
            raise RegistryError(f"no model version with id {version_id}; see `driftloop models list`")
        return ModelVersion.from_row(row)

    def find(self, family: str, version: str) -> ModelVersion:
        """A version by family and label (``v3``) or by numeric id."""
        with self.engine.connect() as c:
            q = select(model_versions).where(model_versions.c.family == family)
            row = c.execute(q.where(model_versions.c.version == version)).mappings().first()
            if row is None and version.isdigit():
                row = c.execute(q.where(model_versions.c.id == int(version))).mappings().first()
        if row is None:
            raise RegistryError(f"model {family!r} has no version {version!r}; see `driftloop models list {family}`")
        return ModelVersion.from_row(row)

    def alias(self, family: str, alias: str) -> ModelVersion | None:
        with self.engine.connect() as c:
            vid = c.execute(select(model_aliases.c.version_id).where(
                model_aliases.c.family == family, model_aliases.c.alias == alias)).scalar()  # fmt: skip
        return self.get(int(vid)) if vid is not None else None

    def champion(self, family: str) -> ModelVersion | None:
        return self.alias(family, "champion")

    def versions(self, family: str | None = None) -> list[ModelVersion]:
        q = select(model_versions).order_by(model_versions.c.family, model_versions.c.id)
        if family:
            q = q.where(model_versions.c.family == family)
        with self.engine.connect() as c:
            return [ModelVersion.from_row(r) for r in c.execute(q).mappings()]

    def aliases(self, family: str) -> dict[str, int]:
        with self.engine.connect() as c:
            rows = c.execute(select(model_aliases).where(model_aliases.c.family == family)).mappings()
            return {r["alias"]: int(r["version_id"]) for r in rows}

    def events(self, family: str | None = None, version_id: int | None = None) -> list[dict[str, Any]]:
        q = select(model_events).order_by(model_events.c.id)
        if family:
            q = q.where(model_events.c.family == family)
        if version_id is not None:
            q = q.where(model_events.c.version_id == version_id)
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def families(self) -> list[str]:
        with self.engine.connect() as c:
            return [
                r[0] for r in c.execute(select(model_versions.c.family).distinct().order_by(model_versions.c.family))
            ]

    # -- writes ----------------------------------------------------------------------------------
    @staticmethod
    def _event(c: Connection, family: str, version_id: int | None, action: str, actor: str, reason: str | None = None,
               from_status: str | None = None, to_status: str | None = None,
               details: dict[str, Any] | None = None) -> None:  # fmt: skip
        c.execute(insert(model_events), {"family": family, "version_id": version_id, "action": action,
                                         "from_status": from_status, "to_status": to_status, "actor": actor[:128],
                                         "reason": reason, "details": details, "at": datetime.now(UTC)})  # fmt: skip

    def _set_alias(self, c: Connection, family: str, alias: str, version_id: int | None) -> None:
        c.execute(delete(model_aliases).where(model_aliases.c.family == family, model_aliases.c.alias == alias))
        if version_id is not None:
            c.execute(insert(model_aliases), {"family": family, "alias": alias, "version_id": version_id,
                                              "updated_at": datetime.now(UTC)})  # fmt: skip

    def register(self, family: str, base_model: str, *, adapter_path: str | None, status: str = "candidate",
                 actor: str = "driftloop", reason: str | None = None, **lineage: Any) -> ModelVersion:  # fmt: skip
        """Add a version (label ``v<N>``, N counting the family's versions from 0) and log it.

        Two registrations racing for the same label: the loser tries again (5 attempts in all).
        """

        def attempt() -> ModelVersion:
            with self.engine.begin() as c:
                n = c.execute(select(func.count()).select_from(model_versions)
                              .where(model_versions.c.family == family)).scalar_one()  # fmt: skip
                vid = c.execute(insert(model_versions).returning(model_versions.c.id), {
                    "family": family, "version": f"v{n}", "status": status, "base_model": base_model,
                    "adapter_path": adapter_path, "created_at": datetime.now(UTC),
                    **{k: lineage.get(k) for k in ("parent_id", "job_id", "policy", "dataset_hash",
                                                   "dataset_path", "config", "metrics", "gate")},
                }).scalar_one()  # fmt: skip
                self._event(c, family, vid, "registered", actor, reason, None, status,
                            {"version": f"v{n}", "adapter_path": adapter_path})  # fmt: skip
            return self.get(int(vid))

        policy = retrying(what=f"registering a version of {family!r}", attempts=5, initial_s=0.05, max_s=0.05,
                          retry_on=IntegrityError, logger=log, level=logging.INFO)  # fmt: skip
        try:
            return policy(attempt)
        except IntegrityError:
            raise RegistryError(f"could not allocate a version label for {family!r} (concurrent registrations?)") from None

    def ensure_base(self, family: str, base_model: str, actor: str = "driftloop", reason: str | None = None,
                    **lineage: Any) -> ModelVersion:  # fmt: skip
        """The family's champion; registers ``base_model`` as ``v0`` champion when the family is new.

        ``lineage`` (e.g. ``config={"import": ...}`` from ``driftloop models import``) is stored on that ``v0``.
        """
        champ = self.champion(family)
        if champ is not None:
            return champ
        v = self.register(family, base_model, adapter_path=None, status="promoted", actor=actor,
                          reason=reason or "base model: the first champion", **lineage)  # fmt: skip
        with self.engine.begin() as c:
            if c.execute(select(model_aliases).where(model_aliases.c.family == family,
                                                     model_aliases.c.alias == "champion")).first() is None:  # fmt: skip
                self._set_alias(c, family, "champion", v.id)
                self._event(
                    c, family, v.id, "promoted", actor, "base model: the first champion", "promoted", "promoted"
                )
        return self.champion(family) or v

    def record_event(self, family: str, version_id: int | None, action: str, actor: str, reason: str | None = None,
                     details: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Log an event that changes no status (e.g. ``base_model_imported``: where a base model came from)."""
        with self.engine.begin() as c:
            self._event(c, family, version_id, action, actor, reason, details=details)

    def set_status(self, version_id: int, status: str, actor: str, reason: str | None = None,
                   action: str | None = None, details: dict[str, Any] | None = None) -> ModelVersion:  # fmt: skip
        """Change a version's status and log it (``action`` defaults to the new status)."""
        v = self.get(version_id)
        with self.engine.begin() as c:
            c.execute(update(model_versions).where(model_versions.c.id == version_id).values(status=status))
            self._event(c, v.family, version_id, action or status, actor, reason, v.status, status, details)
        return self.get(version_id)

    def record_gate(self, version_id: int, gate: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
        with self.engine.begin() as c:
            c.execute(update(model_versions).where(model_versions.c.id == version_id).values(
                gate=gate, metrics=metrics))  # fmt: skip

    # -- promotion -------------------------------------------------------------------------------
    def _switch(self, p: Promotion, targets: Sequence[PromotionTarget]) -> None:
        """Apply ``p`` to every target or to none (reverting the ones done); raise PromotionFailed.

        Not retried here: each target retries its own transient failures (one retry level, see the module).
        """
        done: list[PromotionTarget] = []
        for t in targets:
            try:
                t.apply(p)
            except Exception as e:  # PromotionError, or a bug in a target: either way not promoted
                log.error("promotion of %s %s: target %s failed: %s", p.family, p.version, getattr(t, "name", t), e)
                for d in reversed(done):
                    try:
                        d.revert(p)
                    except Exception as re_:
                        log.error("reverting target %s after a failed promotion failed: %s", d.name, re_)
                raise PromotionFailed(
                    f"promotion of {p.family} {p.version} failed: {e}; serving and the registry are unchanged "
                    "(fix the target and run `driftloop models promote` again)"
                ) from e
            done.append(t)

    def promote(self, version_id: int, targets: Sequence[PromotionTarget], *, actor: str, reason: str,
                action: str = "promoted") -> ModelVersion:  # fmt: skip
        """Make ``version_id`` the champion on every target, then in the registry; previous champion -> ``previous``."""
        v = self.get(version_id)
        if v.status in ("rejected", "rolled_back") and action == "promoted" and actor == "driftloop":
            raise RegistryError(f"{v.family} {v.version} is {v.status}; only a person may promote it")
        champ = self.champion(v.family)
        if champ is not None and champ.id == v.id:
            raise RegistryError(f"{v.family} {v.version} is already the champion")
        p = Promotion(family=v.family, version=v.version, adapter_path=v.adapter_path, base_model=v.base_model,
                      previous_version=champ.version if champ else None,
                      previous_adapter_path=champ.adapter_path if champ else None, reason=reason,
                      at=datetime.now(UTC))  # fmt: skip
        try:
            self._switch(p, targets)
        except PromotionFailed as e:
            with self.engine.begin() as c:
                self._event(c, v.family, v.id, "promotion_failed", actor, str(e), v.status, v.status,
                            {"targets": [t.name for t in targets]})  # fmt: skip
            raise
        with self.engine.begin() as c:
            c.execute(update(model_versions).where(model_versions.c.id == v.id).values(status="promoted"))
            self._set_alias(c, v.family, "champion", v.id)
            self._event(c, v.family, v.id, action, actor, reason, v.status, "promoted",
                        {"targets": [t.name for t in targets],
                         "previous": champ.version if champ else None})  # fmt: skip
            if champ is not None:
                new_status = "rolled_back" if action == "restored" else "retired"
                c.execute(update(model_versions).where(model_versions.c.id == champ.id).values(status=new_status))
                self._event(c, v.family, champ.id, "rolled_back" if action == "restored" else "retired", actor,
                            reason, champ.status, new_status, {"replaced_by": v.version})  # fmt: skip
                # after a rollback the bad version must not be one command away from serving again
                self._set_alias(c, v.family, "previous", None if action == "restored" else champ.id)
        log.info("%s %s %s (%s)", v.family, v.version, action, reason)
        return self.get(v.id)

    def _pending(self, version_id: int) -> ModelVersion:
        v = self.get(version_id)
        if v.status != "pending_approval":
            raise RegistryError(f"{v.family} {v.version} is {v.status}, not pending_approval")
        return v

    def approve(self, version_id: int, targets: Sequence[PromotionTarget], *, actor: str,
                reason: str | None = None) -> ModelVersion:  # fmt: skip
        """A person approves a version that passed the gate (``pending_approval``); it is promoted."""
        v = self._pending(version_id)
        self.set_status(v.id, "approved", actor, reason or "approved by a person", action="approved")
        return self.promote(v.id, targets, actor=actor, reason=f"approved by {actor}")

    def reject(self, version_id: int, *, actor: str, reason: str) -> ModelVersion:
        """A person rejects a version waiting for approval."""
        v = self._pending(version_id)
        return self.set_status(v.id, "rejected", actor, reason)

    def rollback(self, family: str, targets: Sequence[PromotionTarget], *, actor: str,
                 reason: str) -> ModelVersion:  # fmt: skip
        """Serve ``previous`` again; the current champion becomes ``rolled_back``."""
        prev = self.alias(family, "previous")
        if prev is None:
            raise RegistryError(f"model {family!r} has no previous version to roll back to")
        return self.promote(prev.id, targets, actor=actor, reason=reason, action="restored")
