"""CLI: ``driftloop run`` and ``driftloop jobs list|run``."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Annotated

import typer

from driftloop.clikit import ConfigOpt, get_settings, prepare, setup_logging

jobs_app = typer.Typer(help="Scheduled jobs: list them with their recent runs, run one now.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``jobs`` to the root CLI."""

    @app.command("run")
    def run(
        config: ConfigOpt = None,
        ingest: Annotated[bool, typer.Option(help="Also consume Kafka in this process (scheduler.ingest).")] = True,
        migrate: Annotated[bool, typer.Option(help="Apply database migrations first.")] = True,
        api: Annotated[bool, typer.Option(help="Serve the HTTP API and status page (api.enabled).")] = True,
        log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
    ) -> None:
        """Run the daemon: ingestion + leader election + scheduled jobs + HTTP API, until SIGTERM/SIGINT.

        Several daemons may share one database: all ingest, exactly one (the leader) runs the jobs.
        """
        s = prepare(config, log_level, migrate, ingest=None if ingest else False, api=None if api else False)
        from driftloop.daemon import Daemon
        from driftloop.ingest.cli import install_signal_handlers

        stop = threading.Event()
        install_signal_handlers(stop)
        rc = Daemon(s, ingest=ingest and s.scheduler.ingest, api=api and s.api.enabled).run(stop)
        if rc:
            raise typer.Exit(rc)

    app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list(
    config: ConfigOpt = None, limit: Annotated[int, typer.Option(min=1, help="Recent runs shown.")] = 20
) -> None:
    """The jobs, their intervals and next runs, the current leader and the most recent runs."""
    from sqlalchemy import inspect, select, text

    from driftloop.jobs import JOBS, job_runs
    from driftloop.scheduler import JOBSTORE_TABLE
    from driftloop.store.db import create_engine_from_url

    s = get_settings(config)
    eng = create_engine_from_url(s.database.url)
    nxt: dict[str, float] = {}
    if inspect(eng).has_table(JOBSTORE_TABLE):
        with eng.connect() as c:
            nxt = {r[0]: r[1] for r in c.execute(text(f"SELECT id, next_run_time FROM {JOBSTORE_TABLE}"))}
    for name, spec in JOBS.items():
        iv = spec.interval_s(s)
        when = "disabled" if not iv else f"every {iv:g}s"
        nr = nxt.get(name)
        nr_s = f"next {datetime.fromtimestamp(nr, UTC):%Y-%m-%d %H:%M:%S}Z" if nr else "not scheduled yet"
        typer.echo(f"{name:<18} {when:<14} {nr_s if iv else '':<30} {spec.description}")
    from driftloop.leader import current_leader

    leader = current_leader(eng, s.scheduler.leader_lock_id)
    if eng.dialect.name == "postgresql":
        typer.echo(f"\nleader: {leader or 'none (no driftloop run holds the lock)'}")
    with eng.connect() as c:
        rows = c.execute(select(job_runs).order_by(job_runs.c.id.desc()).limit(limit)).mappings().all()
    typer.echo("\nrecent runs:" if rows else "\nno runs recorded yet")
    for r in rows:
        dur = f"{r['duration_s']:.2f}s" if r["duration_s"] is not None else "-"
        last_err = (r["error"] or "").strip().splitlines()[-1:] or [""]
        typer.echo(f"  {r['started_at']:%Y-%m-%d %H:%M:%S} {r['job']:<18} {r['status']:<10} {dur:>8} "
                   f"{r['instance']}  {(r['result'] or last_err[0])[:100]}")  # fmt: skip
    eng.dispose()


@jobs_app.command("run")
def jobs_run(name: Annotated[str, typer.Argument(help="drift_check, quality_check, policy_evaluation or retention.")],
             config: ConfigOpt = None) -> None:  # fmt: skip
    """Run one job now in this process (recorded in job_runs like a scheduled run); exit 1 if it failed."""
    from driftloop.clikit import default_instance
    from driftloop.jobs import JOB_ALIASES, JOBS, JobContext, resolve_job, run_job
    from driftloop.store.db import create_engine_from_url

    setup_logging("INFO")
    try:
        name = resolve_job(name)
    except KeyError:
        typer.echo(f"error: unknown job {name!r}; known jobs: {', '.join(JOBS)} "
                   f"(aliases: {', '.join(JOB_ALIASES)})", err=True)  # fmt: skip
        raise typer.Exit(2) from None
    s = get_settings(config)
    eng = create_engine_from_url(s.database.url)
    status = run_job(name, JOBS[name].unit, JobContext(s, eng, default_instance() + " (cli)"))
    eng.dispose()
    typer.echo(f"{name}: {status}")
    if status == "failed":
        raise typer.Exit(1)
