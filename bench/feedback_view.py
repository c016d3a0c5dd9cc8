"""Benchmark: the ``feedback_latest`` view (migration 0009) vs the LATERAL query it replaced, on PostgreSQL.

Builds a throwaway database with ``--interactions`` requests over 7 days (two models) and about
``--feedback`` feedback rows (some requests rated twice, some feedback without a score), then times,
with ``EXPLAIN (ANALYZE)``, what reads positive feedback:

* the Quality dashboard's positive-rate stat for the last 24 h (``lateral``: the panel before the view;
  ``view``: the panel now; ``row_number``: the same through a ROW_NUMBER() view, the shape that cannot
  be pushed below the window function);
* the monitor's frame for one window of ``--window`` ids;
* the dataset builder's eligible rows for a 7-day lookback.

The view's SQL is read from the migration, so what is measured is what is deployed. Prints one
JSON object: median milliseconds per query and plan; ``--plans`` also prints the plans.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.dialects import postgresql

ROOT = Path(__file__).resolve().parents[1]

SETUP = """
CREATE TABLE interactions (id bigserial PRIMARY KEY, request_id varchar(256) NOT NULL UNIQUE,
  ts timestamptz NOT NULL, model_id varchar(256) NOT NULL, model_version varchar(256), prompt text NOT NULL,
  response text, latency_ms double precision, tokens_in integer, tokens_out integer, finish_reason varchar(64),
  reference text);
CREATE INDEX ix_interactions_model_ts ON interactions (model_id, ts);
CREATE INDEX ix_interactions_ts ON interactions USING brin (ts) WITH (pages_per_range = 32);
CREATE TABLE feedback (id bigserial PRIMARY KEY, event_key varchar(64) NOT NULL UNIQUE,
  request_id varchar(256) NOT NULL, ts timestamptz NOT NULL, score double precision, correction text);
CREATE INDEX ix_feedback_request_id ON feedback (request_id);
CREATE INDEX ix_feedback_ts ON feedback USING brin (ts) WITH (pages_per_range = 32);
INSERT INTO interactions (request_id, ts, model_id, prompt, response)
SELECT 'r' || g, now() - interval '7 days' + (g * (interval '7 days' / %(n)s)),
       CASE WHEN g %% 3 = 0 THEN 'b' ELSE 'a' END, 'prompt ' || g, 'response ' || g
FROM generate_series(1, %(n)s) g;
-- about feedback/n of the requests rated once, a tenth of those rated again later, some without a score
INSERT INTO feedback (event_key, request_id, ts, score, correction)
SELECT 'e' || i.id, i.request_id, i.ts + interval '1 minute',
       CASE WHEN i.id %% 17 = 0 THEN NULL ELSE (i.id %% 10) / 10.0 END,
       CASE WHEN i.id %% 23 = 0 THEN 'fixed' END
FROM interactions i WHERE random() < %(share)s;
INSERT INTO feedback (event_key, request_id, ts, score)
SELECT 'e2-' || f.id, f.request_id, f.ts + interval '1 hour', ((f.id * 7) %% 10) / 10.0
FROM feedback f WHERE f.id %% 10 = 0;
CREATE TABLE feedback_settings (id integer PRIMARY KEY, positive_threshold double precision NOT NULL);
INSERT INTO feedback_settings VALUES (1, 0.5)
"""

ROW_NUMBER_VIEW = """
CREATE VIEW feedback_latest_rn AS
SELECT l.request_id, l.score, l.ts, l.score >= s.positive_threshold AS positive
FROM (SELECT f.request_id, f.score, f.ts,
             ROW_NUMBER() OVER (PARTITION BY f.request_id ORDER BY f.ts DESC, f.id DESC) AS rn
      FROM feedback f WHERE f.score IS NOT NULL) l
LEFT JOIN feedback_settings s ON s.id = 1
WHERE l.rn = 1
"""

DAY = "i.ts BETWEEN now() - interval '{hours} hours' AND now()"
LATERAL = """JOIN LATERAL (SELECT fb.score FROM feedback fb WHERE fb.request_id = i.request_id AND fb.score IS NOT NULL
              ORDER BY fb.ts DESC, fb.id DESC LIMIT 1) f ON true"""


def _panel(title: str, day: str) -> str:
    """A Quality dashboard panel's SQL as deployed, macros expanded for the last 24 h of both models."""
    d = json.loads((ROOT / "dashboards/quality.json").read_text())
    (sql,) = [t["rawSql"] for p in d["panels"] if p["title"] == title for t in p["targets"]]
    return (sql.replace("$__timeFilter(i.ts)", day).replace("$model", "'a', 'b'")
            .replace("$__timeGroupAlias(i.ts, $__interval)", 'floor(extract(epoch from i.ts)/300)*300 AS "time"'))


