"""CLI: ``driftloop quality estimator train|score|show --model M`` (the learned quality estimator)."""

from __future__ import annotations

import json
from typing import Annotated, Any, NoReturn

import typer

from driftloop.clikit import ConfigOpt, settings_and_engine, setup_logging

quality_app = typer.Typer(help="Quality signals: the learned estimator.", no_args_is_help=True)
estimator_app = typer.Typer(
    help="The learned quality estimator (MiniLM + cheap features, calibrated): train it from the labels, score "
    "interactions with the champion, show its versions. Registry family: estimator:<model>.",
    no_args_is_help=True,
)
quality_app.add_typer(estimator_app, name="estimator")
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Workload (interactions.model_id).")]


def _fail(msg: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


@estimator_app.command("train")
def train(model: ModelOpt, config: ConfigOpt = None) -> None:
    """Train an estimator of MODEL on its human review and user feedback labels; register it (champion when its
    CV AUC is not lower than the current champion's)."""
    setup_logging("WARNING")
    from driftloop.retrain.estimator_jobs import EstimatorRefused, train_estimator

    s, eng = settings_and_engine(config)
    try:
        v = train_estimator(s, eng, model, actor="cli")
    except EstimatorRefused as e:
        _fail(str(e))
    m = v.metrics or {}
    role = "champion" if v.status == "promoted" else f"{v.status}, not champion"
    typer.echo(f"{v.family} {v.version} ({role}): estimator {(v.config or {}).get('estimator_version')}, "
               f"{m.get('n_train')} labels {m.get('sources')}, label rate {_f(m.get('label_rate'))}, "
               f"CV AUC {_f(m.get('cv_auc'))}, Brier {_f(m.get('brier'))}; artifact {v.adapter_path}")  # fmt: skip


@estimator_app.command("score")
def score(model: ModelOpt, config: ConfigOpt = None) -> None:
    """Score MODEL's unscored recent interactions with its champion estimator (idempotent)."""
    setup_logging("WARNING")
    from driftloop.monitor.estimator import EstimatorMismatch
    from driftloop.retrain.estimator_jobs import EstimatorRefused, score_interactions

    s, eng = settings_and_engine(config)
    try:
        st = score_interactions(s, eng, model)
    except (EstimatorRefused, EstimatorMismatch, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(f"{st.scored} interaction(s) scored by estimator:{st.version} in {st.batches} batch(es), "
               f"{st.errors} error(s)")  # fmt: skip
    if st.errors:
        raise typer.Exit(1)


@estimator_app.command("promote")
def promote(
    model: ModelOpt,
    version: Annotated[str, typer.Option("--version", help="Registry version label (v3) or id.")],
    config: ConfigOpt = None,
    reason: Annotated[str, typer.Option(help="Recorded in the registry's event log.")] = "promoted by hand",
) -> None:
    """Make VERSION MODEL's estimator champion (registry only: no serving target is touched, unlike
    `driftloop models promote`, which would switch the serving targets)."""
    setup_logging("WARNING")
    from driftloop.retrain.estimator_jobs import PROMOTED, family_of
    from driftloop.retrain.registry import ModelRegistry, RegistryError

    _, eng = settings_and_engine(config)
    reg = ModelRegistry(eng)
    try:
        v = reg.find(family_of(model), version)
        v = reg.promote(v.id, [], actor="cli", reason=reason, action=PROMOTED)
    except RegistryError as e:
        _fail(str(e))
    typer.echo(f"{v.family} {v.version} is the champion; score with it: driftloop quality estimator score "
               f"--model {model}")  # fmt: skip


@estimator_app.command("show")
def show(
    model: ModelOpt,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """MODEL's estimator versions, which one is champion, and their metrics."""
    setup_logging("WARNING")
    from driftloop.retrain.estimator_jobs import family_of
    from driftloop.retrain.registry import ModelRegistry

    _, eng = settings_and_engine(config)
    fam = family_of(model)
    reg = ModelRegistry(eng)
    versions = reg.versions(fam)
    if not versions:
        _fail(f"no estimator for {model!r} yet: run `driftloop quality estimator train --model {model}`")
    champ = reg.champion(fam)
    if as_json:
        doc: dict[str, Any] = {"family": fam, "champion": champ.version if champ else None,
                               "versions": [v.to_dict() for v in versions]}  # fmt: skip
        typer.echo(json.dumps(doc, default=str))
        return
    typer.echo(f"{fam}: champion {champ.version if champ else '-'}")
    for v in versions:
        m = v.metrics or {}
        mark = "*" if champ and champ.id == v.id else " "
        typer.echo(f"{mark} {v.version:<5} {v.status:<10} {(v.config or {}).get('estimator_version', '?')}  "
                   f"n={m.get('n_train')} rate={_f(m.get('label_rate'))} auc={_f(m.get('cv_auc'))} "
                   f"brier={_f(m.get('brier'))}  {v.created_at:%Y-%m-%d %H:%M}")  # fmt: skip


def _f(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) else "-"


def register(app: typer.Typer) -> None:
    """Add ``driftloop quality`` to the root CLI."""
    app.add_typer(quality_app, name="quality")
