"""``/metrics``: Prometheus text from the database (at scrape time) plus the in-process ingestion counters.

The database collector runs a few bounded queries per scrape (grouped counts over indexed columns,
the newest row per model); a query that fails (a table not migrated yet, the database down) is
skipped and counted in ``driftloop_metrics_query_errors``, so a scrape never fails as a whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select, text

log = logging.getLogger("driftloop.api.metrics")

F = TypeVar("F", GaugeMetricFamily, CounterMetricFamily)
# The receiver's counters (driftloop.api.receiver), in the process-wide registry like ingestion's: a request
# is counted once by its answer; records by what became of them (accepted: mapped to v1; produced: acked by
# the broker; rejected: malformed items answered as partial success; skipped: non-LLM spans and logs).
RECEIVER_REQUESTS = Counter("driftloop_receiver_requests", "Receiver requests answered, by format and HTTP status",
                            ["format", "status"])  # fmt: skip
RECEIVER_RECORDS = Counter("driftloop_receiver_records", "Receiver items by format and outcome "
                           "(accepted, produced, rejected, skipped)", ["format", "outcome"])  # fmt: skip

# Above this many rows PostgreSQL's planner estimate replaces count(*) for driftloop_interactions_stored.
EXACT_COUNT_MAX = 1_000_000


class DatabaseCollector(Collector):
    """Gauges read from the driftloop database when Prometheus scrapes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily("driftloop_metrics_query_errors", "Metric queries that failed in this scrape",
                                     labels=["query"])  # fmt: skip
        for name, fn in self._queries():
            try:
                with self.engine.connect() as c:
                    yield from fn(c)
            except Exception as e:  # a missing table or a database outage must not fail the scrape
                log.debug("metrics query %s failed: %s", name, e)
                errors.add_metric([name], 1.0)
        yield errors

    def _queries(self) -> list[tuple[str, Callable[[Any], Iterable[Metric]]]]:
        return [("ingest", _ingest), ("windows", _windows), ("alerts", _alerts), ("jobs", _jobs),
                ("retrain", _retrain), ("models", _models)]  # fmt: skip


def _grouped_count(c: Any, family: F, *cols: Any, where: Any = None) -> F:
    """``family`` with a sample per group of ``cols`` (its labels, in that order): the group's row count."""
    q = select(*cols, func.count()).group_by(*cols)
    if where is not None:
        q = q.where(where)
    for *labels, cnt in c.execute(q):
        family.add_metric([str(x) for x in labels], float(cnt))
    return family


def _ingest(c: Any) -> Iterable[Metric]:
    from driftloop.store.models import consumer_offsets, interactions, rejected_messages

    n: float | None = None
    if c.dialect.name == "postgresql":
        est = c.execute(text("SELECT reltuples FROM pg_class WHERE relname = 'interactions'")).scalar()
        n = float(est) if est is not None and est > EXACT_COUNT_MAX else None
    if n is None:
        n = float(c.execute(select(func.count()).select_from(interactions)).scalar_one())
    g = GaugeMetricFamily("driftloop_interactions_stored", "Interaction rows stored (estimate above 1e6 rows)")
    g.add_metric([], n)
    yield g
    last = GaugeMetricFamily(
        "driftloop_interactions_last_id", "Highest interaction row id (rate() of it ~ ingest rate)"
    )
    last.add_metric([], float(c.execute(select(func.max(interactions.c.id))).scalar() or 0))
    yield last
    rej = GaugeMetricFamily("driftloop_rejected_messages", "Rejected (dead-lettered) messages stored, by reason",
                            labels=["reason"])  # fmt: skip
    yield _grouped_count(c, rej, rejected_messages.c.reason)
    # rejects whose dead-letter copy failed: kept in rejected_messages, so nothing was lost (the
    # in-process counter driftloop_ingest_dlq_failures_total{reason} says why, when ingestion runs here)
    dlq = GaugeMetricFamily("driftloop_rejected_messages_dlq_failed",
                            "Rejected messages stored whose dead-letter copy failed, by reject reason",
                            labels=["reason"])  # fmt: skip
    yield _grouped_count(c, dlq, rejected_messages.c.reason, where=rejected_messages.c.dlq_status == "failed")
    off = GaugeMetricFamily("driftloop_consumer_offset", "Next offset to consume, as committed with the data",
                            labels=["group", "topic", "partition"])  # fmt: skip
    q = select(consumer_offsets.c.group_id, consumer_offsets.c.topic, consumer_offsets.c.partition,
               consumer_offsets.c.next_offset).limit(10_000)  # fmt: skip
    for grp, topic, part, nxt in c.execute(q):
        off.add_metric([grp, topic, str(part)], float(nxt))
    yield off