def _pg(q: Any) -> str:
    return str(q.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def queries(ids: list[int], hours: float) -> dict[str, str]:
    """Before (the SQL each reader had) and now (the SQL it runs, taken from the code and the dashboard)."""
    from driftloop.monitor.windows import _frame_query
    from driftloop.retrain.dataset import _eligible_query

    now = datetime.now(UTC)
    day = DAY.format(hours=hours)
    stat, by_time = _panel("Feedback positive rate", day), _panel("Feedback positive rate (by time)", day)
    monitor_cols = ("i.id, i.ts, i.model_version, i.prompt, i.response, i.latency_ms, i.tokens_in, i.tokens_out, "
                    "i.finish_reason, i.reference")  # fmt: skip
    return {
        "dashboard_stat.lateral": f"SELECT avg(CASE WHEN f.score >= 0.5 THEN 1.0 ELSE 0.0 END) FROM interactions i\n"
                                  f"{LATERAL}\nWHERE {day} AND i.model_id IN ('a', 'b')",
        "dashboard_stat.view": stat,
        "dashboard_stat.row_number": stat.replace("feedback_latest", "feedback_latest_rn"),
        "dashboard_by_time.lateral": f"SELECT floor(extract(epoch from i.ts)/300)*300 AS \"time\", i.model_id, "
                                     f"avg(CASE WHEN f.score >= 0.5 THEN 1.0 ELSE 0.0 END) FROM interactions i\n"
                                     f"{LATERAL}\nWHERE {day} AND i.model_id IN ('a', 'b') GROUP BY 1, 2 ORDER BY 1",
        "dashboard_by_time.view": by_time,
        "monitor_frame.scalar_subquery": f"SELECT {monitor_cols}, (SELECT f.score FROM feedback f "
                                         "WHERE f.request_id = i.request_id AND f.score IS NOT NULL "
                                         "ORDER BY f.ts DESC, f.id DESC LIMIT 1) AS feedback_score\n"
                                         f"FROM interactions i WHERE i.id IN ({','.join(map(str, ids))})",
        "monitor_frame.view": _pg(_frame_query(tuple(ids))),
        "monitor_frame.row_number": _pg(_frame_query(tuple(ids))).replace("feedback_latest", "feedback_latest_rn"),
        "dataset_eligible.any_score": "SELECT i.request_id, i.ts, i.prompt, i.response, fb.score, fb.correction\n"
                                      "FROM interactions i JOIN feedback fb ON fb.request_id = i.request_id\n"
                                      "WHERE i.model_id = 'a' AND i.ts >= now() - interval '7 days' AND i.ts < now()\n"
                                      "  AND (fb.score >= 0.5 OR (fb.correction IS NOT NULL AND fb.correction <> ''))\n"
                                      "ORDER BY i.ts, fb.ts",
        "dataset_eligible.view": _pg(_eligible_query("a", now - timedelta(days=7), now, True)),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--interactions", type=int, default=200_000)
    ap.add_argument("--feedback", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=24, help="the dashboard's time range (last N hours)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--plans", action="store_true")
    a = ap.parse_args()
    mig = importlib.import_module("driftloop.migrations.versions.0009_feedback_positive")
    name = "bench_fb_" + uuid.uuid4().hex[:8]
    with psycopg.connect(a.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = a.admin_url.rsplit("/", 1)[0] + "/" + name
    out: dict[str, Any] = {"interactions": a.interactions, "window": a.window, "dashboard_hours": a.hours}
    try:
        with psycopg.connect(url, autocommit=True) as c:
            share = min(1.0, a.feedback / a.interactions / 1.1)
            for stmt in SETUP.split(";"):
                c.execute(stmt, {"n": a.interactions, "share": share})
            for stmt in (mig.VIEW_SQL, ROW_NUMBER_VIEW):
                c.execute(stmt)
            c.execute("VACUUM ANALYZE")
            out["feedback"] = c.execute("SELECT count(*) FROM feedback").fetchall()[0][0]
            ids = [r[0] for r in c.execute("SELECT id FROM interactions ORDER BY ts DESC LIMIT %s", (a.window,))]
            for key, sql in queries(ids, a.hours).items():
                times, plan = [], ""
                for _ in range(a.repeat):
                    rows = c.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql).fetchall()
                    plan = "\n".join(r[0] for r in rows)
                    times.append(float(plan.rsplit("Execution Time: ", 1)[1].split()[0]))
                out[key] = round(statistics.median(times), 2)
                if a.plans:
                    print(f"--- {key}\n{plan}\n")
    finally:
        with psycopg.connect(a.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(out))


if __name__ == "__main__":
    main()
