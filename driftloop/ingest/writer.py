"""Batch writer: one database transaction per batch holding rows, rejects and the next offsets.

Storing the consumer's next offset per (group, topic, partition) in the same transaction as the
rows is what makes ingestion exactly-once in effect: after any crash the consumer seeks to the
stored offsets, and unique keys (request_id, feedback event key, reject source) make a replay of
an uncommitted batch harmless.

PostgreSQL path: binary COPY into a session temp table, then ``INSERT … SELECT … ON CONFLICT DO
NOTHING`` (measured ~84k rows/s fresh). SQLite path: multi-row ``INSERT OR IGNORE``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import msgspec
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite

from driftloop.ingest.decode import encode_json
from driftloop.store.models import consumer_offsets, feedback, interactions, rejected_messages

Row = dict[str, Any]
_dumps = msgspec.json.Encoder().encode

INTERACTION_COLS: tuple[str, ...] = (
    "request_id", "ts", "model_id", "model_version", "prompt", "messages", "response", "latency_ms",
    "tokens_in", "tokens_out", "finish_reason", "user_hash", "session_id", "reference", "metadata",
    "source_topic", "source_partition", "source_offset", "ingested_at", "workload",
)  # fmt: skip
_PG_TYPES = (
    "text", "timestamptz", "text", "text", "text", "text", "text", "float8",
    "int4", "int4", "text", "text", "text", "text", "text",
    "text", "int4", "int8", "timestamptz", "text",
)  # fmt: skip
_JSON_COLS = frozenset({"messages", "metadata"})
FEEDBACK_COLS = ("event_key", "request_id", "ts", "score", "comment", "correction", "source", "metadata", "ingested_at")
_FEEDBACK_TYPES = ("text", "text", "timestamptz", "float8", "text", "text", "text", "text", "timestamptz")


_REJECT_KEY = ["source_topic", "source_partition", "source_offset", "raw_sha256"]


@dataclass(frozen=True)
class _CopySpec:
    table: str
    cols: tuple[str, ...]
    types: tuple[str, ...]
    conflict: tuple[str, ...]


_INTERACTIONS = _CopySpec("interactions", INTERACTION_COLS, _PG_TYPES, ("request_id",))
_FEEDBACK = _CopySpec("feedback", FEEDBACK_COLS, _FEEDBACK_TYPES, ("event_key",))


@dataclass
class Batch:
    """Everything decoded from a run of messages, written in one transaction."""

    interactions: list[Row] = field(default_factory=list)
    feedback: list[Row] = field(default_factory=list)
    rejects: list[Row] = field(default_factory=list)
    # (topic, partition) -> next offset to consume
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    n_messages: int = 0
    generation: int = 0
    dlq_items: list[Any] = field(default_factory=list)  # rejects on their way to the dead-letter topic
    decoded: int = 0  # messages of the raw batch decoded so far (the batch is complete at n_messages)

    def __len__(self) -> int:
        return self.n_messages


@dataclass(frozen=True)
class WriteResult:
    """What one batch write changed."""

    inserted: int
    duplicates: int
    feedback_inserted: int
    rejects_inserted: int


class BatchWriter:
    """Writes batches for one consumer group into the database."""

    def __init__(self, engine: Engine, group_id: str) -> None:
        self.engine = engine
        self.group_id = group_id
        self.is_pg = engine.dialect.name == "postgresql"
        self._temp_ready: set[tuple[int, str]] = set()

    def write(
        self,
        batch: Batch,
        stream: Iterator[Row] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> WriteResult:
        """Write ``batch`` atomically; raises on database errors (nothing is then committed).

        ``stream``: the batch is still being decoded; the iterator yields its interaction rows
        (and fills ``batch`` as it goes: interactions, feedback, rejects). On PostgreSQL the rows
        are COPYed as they come, so the server works while the producer decodes. The iterator is
        exhausted when this returns; after an exception the caller must exhaust it before it
        retries with the completed ``batch``. ``before_commit`` runs inside the transaction once the
        batch is complete, before its rejects and offsets are written (it checks the batch and
        records the dead-letter outcome on the reject rows); if it raises, nothing is committed.
        """
        now = datetime.now(UTC)
        if stream is not None and not self.is_pg:
            for _ in stream:
                pass
            stream = None
        with self.engine.begin() as conn:
            if self.is_pg:
                inserted = self._pg_copy_direct(conn, _INTERACTIONS, batch.interactions, stream)
                if inserted is None:  # a duplicate in the batch: take the deduplicating path
                    inserted = self._pg_copy_insert(conn, _INTERACTIONS, batch.interactions)
                fb = self._pg_copy_direct(conn, _FEEDBACK, batch.feedback)
                if fb is None:  # a retried or replayed feedback event
                    fb = self._pg_copy_insert(conn, _FEEDBACK, batch.feedback)
            else:
                inserted = self._insert_ignore(conn, interactions, batch.interactions, ["request_id"])
                fb = self._insert_ignore(conn, feedback, batch.feedback, ["event_key"])
            if before_commit is not None:
                before_commit()
            rj = self._insert_ignore(
                conn,
                rejected_messages,
                batch.rejects,
                ["source_topic", "source_partition", "source_offset", "raw_sha256"],
            )
            self._store_offsets(conn, batch.offsets, now)
        return WriteResult(inserted, len(batch.interactions) - inserted, fb, rj)

    # -- PostgreSQL -------------------------------------------------------------------------
    def _pg_copy_direct(
        self, conn: Connection, spec: _CopySpec, rows: Sequence[Row], stream: Iterator[Row] | None = None
    ) -> int | None:
        """Binary COPY straight into the table: ~2x cheaper for the server than the temp-table path.

        Runs under a savepoint; if any row violates a unique key (a replayed or retried record) the
        savepoint is rolled back and None is returned, and the caller uses ``_pg_copy_insert``.
        With ``stream``, rows come from it (it ends up exhausted, so ``rows`` is then complete).
        """
        if stream is None and not rows:
            return 0
        import psycopg
        from psycopg.types.json import set_json_dumps

        raw = conn.connection.driver_connection
        assert raw is not None
        cols = spec.cols
        types = [("jsonb" if c in _JSON_COLS else t) for c, t in zip(cols, spec.types, strict=True)]
        with raw.cursor() as cur:
            set_json_dumps(_dumps, context=cur)
            cur.execute("SAVEPOINT dl_copy_direct")
            source: Iterable[Row] = rows if stream is None else stream
            n = 0
            try:
                with cur.copy(f"COPY {spec.table} ({', '.join(cols)}) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(types)
                    write_row = cp.write_row
                    values = itemgetter(*cols)  # one C call per row instead of a list comprehension
                    for r in source:
                        write_row(values(r))
                        n += 1
            except psycopg.errors.UniqueViolation:
                if stream is not None:
                    for _ in stream:  # complete the batch for the deduplicating path
                        pass
                cur.execute("ROLLBACK TO SAVEPOINT dl_copy_direct")
                return None
            cur.execute("RELEASE SAVEPOINT dl_copy_direct")
        return n

    def _pg_copy_insert(self, conn: Connection, spec: _CopySpec, rows: Sequence[Row]) -> int:
        """Binary COPY into a session temp table, then INSERT … ON CONFLICT DO NOTHING."""
        if not rows:
            return 0
        raw = conn.connection.driver_connection
        assert raw is not None
        tmp = f"_dl_{spec.table}"
        cols = spec.cols
        with raw.cursor() as cur:
            if (id(raw), tmp) not in self._temp_ready:
                coldefs = ", ".join(f"{c} {t}" for c, t in zip(cols, spec.types, strict=True))
                cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {tmp} ({coldefs}) ON COMMIT DELETE ROWS")
                self._temp_ready.add((id(raw), tmp))
            names = ", ".join(cols)
            json_idx = [i for i, c in enumerate(cols) if c in _JSON_COLS]
            with cur.copy(f"COPY {tmp} ({names}) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(list(spec.types))
                write_row = cp.write_row
                for r in rows:
                    vals = [r[c] for c in cols]
                    for i in json_idx:
                        if vals[i] is not None:
                            vals[i] = encode_json(vals[i])
                    write_row(vals)
            select = ", ".join(f"{c}::jsonb" if c in _JSON_COLS else c for c in cols)
            conflict = ", ".join(spec.conflict)
            cur.execute(
                f"INSERT INTO {spec.table} ({names}) SELECT {select} FROM {tmp} ON CONFLICT ({conflict}) DO NOTHING"
            )
            return max(cur.rowcount, 0)

    # -- both ---------------------------------------------------------------------------------
    def _insert_ignore(self, conn: Connection, table: Any, rows: Sequence[Row], keys: list[str]) -> int:
        if not rows:
            return 0
        dialect = postgresql if self.is_pg else sqlite
        stmt = dialect.insert(table).on_conflict_do_nothing(index_elements=keys)
        if self.is_pg:
            n = 0
            for r in rows:  # rejects are rare; one statement each gives exact counts
                n += max(conn.execute(stmt, r).rowcount, 0)
            return n
        before = conn.exec_driver_sql(f"SELECT count(*) FROM {table.name}").scalar_one()
        conn.execute(stmt, list(rows))
        after = conn.exec_driver_sql(f"SELECT count(*) FROM {table.name}").scalar_one()
        return int(after - before)

    def _store_offsets(self, conn: Connection, offsets: dict[tuple[str, int], int], now: datetime) -> None:
        if not offsets:
            return
        dialect = postgresql if self.is_pg else sqlite
        rows = [
            {"group_id": self.group_id, "topic": t, "partition": p, "next_offset": o, "updated_at": now}
            for (t, p), o in offsets.items()
        ]
        ins = dialect.insert(consumer_offsets)
        stmt = ins.on_conflict_do_update(
            index_elements=["group_id", "topic", "partition"],
            set_={"next_offset": ins.excluded.next_offset, "updated_at": ins.excluded.updated_at},
        )
        conn.execute(stmt, rows)

    def stored_offsets(self, topic_partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Next offsets stored for this group (only partitions that have one)."""
        wanted = set(topic_partitions)
        with self.engine.connect() as conn:
            res = conn.execute(consumer_offsets.select().where(consumer_offsets.c.group_id == self.group_id)).mappings()
            return {
                (r["topic"], r["partition"]): int(r["next_offset"])
                for r in res
                if (r["topic"], r["partition"]) in wanted
            }
