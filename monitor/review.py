"""The human review queue: which interactions reviewers see, who holds which, and what they said.

Sampling (:func:`sample_once`, the ``review_sample`` job) puts an interaction into ``review_items`` in one
*slice*:

* ``uniform`` — kept when ``u(seed, "uniform", model_id, prompt, response) < uniform_rate``, where ``u`` is a
  seeded hash of the record's *content* mapped to [0, 1). Neither the id nor the arrival order nor any
  signal about quality enters, so every record of a workload has the same inclusion probability: a
  Bernoulli sample, the one slice an unbiased estimate (PPI) may use. It has no cap (a cap would favour
  early arrivals). Each item stores its ``sample_rate`` (the inclusion probability), so a rate changed
  mid-window can still be weighted correctly. A *skipped* uniform item is a hole in the sample (it may
  be skipped because it is hard): ``stats`` counts them; keep skips rare.
* targeted — ``drift`` (interactions of a window the monitor flagged as drifted), ``low_confidence``
  (an ``estimator:*`` score within ``low_confidence_margin`` of the positive threshold) and
  ``negative_feedback`` (latest user feedback negative). Each takes a share of its eligible records,
  again by a seeded content hash (so a record rejected once stays rejected and reruns do not re-roll),
  with a per-run cap. A record whose uniform hash says "in" is never put into a targeted slice: it is
  recorded once, as uniform (``request_id`` is unique), so targeted interest never changes the uniform slice.

Claiming (:func:`claim_next`) hands one pending item (or one whose claim lease expired) to a reviewer;
on PostgreSQL the candidate row is locked with ``FOR UPDATE SKIP LOCKED`` so concurrent reviewers never
wait on or get the same row; everywhere the claim is a conditional UPDATE whose row count says who won.
Labelling (:func:`label_item`) writes a ``human_review`` score and marks the item labelled in one transaction.

What a reviewer sees is the stored ``interactions.prompt``/``response``: what ingestion redacted stays redacted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    String,
    Table,
    Text,
    and_,
    cast,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from driftloop.monitor.tables import monitor_windows
from driftloop.settings.review import TARGETED_SLICES, ReviewSettings, WorkloadPolicy
from driftloop.store.feedback import feedback_latest, store_feedback_threshold
from driftloop.store.models import BigId, interactions, metadata
from driftloop.store.scores import Score, content_key, record_scores, scores

SLICES = ("uniform", *TARGETED_SLICES)
STATUSES = ("pending", "claimed", "labelled", "skipped")
REVIEW_SOURCE = "human_review"
CURSOR_KEY = "uniform"

review_items = Table(
    "review_items",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("request_id", String(256), nullable=False, unique=True),  # one item per interaction: uniform wins
    Column("model_id", String(256), nullable=False),
    Column("slice", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("sample_rate", Float, nullable=False),  # inclusion probability of the slice when it was drawn
    Column("reason", Text, nullable=True),  # why a targeted item was picked (window, score, feedback)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("claimed_by", String(128), nullable=True),
    Column("claimed_at", DateTime(timezone=True), nullable=True),
    Column("done_at", DateTime(timezone=True), nullable=True),
    Column("skip_reason", Text, nullable=True),
    CheckConstraint("status IN ('pending', 'claimed', 'labelled', 'skipped')", name="ck_review_items_status"),
    CheckConstraint(
        "slice IN ('uniform', 'drift', 'low_confidence', 'negative_feedback')", name="ck_review_items_slice"
    ),
    Index("ix_review_items_claim", "status", "slice", "id"),  # claim_next: ordered scans per status and slice
)

# How far the uniform pass has read ``interactions`` (one row: key = 'uniform').
review_cursor = Table(
    "review_cursor",
    metadata,
    Column("key", String(32), primary_key=True),
    Column("last_interaction_id", BigId, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


class ReviewError(Exception):
    """A review action that is not possible; ``code`` is the HTTP status it maps to (404 or 409)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def unit_hash(seed: str, purpose: str, model_id: str, prompt: str | None, response: str | None) -> float:
    """A seeded hash of a record's content mapped to [0, 1): the sampling coin of :func:`sample_once`."""
    return int(content_key(seed, purpose, model_id, prompt, response)[:16], 16) / 2.0**64


