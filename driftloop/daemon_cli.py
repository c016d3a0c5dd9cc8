"""CLI: ``driftloop run`` and ``driftloop jobs list|run``."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from driftloop.cli import ConfigOpt, get_settings, setup_logging

jobs_app = typer.Typer(help="Scheduled jobs: list them, run one now.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``jobs`` to the root CLI."""

    @app.command("run")
    def run(
        config: ConfigOpt = None,
        ingest: Annotated[bool, typer.Option(help="Also consume Kafka in this process.")] = True,
        migrate: Annotated[bool, typer.Option(help="Apply database migrations first.")] = True,
        log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
    ) -> None:
        """Run the daemon: ingestion + leader election + scheduled jobs, until SIGTERM/SIGINT."""
        setup_logging(log_level)
        s = get_settings(config)
        if migrate:
            from driftloop.store.db import migrate as do_migrate

            do_migrate(s.database.url)
        from driftloop.daemon import Daemon
        from driftloop.ingest.cli import install_signal_handlers

        stop = threading.Event()
        install_signal_handlers(stop)
        Daemon(s, ingest=ingest and s.scheduler.ingest).run(stop)

    app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list(config: ConfigOpt = None, limit: Annotated[int, typer.Option(min=1)] = 20) -> None:
    """The jobs, their intervals and their most recent runs."""
    from sqlalchemy import select

    from driftloop.jobs import job_runs
    from driftloop.scheduler import JOB_SPECS
    from driftloop.store.db import create_engine_from_url

    s = get_settings(config)
    for job_id, (ref, attr) in JOB_SPECS.items():
        typer.echo(f"{job_id:<18} every {getattr(s.scheduler, attr):>6.0f}s  {ref}")
    eng = create_engine_from_url(s.database.url)
    with eng.connect() as c:
        rows = c.execute(select(job_runs).order_by(job_runs.c.id.desc()).limit(limit)).mappings().all()
    if rows:
        typer.echo("\nrecent runs:")
    for r in rows:
        dur = f"{r['duration_s']:.2f}s" if r["duration_s"] is not None else "-"
        typer.echo(f"  {r['started_at']:%Y-%m-%d %H:%M:%S} {r['job']:<18} {r['status']:<10} {dur:>8} "
                   f"{r['instance']}  {(r['result'] or (r['error'] or '').splitlines()[-1:] or [''])!s:.80}")  # fmt: skip


@jobs_app.command("run")
def jobs_run(name: Annotated[str, typer.Argument(help="window_check, alert_evaluation or retention.")],
             config: ConfigOpt = None) -> None:  # fmt: skip
    """Run one job now in this process (recorded in job_runs like a scheduled run)."""
    from driftloop.jobs import JOBS, run_job, set_context
    from driftloop.store.db import create_engine_from_url

    setup_logging("INFO")
    if name not in JOBS:
        typer.echo(f"error: unknown job {name!r}; known: {', '.join(JOBS)}", err=True)
        raise typer.Exit(2)
    s = get_settings(config)
    set_context(s, create_engine_from_url(s.database.url))
    status = run_job(name, JOBS[name])
    typer.echo(f"{name}: {status}")
    if status == "failed":
        raise typer.Exit(1)
