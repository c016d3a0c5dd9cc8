"""CLI commands: ``ingest``, ``load``, ``replay``, ``produce-sample``, ``demo``."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from driftloop.clikit import ConfigOpt, get_settings, prepare
from driftloop.ingest.produce import iter_jsonl, produce

log = logging.getLogger("driftloop.cli")


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGINT set ``stop`` (graceful); a second one exits at once (still safe: writes are atomic)."""

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            sys.stderr.write("second signal: exiting now\n")
            raise SystemExit(128 + signum)
        sys.stderr.write(f"received {signal.Signals(signum).name}; finishing the current batch...\n")
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def load(
    files: Annotated[list[str], typer.Argument(help="JSONL files (gzip or plain), one record per line; - for stdin.")],
    config: ConfigOpt = None,
    db_url: Annotated[str | None, typer.Option("--db-url", help="Database URL (default: database.url).")] = None,
    migrate: Annotated[bool, typer.Option(help="Apply database migrations first.")] = True,
    show_rejects: Annotated[int, typer.Option(min=0, help="Rejected lines to print (0: none).")] = 20,
) -> None:
    """Store JSONL records without a broker, through the decoder, redaction and writer `ingest` uses.

    Loading a file again stores nothing twice. Rejected lines are recorded (rejected_messages, with
    their line number) and counted; they never stop the load. Exit code 0 if every line was stored
    or already there, 1 if some were rejected.
    """
    missing = [f for f in files if f != "-" and not Path(f).is_file()]
    if missing:
        typer.echo(f"error: no such file: {', '.join(missing)}", err=True)
        raise typer.Exit(2)
    overrides = {"database": {"url": db_url}} if db_url else {}
    s = prepare_with(config, migrate, **overrides)
    from driftloop.ingest.load import load_files

    try:
        stats = load_files(s, files, progress=lambda m: typer.echo(m, err=True))
    except (RuntimeError, OSError, EOFError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for r in stats.rejects[:show_rejects]:
        typer.echo(f"rejected {r.source}:{r.line}: {r.reason}: {r.detail[:200]}", err=True)
    if stats.rejected > show_rejects:
        typer.echo(f"... {stats.rejected - min(show_rejects, len(stats.rejects))} more rejected line(s): "
                   "see the rejected_messages table", err=True)  # fmt: skip
    typer.echo(stats.summary())
    raise typer.Exit(1 if stats.rejected else 0)


def prepare_with(config: Path | None, migrate: bool, **overrides: Any) -> Any:
    """Settings with ``overrides`` (or exit 2), refusing what ingesting must refuse, migrated if asked."""
    from driftloop.clikit import refuse_unsafe, setup_logging

    setup_logging("WARNING")
    s = get_settings(config, **overrides)
    refuse_unsafe(s, config or "settings", ingest=True, api_host=None)
    if migrate:
        from driftloop.store.db import migrate as do_migrate

        do_migrate(s.database.url)
    return s


def register(app: typer.Typer) -> None:
    """Add the ingestion commands to the root CLI."""
    app.command("load")(load)

    @app.command("ingest")
    def ingest(
        config: ConfigOpt = None,
        migrate: Annotated[bool, typer.Option(help="Apply database migrations first.")] = True,
        stop_when_idle: Annotated[
            float | None, typer.Option(help="Exit after this many idle seconds with zero lag (for batch runs).")
        ] = None,
        progress: Annotated[float, typer.Option(help="Seconds between progress lines (0: none).")] = 10.0,
        log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
        stats_json: Annotated[Path | None, typer.Option(help="Write the final counters to this JSON file.")] = None,
    ) -> None:
        """Consume the configured Kafka topics into the database until SIGTERM/SIGINT."""
        s = prepare(config, log_level, migrate)
        from driftloop.ingest.service import IngestService
        from driftloop.ingest.step import tune_gc

        tune_gc()  # this process only ingests
        stop = threading.Event()
        install_signal_handlers(stop)
        stats = IngestService(s).run(stop, stop_when_idle_s=stop_when_idle, progress_every_s=progress or None)
        typer.echo(stats.summary())
        if stats_json:
            stats_json.write_text(json.dumps(stats.as_dict(), indent=2))

    @app.command("replay")
    def replay(
        file: Annotated[Path, typer.Argument(help="JSONL file (optionally .gz), one record per line.")],
        config: ConfigOpt = None,
        topic: Annotated[str | None, typer.Option(help="Target topic (default: the first input topic).")] = None,
        bootstrap: Annotated[str | None, typer.Option(help="Broker (default: kafka.bootstrap_servers).")] = None,
    ) -> None:
        """Send the lines of a JSONL file to a topic as-is (backfills, tests, demos)."""
        s = get_settings(config)
        if not file.exists():
            typer.echo(f"error: {file} does not exist", err=True)
            raise typer.Exit(2)
        t = topic or s.kafka.topics[0]
        n = produce(bootstrap or s.kafka.bootstrap_servers, t, iter_jsonl(file))
        typer.echo(f"sent {n} records from {file} to {t}")

    @app.command("produce-sample")
    def produce_sample(
        count: Annotated[int, typer.Option("--count", "-n", min=1, help="Records to send.")] = 1000,
        config: ConfigOpt = None,
        topic: Annotated[str | None, typer.Option(help="Target topic (default: the first input topic).")] = None,
        bootstrap: Annotated[str | None, typer.Option(help="Broker (default: kafka.bootstrap_servers).")] = None,
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
        bad: Annotated[bool, typer.Option(help="Also send one message of each bad-input class.")] = False,
        out: Annotated[Path | None, typer.Option(help="Write the JSONL to this file instead of sending.")] = None,
    ) -> None:
        """Generate synthetic v1 log records (with some PII and feedback) and send them."""
        from driftloop.ingest.sample import BAD_MESSAGES, sample_records

        values = [json.dumps(r).encode() for r in sample_records(count, seed=seed)]
        if bad:
            values.extend(BAD_MESSAGES.values())
        if out:
            out.write_bytes(b"\n".join(values) + b"\n")
            typer.echo(f"wrote {len(values)} records to {out}")
            return
        s = get_settings(config)
        t = topic or s.kafka.topics[0]
        n = produce(bootstrap or s.kafka.bootstrap_servers, t, values)
        typer.echo(f"sent {n} records to {t}")
