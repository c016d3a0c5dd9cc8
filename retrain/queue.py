"""The retrain queue: ``retrain_jobs`` rows enqueued by anyone, claimed and run by the leader's worker.

Who does what:

* the API, the CLI and the ``retrain_check`` job only :func:`enqueue`. A partial unique index
  (``uq_retrain_jobs_active_policy``: one ``queued``/``running`` row per policy, migration 0008)
  decides under concurrency: the insert is ``ON CONFLICT DO NOTHING`` and the loser gets the job that
  won, so two processes that enqueue one policy at the same moment share one job.
* :class:`RetrainWorker`, the ``retrain_worker`` job, runs only on the elected leader. It claims the
  oldest queued job with ``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL; on SQLite, whose writers
  are serialized, the guarded ``UPDATE ... WHERE status = 'queued'`` is the claim) and runs it to its
  end with :class:`~driftloop.retrain.runner.RetrainRunner`. A follower, or any process without a
  leadership fence (a CLI, an API thread), never claims.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, text, update

from driftloop.retrain.tables import ACTIVE_PREDICATE, ACTIVE_STATUSES, retrain_jobs
from driftloop.settings.retrain import PolicySettings

log = logging.getLogger("driftloop.retrain.queue")


@dataclass(frozen=True)
class Enqueued:
    """The policy's active job: the one just created, or the one that was already queued or running."""

    job_id: int
    created: bool
    status: str


def _insert(dialect: str) -> Any:
    """The dialect's ``insert`` (both have ``on_conflict_do_nothing`` with a partial-index target)."""
    from sqlalchemy.dialects import postgresql, sqlite

    if dialect == "postgresql":
        return postgresql.insert
    if dialect == "sqlite":
        return sqlite.insert
    raise RuntimeError(f"the retrain queue needs PostgreSQL or SQLite, not {dialect}")


def enqueue(engine: Engine, policy: PolicySettings, trigger: dict[str, Any], requested_by: str) -> Enqueued:
    """Queue a retrain of ``policy`` unless one is already queued or running (then that one is returned)."""
    ins = _insert(engine.dialect.name)
    row = {"policy": policy.name, "model_id": policy.model_id, "status": "queued", "trigger": trigger,
           "stage": "queued", "progress": 0.0, "cancel_requested": False, "requested_by": requested_by[:128],
           "created_at": datetime.now(UTC)}  # fmt: skip
    stmt = (ins(retrain_jobs).values(**row)
            .on_conflict_do_nothing(index_elements=[retrain_jobs.c.policy], index_where=text(ACTIVE_PREDICATE))
            .returning(retrain_jobs.c.id))  # fmt: skip
    for _ in range(5):  # the active job may finish between our conflict and our read: then insert again
        with engine.begin() as c:
            jid = c.execute(stmt).scalar()
            if jid is not None:
                log.info("retrain job %d of %s queued by %s", jid, policy.name, requested_by)
                return Enqueued(int(jid), True, "queued")
            cur = c.execute(select(retrain_jobs.c.id, retrain_jobs.c.status).where(
                retrain_jobs.c.policy == policy.name, retrain_jobs.c.status.in_(ACTIVE_STATUSES))).first()  # fmt: skip
        if cur is not None:
            return Enqueued(int(cur.id), False, str(cur.status))
    raise RuntimeError(f"could not enqueue a retrain of {policy.name}: its active job kept changing")


def claim_next(conn: Connection, instance: str, now: datetime | None = None) -> int | None:
    """In the caller's transaction: take the oldest queued job for ``instance``; its id, or None.

    The row stays locked until the transaction ends, and other claimers skip it (``SKIP LOCKED``)
    instead of waiting for it or taking it twice.
    """
    now = now or datetime.now(UTC)
    q = (select(retrain_jobs.c.id).where(retrain_jobs.c.status == "queued", retrain_jobs.c.cancel_requested.is_(False))
         .order_by(retrain_jobs.c.created_at, retrain_jobs.c.id).limit(1)
         .with_for_update(skip_locked=True))  # fmt: skip
    jid = conn.execute(q).scalar()
    if jid is None:
        return None
    res = conn.execute(update(retrain_jobs).where(retrain_jobs.c.id == jid, retrain_jobs.c.status == "queued").values(
        status="running", instance=instance, claimed_at=now, heartbeat_at=now, started_at=now, stage="claimed",
        message=f"claimed by {instance}"))  # fmt: skip
    return int(jid) if res.rowcount == 1 else None


def claim(engine: Engine, instance: str) -> int | None:
    """:func:`claim_next` in its own transaction."""
    with engine.begin() as c:
        return claim_next(c, instance)


class RetrainWorker:
    """Claims queued retrain jobs and runs them, one at a time; only while ``is_leader()`` holds."""

    def __init__(self, settings: Any, engine: Engine, instance: str, is_leader: Callable[[], bool], *,
                 runner: Any = None) -> None:  # fmt: skip
        from driftloop.retrain.runner import RetrainRunner

        self.engine = engine
        self.instance = instance
        self.is_leader = is_leader
        self.runner = runner or RetrainRunner(settings, engine, instance)

    def run_once(self) -> Any:
        """Claim one queued job and run it to its end; the outcome, or None when nothing was claimed."""
        if not self.is_leader():
            log.debug("instance %s is not the leader: it claims no retrain job", self.instance)
            return None
        jid = claim(self.engine, self.instance)
        if jid is None:
            return None
        log.info("instance %s claimed retrain job %d", self.instance, jid)
        return self.runner.execute(jid)

    def drain(self) -> list[Any]:
        """Run queued jobs until none is left or leadership is gone."""
        out = []
        while (o := self.run_once()) is not None:
            out.append(o)
        return out
