"""Scores: every quality signal for an interaction, one row each, with the source that gave it.

Sources (``source`` column), one grammar for all of them:

    user                  explicit feedback of the end user (stored in ``feedback`` by ingestion)
    human_review          a reviewer's label from the review queue
    judge:<name>          an LLM judge (``<name>`` from its settings)
    estimator:<version>   the learned quality estimator, by registry version
    heuristic:<name>      a rule (e.g. a refusal detector)

User feedback keeps its own table (ingestion deduplicates it by the producer's event key, and the
monitor, the dataset builder and the dashboards read it through ``feedback_latest``); every other source
writes ``scores``. The view ``quality_scores`` (migration 0011) is the one place that reads them together:
``feedback`` rows appear there as ``source = 'user'``, ``name = 'feedback'``, so no existing row moved.

Values are in [0, 1]; *positive* means ``value >= feedback.positive_threshold`` for every source (the
one definition, see :mod:`driftloop.store.feedback`). ``content_key`` is a digest of what was scored
(prompt, response, reference, rubric), so a judge's answer for the same content is reused (its cache)
and a re-sent record gets the same estimate whatever its id.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    String,
    Table,
    Text,
    column,
    table,
)
from sqlalchemy.dialects import postgresql, sqlite

from driftloop.store.models import BRIN_TIME_INDEX_WITH, BigId, JsonType, metadata

QUALITY_SCORES_VIEW = "quality_scores"
USER_SOURCE = "user"
SOURCE_RE = re.compile(r"^(user|human_review|(judge|estimator|heuristic):[A-Za-z0-9][A-Za-z0-9_.\-]{0,47})$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

scores = Table(
    "scores",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    # one score per (source, request, name, event): a retried write or a replayed job stores nothing twice
    Column("event_key", String(64), nullable=False, unique=True),
    Column("request_id", String(256), nullable=False),
    Column("source", String(64), nullable=False),
    Column("name", String(64), nullable=False),
    Column("value", Float, nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("content_key", String(64), nullable=True),
    Column("comment", Text, nullable=True),
    Column("correction", Text, nullable=True),
    Column("tags", JsonType, nullable=True),
    Column("metadata", JsonType, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_scores_request_id", "request_id"),
    Index("ix_scores_source_content", "source", "content_key"),
    Index("ix_scores_ts", "ts", postgresql_using="brin", postgresql_with=BRIN_TIME_INDEX_WITH),
)

# The view, for queries (created by migration 0011).
quality_scores = table(
    QUALITY_SCORES_VIEW,
    column("request_id", String(256)),
    column("source", String(64)),
    column("name", String(64)),
    column("value", Float),
    column("ts", DateTime(timezone=True)),
    column("correction", Text),
)


class ScoreError(ValueError):
    """A score row that cannot be stored; the message names the field."""


@dataclass(frozen=True)
class Score:
    """One quality signal for one interaction."""

    request_id: str
    source: str
    value: float
    name: str = "quality"
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    content_key: str | None = None
    comment: str | None = None
    correction: str | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None
    event: str = ""  # what makes two scores of one (source, request, name) different, e.g. a review id

    def validate(self) -> None:
        if not self.request_id or len(self.request_id) > 256:
            raise ScoreError("request_id: must be 1-256 characters")
        if self.source == USER_SOURCE:
            raise ScoreError("source: 'user' feedback is ingested from Kafka into `feedback`, not written here")
        if not SOURCE_RE.match(self.source):
            raise ScoreError(
                f"source: {self.source!r} is not one of human_review, judge:<name>, estimator:<version>, "
                "heuristic:<name>"
            )
        if not NAME_RE.match(self.name):
            raise ScoreError(f"name: {self.name!r} must be lower-case letters, digits and _")
        if not (0.0 <= float(self.value) <= 1.0):
            raise ScoreError(f"value: {self.value!r} is outside [0, 1]")

    def key(self) -> str:
        raw = json.dumps([self.source, self.request_id, self.name, self.event], separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()[:64]

    def row(self) -> dict[str, Any]:
        return {"event_key": self.key(), "request_id": self.request_id, "source": self.source, "name": self.name,
                "value": float(self.value), "ts": self.ts, "content_key": self.content_key, "comment": self.comment,
                "correction": self.correction, "tags": self.tags, "metadata": self.metadata,
                "created_at": datetime.now(UTC)}  # fmt: skip


def positive_label(value: float, positive_threshold: float) -> float:
    """1.0 when ``value`` is positive (``>= feedback.positive_threshold``, the one definition), else 0.0.

    Python's copy of what ``feedback_latest.positive`` says in SQL, for scores of any source.
    """
    return 1.0 if value >= positive_threshold else 0.0


def content_key(*parts: str | None) -> str:
    """A digest of the scored content (and of what scored it: pass the rubric and model too)."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        b = (p or "").encode("utf-8", "replace")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def record_scores(conn: Connection, items: Iterable[Score]) -> int:
    """Store scores (validated); a score already stored (same event key) is left as it is. Returns rows added."""
    rows = []
    for s in items:
        s.validate()
        rows.append(s.row())
    if not rows:
        return 0
    ins = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(scores)
    # RETURNING counts what was added (psycopg reports no rowcount for a batch)
    stmt = ins.on_conflict_do_nothing(index_elements=[scores.c.event_key]).returning(scores.c.id)
    return len(conn.execute(stmt, rows).all())


def cached_values(conn: Connection, source: str, keys: Iterable[str]) -> Mapping[str, float]:
    """content_key -> value of the newest score of ``source`` with that key (a judge's cache)."""
    from sqlalchemy import select

    wanted = sorted(set(keys))
    out: dict[str, float] = {}
    for i in range(0, len(wanted), 500):
        q = (select(scores.c.content_key, scores.c.value).where(scores.c.source == source)
             .where(scores.c.content_key.in_(wanted[i : i + 500])).order_by(scores.c.ts, scores.c.id))  # fmt: skip
        for k, v in conn.execute(q):
            out[k] = float(v)
    return out