def _windows(c: Any) -> Iterable[Metric]:
    from driftloop.monitor.tables import monitor_windows as w

    checked = GaugeMetricFamily("driftloop_windows_checked", "Monitor windows checked, by model and status",
                                labels=["model", "status"])  # fmt: skip
    yield _grouped_count(c, checked, w.c.model_id, w.c.status)
    # per stream: a model's workloads have windows of their own (workload "" is the unnamed stream)
    stream = (w.c.model_id, w.c.workload, w.c.segment)
    newest = select(*stream, func.max(w.c.id).label("id")).where(w.c.status == "ok").group_by(*stream).subquery()
    rows = c.execute(select(*stream, w.c.drift_score, w.c.drifted, w.c.window_end, w.c.id)
                     .join(newest, newest.c.id == w.c.id).limit(10_000)).all()  # fmt: skip
    labels = ["model", "workload", "segment"]
    score = GaugeMetricFamily("driftloop_drift_score",
                              "Share of drifted signal groups (after Benjamini-Hochberg) in the newest checked window",
                              labels=labels)  # fmt: skip
    drifted = GaugeMetricFamily("driftloop_drifted", "1 if the newest checked window drifted", labels=labels)
    end = GaugeMetricFamily("driftloop_window_end_timestamp_seconds", "End of the newest checked window",
                            labels=labels)  # fmt: skip
    for model, wl, seg, sc, dr, we, _wid in rows:
        key = [model, wl, seg]
        if sc is not None:
            score.add_metric(key, float(sc))
        drifted.add_metric(key, 1.0 if dr else 0.0)
        end.add_metric(key, we.timestamp())
    yield from (score, drifted, end)


def _alerts(c: Any) -> Iterable[Metric]:
    from driftloop.monitor.alerts.tables import OPEN_STATES, alerts

    op = GaugeMetricFamily("driftloop_alerts_open", "Open (fired or acknowledged) alerts",
                           labels=["rule", "severity", "state"])  # fmt: skip
    yield _grouped_count(c, op, alerts.c.rule, alerts.c.severity, alerts.c.state, where=alerts.c.state.in_(OPEN_STATES))
    fired = CounterMetricFamily("driftloop_alerts_fired", "Alerts fired since the database was created",
                                labels=["rule"])  # fmt: skip
    yield _grouped_count(c, fired, alerts.c.rule)


def _jobs(c: Any) -> Iterable[Metric]:
    from driftloop.jobs import job_runs as j

    runs = GaugeMetricFamily("driftloop_job_runs", "Recorded scheduled-job runs (within retention), by job and status",
                             labels=["job", "status"])  # fmt: skip
    yield _grouped_count(c, runs, j.c.job, j.c.status)
    newest = select(j.c.job, func.max(j.c.id).label("id")).where(j.c.status != "running").group_by(j.c.job).subquery()
    rows = c.execute(select(j.c.job, j.c.status, j.c.duration_s, j.c.finished_at)
                     .join(newest, newest.c.id == j.c.id)).all()  # fmt: skip
    dur = GaugeMetricFamily("driftloop_job_last_duration_seconds", "Duration of the newest finished run",
                            labels=["job"])  # fmt: skip
    ok = GaugeMetricFamily("driftloop_job_last_succeeded", "1 if the newest finished run succeeded (or was skipped)",
                           labels=["job"])  # fmt: skip
    for job, st, d, _fin in rows:
        if d is not None:
            dur.add_metric([job], float(d))
        ok.add_metric([job], 0.0 if st == "failed" else 1.0)
    yield from (dur, ok)


def _retrain(c: Any) -> Iterable[Metric]:
    from driftloop.retrain.tables import retrain_jobs as r

    jobs = GaugeMetricFamily("driftloop_retrain_jobs", "Retrain jobs by policy and status", labels=["policy", "status"])
    yield _grouped_count(c, jobs, r.c.policy, r.c.status)
    newest = (select(r.c.policy, func.max(r.c.id).label("id")).where(r.c.status.in_(("succeeded", "failed", "cancelled")))
              .group_by(r.c.policy).subquery())  # fmt: skip
    dur = GaugeMetricFamily("driftloop_retrain_duration_seconds",
                            "Stage durations of the newest finished retrain job per policy (from its timings)",
                            labels=["policy", "stage"])  # fmt: skip
    for pol, timings in c.execute(select(r.c.policy, r.c.timings).join(newest, newest.c.id == r.c.id)):
        for k, v in (timings or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                dur.add_metric([pol, k.removesuffix("_s")], float(v))
    yield dur


def _models(c: Any) -> Iterable[Metric]:
    from driftloop.retrain.tables import model_aliases as a
    from driftloop.retrain.tables import model_versions as v

    champ = GaugeMetricFamily("driftloop_model_champion", "1 for the champion version of each model family",
                              labels=["family", "version", "version_id"])  # fmt: skip
    q = select(a.c.family, v.c.version, v.c.id).join(v, v.c.id == a.c.version_id).where(a.c.alias == "champion")
    for fam, ver, vid in c.execute(q):
        champ.add_metric([fam, ver, str(vid)], 1.0)
    yield champ
    vers = GaugeMetricFamily("driftloop_model_versions", "Registered model versions by family and status",
                             labels=["family", "status"])  # fmt: skip
    yield _grouped_count(c, vers, v.c.family, v.c.status)


class _Forward(Collector):
    """The process-wide registry (ingestion counters, process metrics) inside an app's own registry."""

    def collect(self) -> Iterator[Metric]:
        import driftloop.ingest.metrics  # noqa: F401  (defines the ingestion counters)

        yield from REGISTRY.collect()


def make_registry(engine: Engine) -> CollectorRegistry:
    """A registry with the database collector and the in-process metrics (one per app, so apps do not clash)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DatabaseCollector(engine))
    reg.register(_Forward())
    return reg


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
