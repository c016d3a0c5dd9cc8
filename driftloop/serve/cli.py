"""``driftloop serve``: the command-line entry point of the serving app."""

from __future__ import annotations

from typing import Annotated

import typer

from driftloop.clikit import ConfigOpt
from driftloop.serve.app import ServeState, create_serve_app
from driftloop.serve.errors import ServeError


def serve_command(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port; 0 picks a free one).")] = None,
    base_model: Annotated[str | None, typer.Option(help="Local model directory (serve.base_model).")] = None,
    adapter: Annotated[str | None, typer.Option(help="LoRA adapter directory to load at start.")] = None,
    model_id: Annotated[str | None, typer.Option(help="Served model name, logged as model_id.")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
) -> None:
    """Serve a base model + LoRA adapter (OpenAI API, vLLM adapter endpoints), logging to Kafka."""
    import uvicorn
    from pydantic import ValidationError

    from driftloop.clikit import get_settings, setup_logging
    from driftloop.settings import ServeSettings, format_validation_error

    setup_logging(log_level)
    s = get_settings(config)
    over = {k: v for k, v in {"host": host, "port": port, "base_model": base_model, "adapter": adapter,
                              "model_id": model_id}.items() if v is not None}  # fmt: skip
    try:  # command-line options beat the file and the environment
        serve_cfg = ServeSettings.model_validate({**s.serve.model_dump(), **over})
    except ValidationError as e:
        for p in format_validation_error(e):
            typer.echo(f"error: serve.{p}", err=True)
        raise typer.Exit(2) from None
    s = s.model_copy(update={"serve": serve_cfg})
    try:
        api = create_serve_app(s)
    except (ValueError, FileNotFoundError, ServeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    st: ServeState = api.state.serve
    typer.echo(f"driftloop serve: {serve_cfg.model_id} on http://{serve_cfg.host}:{serve_cfg.port}/v1 "
               f"(base {serve_cfg.base_model}, adapter {st.runtime.active or 'none'}, device {st.runtime.device}; "
               f"logging to {st.logger.topic if st.logger else 'nowhere'})", err=True)  # fmt: skip
    uvicorn.run(api, host=serve_cfg.host, port=serve_cfg.port, log_level=log_level.lower(), access_log=False,
                timeout_graceful_shutdown=30)  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the root CLI."""
    app.command("serve")(serve_command)