def in_uniform(cfg: ReviewSettings, policy: WorkloadPolicy, model_id: str, prompt: str | None,
               response: str | None) -> bool:  # fmt: skip
    """Whether a record belongs to its workload's uniform slice (content only: never id, time or signals)."""
    return unit_hash(cfg.seed, "uniform", model_id, prompt, response) < policy.uniform_rate


def _insert(conn: Connection, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    ins = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(review_items)
    stmt = ins.on_conflict_do_nothing(index_elements=[review_items.c.request_id]).returning(review_items.c.id)
    return len(conn.execute(stmt, rows).all())


def _item(r: Any, slice_: str, rate: float, reason: str | None, now: datetime) -> dict[str, Any]:
    return {"request_id": r.request_id, "model_id": r.model_id, "slice": slice_, "status": "pending",
            "sample_rate": rate, "reason": reason, "created_at": now}  # fmt: skip


def sample_uniform(engine: Engine, cfg: ReviewSettings, now: datetime | None = None) -> int:
    """Read interactions past the cursor, queue the uniform ones; returns items added.

    The first run starts ``lookback_hours`` back: turning review on for a deployment with a long history
    samples from then on (uniformly), rather than queueing a tenth of the history.
    """
    now = now or datetime.now(UTC)
    added = 0
    i = interactions.c
    while True:
        with engine.begin() as c:
            cur = c.execute(select(review_cursor.c.last_interaction_id)
                            .where(review_cursor.c.key == CURSOR_KEY)).scalar()  # fmt: skip
            if cur is None:
                first = c.execute(select(func.min(i.id)).where(i.ts >= now - timedelta(hours=cfg.lookback_hours)))
                last = int(first.scalar() or 2**62) - 1
            else:
                last = int(cur)
            rows = c.execute(select(i.id, i.request_id, i.model_id, i.prompt, i.response).where(i.id > last)
                             .order_by(i.id).limit(cfg.batch_size)).all()  # fmt: skip
            if not rows:
                return added
            items: list[dict[str, Any]] = []
            policies: dict[str, WorkloadPolicy] = {}
            for r in rows:
                pol = policies.get(r.model_id) or policies.setdefault(r.model_id, cfg.for_model(r.model_id))
                if pol.enabled and in_uniform(cfg, pol, r.model_id, r.prompt, r.response):
                    items.append(_item(r, "uniform", pol.uniform_rate, None, now))
            added += _insert(c, items)
            vals = {"last_interaction_id": rows[-1].id, "updated_at": now}
            if cur is None:
                c.execute(review_cursor.insert().values(key=CURSOR_KEY, **vals))
            else:
                c.execute(update(review_cursor).where(review_cursor.c.key == CURSOR_KEY).values(**vals))
        if len(rows) < cfg.batch_size:
            return added


def _candidates(slice_: str, since: datetime, upto: int, margin: float, threshold: float) -> Any:
    """Interactions eligible for a targeted slice (not queued yet), newest first, with why."""
    i = interactions.c
    base = [i.ts >= since, i.id <= upto, ~exists().where(review_items.c.request_id == i.request_id)]
    cols = [i.request_id, i.model_id, i.prompt, i.response]
    if slice_ == "drift":
        # A drifted window's records: its model's, in its time span, of its own workload (each workload has
        # windows of its own, so another workload's records in that span did not drift; NULL is the unnamed
        # "" stream). Rates and caps stay per model (WorkloadPolicy), which is fine for a review sample.
        # Only whole-workload windows (segment ""): with segment keys there are none, and the slice is empty.
        w = monitor_windows.c
        j = interactions.join(monitor_windows, and_(w.model_id == i.model_id, w.workload == func.coalesce(i.workload, ""),
                                                    w.segment == "", w.drifted.is_(True),
                                                    i.ts >= w.window_start, i.ts <= w.window_end))  # fmt: skip
        return select(*cols, ("drifted window " + cast(w.id, String)).label("why")).select_from(j).where(*base)
    if slice_ == "low_confidence":
        s = scores.c
        j = interactions.join(scores, s.request_id == i.request_id)
        return (select(*cols, (s.source + " " + cast(s.value, String)).label("why")).select_from(j)
                .where(*base, s.source.like("estimator:%"), func.abs(s.value - threshold) <= margin))  # fmt: skip
    fl = feedback_latest.c
    j = interactions.join(feedback_latest, fl.request_id == i.request_id)
    return (select(*cols, ("user feedback " + cast(fl.score, String)).label("why")).select_from(j)
            .where(*base, fl.positive.is_(False)))  # fmt: skip


def sample_targeted(engine: Engine, cfg: ReviewSettings, positive_threshold: float,
                    now: datetime | None = None) -> dict[str, int]:  # fmt: skip
    """Queue the targeted slices over the last ``lookback_hours``; returns items added per slice."""
    now = now or datetime.now(UTC)
    since = now - timedelta(hours=cfg.lookback_hours)
    store_feedback_threshold(engine, positive_threshold)
    out: dict[str, int] = {}
    for slice_ in TARGETED_SLICES:
        with engine.begin() as c:
            upto = int(c.execute(select(review_cursor.c.last_interaction_id)
                                 .where(review_cursor.c.key == CURSOR_KEY)).scalar() or 0)  # fmt: skip
            q = _candidates(slice_, since, upto, cfg.low_confidence_margin, positive_threshold)
            taken: dict[str, int] = {}
            items: dict[str, dict[str, Any]] = {}
            policies: dict[str, WorkloadPolicy] = {}
            for r in c.execute(q.order_by(interactions.c.id.desc()).limit(cfg.batch_size)):
                pol = policies.get(r.model_id) or policies.setdefault(r.model_id, cfg.for_model(r.model_id))
                sl = pol.slices[slice_]
                if (not pol.enabled or r.request_id in items or taken.get(r.model_id, 0) >= sl.max_per_run
                        or in_uniform(cfg, pol, r.model_id, r.prompt, r.response)
                        or unit_hash(cfg.seed, slice_, r.model_id, r.prompt, r.response) >= sl.rate):  # fmt: skip
                    continue
                taken[r.model_id] = taken.get(r.model_id, 0) + 1
                items[r.request_id] = _item(r, slice_, sl.rate, r.why, now)
            out[slice_] = _insert(c, list(items.values()))
    return out


def sample_once(engine: Engine, cfg: ReviewSettings, positive_threshold: float,
                now: datetime | None = None) -> dict[str, int]:  # fmt: skip
    """One sampling run: the uniform pass first (so it owns its records), then the targeted slices."""
    out = {"uniform": sample_uniform(engine, cfg, now)}
    out.update(sample_targeted(engine, cfg, positive_threshold, now))
    return out


@dataclass(frozen=True)
class ReviewItem:
    """An item handed to a reviewer: the stored (redacted) prompt and response, nothing else of the record."""

    id: int
    request_id: str
    model_id: str
    slice: str
    reason: str | None
    ts: datetime
    prompt: str
    response: str | None
    claimed_by: str
    claimed_at: datetime
    lease_expires_at: datetime


def _claimable(now: datetime, lease_s: float) -> Any:
    r = review_items.c
    return or_(r.status == "pending", and_(r.status == "claimed", r.claimed_at < now - timedelta(seconds=lease_s)))


def _load(c: Connection, item_id: int, lease_s: float) -> ReviewItem:
    r, i = review_items.c, interactions.c
    row = c.execute(select(r.id, r.request_id, r.model_id, r.slice, r.reason, r.claimed_by, r.claimed_at, i.ts,
                           i.prompt, i.response)
                    .select_from(review_items.join(interactions, i.request_id == r.request_id))
                    .where(r.id == item_id)).one()  # fmt: skip
    claimed = _utc(row.claimed_at)
    return ReviewItem(row.id, row.request_id, row.model_id, row.slice, row.reason, _utc(row.ts), row.prompt,
                      row.response, row.claimed_by, claimed, claimed + timedelta(seconds=lease_s))  # fmt: skip


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _candidate(c: Connection, filt: list[Any], now: datetime, lease_s: float) -> int | None:
    """The next claimable item id: an expired claim, else the oldest pending uniform item, else the oldest
    pending targeted one. Separate queries, each an ordered scan of ``ix_review_items_claim`` that stops at
    the first row whose interaction still exists (one query with ``OR`` and a computed order sorted them all)."""
    r, i = review_items.c, interactions.c
    has_interaction = exists().where(i.request_id == r.request_id)
    expired = and_(r.status == "claimed", r.claimed_at < now - timedelta(seconds=lease_s))
    for cond in (expired, and_(r.status == "pending", r.slice == "uniform"),
                 and_(r.status == "pending", r.slice.in_(TARGETED_SLICES))):  # fmt: skip
        q = select(r.id).where(cond, *filt, has_interaction).order_by(r.id).limit(1)
        if c.dialect.name == "postgresql":
            q = q.with_for_update(of=review_items, skip_locked=True)
        found = c.execute(q).scalar()
        if found is not None:
            return int(found)
    return None


def claim_next(engine: Engine, reviewer: str, lease_s: float, *, model_id: str | None = None,
               slices: Sequence[str] | None = None, now: datetime | None = None) -> ReviewItem | None:  # fmt: skip
    """The caller's own unexpired claim if it has one (a reloaded page gets the same item), else the next
    claimable item (uniform first: the estimates rest on it); None when nothing is left."""
    r, i = review_items.c, interactions.c
    filt = [r.model_id == model_id] if model_id else []
    if slices:
        filt.append(r.slice.in_(list(slices)))
    for _ in range(20):  # lost races on SQLite (no SKIP LOCKED): try the next candidate
        at = now or datetime.now(UTC)
        with engine.begin() as c:
            mine = c.execute(select(r.id).where(*filt, r.status == "claimed", r.claimed_by == reviewer,
                                                ~_claimable(at, lease_s), exists().where(i.request_id == r.request_id))
                             .order_by(r.id).limit(1)).scalar()  # fmt: skip
            if mine is not None:
                c.execute(update(review_items).where(r.id == mine).values(claimed_at=at))
                return _load(c, mine, lease_s)
            cand = _candidate(c, filt, at, lease_s)
            if cand is None:
                return None
            won = c.execute(update(review_items).where(r.id == cand, _claimable(at, lease_s))
                            .values(status="claimed", claimed_by=reviewer, claimed_at=at)).rowcount  # fmt: skip
            if won:
                return _load(c, cand, lease_s)
    return None


def _held(c: Connection, item_id: int, reviewer: str) -> Any:
    """The item row, locked on PostgreSQL; ReviewError unless ``reviewer`` holds its claim."""
    r = review_items.c
    q = select(review_items).where(r.id == item_id)
    if c.dialect.name == "postgresql":
        q = q.with_for_update()
    row = c.execute(q).first()
    if row is None:
        raise ReviewError(404, f"no review item {item_id}")
    if row.status in ("labelled", "skipped"):
        raise ReviewError(409, f"review item {item_id} is already {row.status}")
    if row.status != "claimed" or row.claimed_by != reviewer:
        who = "nobody" if row.status == "pending" else repr(row.claimed_by)
        raise ReviewError(409, f"review item {item_id} is not claimed by you (claimed by {who}); "
                               "take it with POST /api/v1/review/next")  # fmt: skip
    return row


def label_item(engine: Engine, item_id: int, reviewer: str, value: float, *, correction: str | None = None,
               tags: list[str] | None = None, comment: str | None = None, name: str = "quality",
               now: datetime | None = None) -> Score:  # fmt: skip
    """Store the reviewer's score (source ``human_review``) and mark the item labelled, in one transaction."""
    now = now or datetime.now(UTC)
    with engine.begin() as c:
        row = _held(c, item_id, reviewer)
        s = Score(request_id=row.request_id, source=REVIEW_SOURCE, value=value, name=name, ts=now,
                  comment=comment, correction=correction or None, tags=tags or None, event=f"review:{item_id}",
                  metadata={"review_item": item_id, "slice": row.slice, "sample_rate": row.sample_rate,
                            "reviewer": reviewer})  # fmt: skip
        record_scores(c, [s])
        c.execute(update(review_items).where(review_items.c.id == item_id).values(status="labelled", done_at=now))
    return s


def skip_item(engine: Engine, item_id: int, reviewer: str, reason: str | None = None,
              now: datetime | None = None) -> None:  # fmt: skip
    """Mark an item skipped (it is not offered again)."""
    with engine.begin() as c:
        _held(c, item_id, reviewer)
        c.execute(update(review_items).where(review_items.c.id == item_id)
                  .values(status="skipped", skip_reason=reason, done_at=now or datetime.now(UTC)))  # fmt: skip


def stats(engine: Engine, model_id: str | None = None) -> list[dict[str, Any]]:
    """Item counts per workload, slice and status (an expired claim still counts as claimed)."""
    r = review_items.c
    q = select(r.model_id, r.slice, r.status, func.count().label("n")).group_by(r.model_id, r.slice, r.status)
    if model_id:
        q = q.where(r.model_id == model_id)
    with engine.connect() as c:
        return [dict(x._mapping) for x in c.execute(q.order_by(r.model_id, r.slice, r.status))]
