"""CLI: ``driftloop api serve`` (the HTTP API alone, without ingestion or the scheduler)."""

from __future__ import annotations

from typing import Annotated

import typer

from driftloop.clikit import ConfigOpt, prepare

api_app = typer.Typer(help="The HTTP API: health, metrics, status page, read and admin endpoints.",
                      no_args_is_help=True)  # fmt: skip


@api_app.command("serve")
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: api.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: api.port; 0 picks a free one).")] = None,
    migrate: Annotated[bool, typer.Option(help="Apply database migrations first.")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
) -> None:
    """Serve the API until SIGTERM/SIGINT (``driftloop run`` serves it too when api.enabled)."""
    import uvicorn

    from driftloop.api.app import create_app
    from driftloop.store.db import create_engine_from_url

    s = prepare(config, log_level, migrate, ingest=False, api=True, api_host=host)
    eng = create_engine_from_url(s.database.url, pool_size=s.database.pool_size)
    app = create_app(s, eng)
    h, p = host or s.api.host, s.api.port if port is None else port
    if not any(t.secret() for t in s.api.tokens):
        typer.echo("warning: no api.tokens configured (or their variables unset): mutating endpoints will refuse",
                   err=True)  # fmt: skip
    typer.echo(f"driftloop API on http://{h}:{p}/ (docs at /docs, metrics at /metrics)", err=True)
    try:
        uvicorn.run(app, host=h, port=p, log_level=log_level.lower(), access_log=False)
    finally:
        eng.dispose()


def register(app: typer.Typer) -> None:
    """Add ``api`` to the root CLI."""
    app.add_typer(api_app, name="api")
