"""Retrain runs: trigger checks, the job lifecycle, the training subprocess, the gate and promotion.

A run is one ``retrain_jobs`` row: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` |
``cancelled``. Rows are queued by :func:`~driftloop.retrain.queue.enqueue` (API, CLI, the
``retrain_check`` job) and claimed by the leader's worker (:mod:`driftloop.retrain.queue`), which
hands them to :meth:`RetrainRunner.execute`: it builds the dataset snapshot, starts
``python -m driftloop.retrain.worker`` (training and scoring happen there, so ingestion and monitoring
keep their CPU time and a crash in torch cannot take the daemon down), copies its progress into the
row, then applies the gate, registers the candidate and, if the gate passed and the policy approves
automatically, promotes it.

A ``distill`` or ``mix`` policy builds its snapshot from the teacher's answers (:mod:`driftloop.retrain.distill`),
adds the metrics ``similarity`` (and ``judge_win`` with ``gate.judge``) to the worker's scores before the gate,
and the gate decision carries a report of what was kept and saved (:mod:`driftloop.retrain.cost`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, and_, func, select, update

from driftloop.connectors.abc import PromotionTarget
from driftloop.retrain.dataset import DatasetError, build_snapshot, count_eligible
from driftloop.retrain.queue import enqueue
from driftloop.retrain.registry import ModelRegistry, ModelVersion, PromotionFailed
from driftloop.retrain.tables import ACTIVE_STATUSES, retrain_jobs
from driftloop.settings.retrain import PolicySettings
from driftloop.store.timestamps import utc

if TYPE_CHECKING:
    import httpx

    from driftloop.retrain.dataset import Snapshot
    from driftloop.retrain.distill import TeacherStats
    from driftloop.retrain.gate import ExampleScore

log = logging.getLogger("driftloop.retrain")

TERMINAL = ("succeeded", "failed", "cancelled")
HEARTBEAT_S = 10.0  # how often a running job's heartbeat_at is refreshed


class RetrainError(Exception):
    """A run that cannot start or failed; the message says what to do."""


def artifacts_dir(settings: Any) -> Path:
    return Path(settings.retrain.artifacts_dir or Path(settings.data_dir) / "retrain")


def find_policy(settings: Any, name: str) -> PolicySettings:
    for p in settings.retrain.policies:
        if p.name == name:
            return p
    names = [p.name for p in settings.retrain.policies]
    raise RetrainError(f"no retrain policy named {name!r}; configured: {names or 'none (see retrain.policies)'}")


def build_promotion_targets(settings: Any, names: list[str] | None = None) -> list[PromotionTarget]:
    """The configured targets (all, or those named), in configuration order."""
    from driftloop.connectors.registry import build_target

    out = []
    for t in settings.retrain.targets:
        if names is None or t.name in names:
            out.append(build_target(t, default_bootstrap=list(settings.kafka.bootstrap_servers)))
    return out


def targets_for_family(settings: Any, family: str) -> list[PromotionTarget]:
    """Targets named by the family's policies (all configured targets if no policy names any)."""
    names = sorted({t for p in settings.retrain.policies if p.model_id == family for t in p.targets})
    return build_promotion_targets(settings, names or None)


def _now() -> datetime:
    return datetime.now(UTC)


def recover_jobs(engine: Engine, instance: str) -> int:
    """Mark jobs left ``running`` by another (dead or demoted) instance as failed; kill their orphan worker.

    Called by a new leader before its worker claims anything: only the leader runs jobs, so a running
    job of another instance belongs to a leader that died (or lost its lock and cancels it), and only
    that daemon would have read its result. Queued jobs stay queued: this leader's worker runs them.
    """
    with engine.begin() as c:
        rows = c.execute(select(retrain_jobs.c.id, retrain_jobs.c.pid, retrain_jobs.c.instance).where(
            retrain_jobs.c.status == "running", retrain_jobs.c.instance.is_(None) | (retrain_jobs.c.instance != instance)
        )).all()  # fmt: skip
        for r in rows:
            if r.pid and r.instance and r.instance.split(":")[0] == os.uname().nodename:
                # the worker notices a dead parent by itself; this is a second line of defence
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(r.pid), signal.SIGKILL)
            c.execute(update(retrain_jobs).where(retrain_jobs.c.id == r.id).values(
                status="failed", finished_at=_now(), stage="done",
                error=f"abandoned: the daemon running it ({r.instance}) stopped or lost leadership before it "
                      "finished; the champion is unchanged. Run `driftloop retrain run POLICY` to try again."))  # fmt: skip
    if rows:
        log.warning("marked %d retrain job(s) of a stopped daemon as failed", len(rows))
    return len(rows)


@dataclass
class RunOutcome:
    """What a run did."""

    job_id: int
    status: str
    version: ModelVersion | None = None
    promoted: bool = False
    gate: dict[str, Any] | None = None
    message: str = ""


class RetrainRunner:
    """Runs claimed retrain jobs of the policies of one settings tree (used by the leader's worker).

    ``fence`` (the leadership check) is asked while a job runs: once it says no, the training
    subprocess is stopped and nothing is promoted, so a demoted leader never races its successor.
    """

    def __init__(self, settings: Any, engine: Engine, instance: str, *,
                 targets: Mapping[str, PromotionTarget] | None = None,
                 echo: Callable[[str], None] | None = None, fence: Callable[[], bool] | None = None,
                 http_transport: httpx.BaseTransport | None = None) -> None:  # fmt: skip
        """``http_transport``: for the teacher endpoint's and the judge's HTTP calls (tests); default: the network."""
        self.http_transport = http_transport
        self.settings = settings
        self.engine = engine
        self.instance = instance
        self.registry = ModelRegistry(engine)
        self._targets = dict(targets) if targets is not None else None
        self.echo = echo or (lambda s: log.info("%s", s))
        self.fence = fence or (lambda: True)

    # -- job rows --------------------------------------------------------------------------------
    def _update(self, job_id: int, **values: Any) -> None:
        with self.engine.begin() as c:
            c.execute(update(retrain_jobs).where(retrain_jobs.c.id == job_id).values(**values))

    def _finish(self, job_id: int, **values: Any) -> None:
        """Record the outcome, unless the job is no longer running (a new leader marked it abandoned)."""
        with self.engine.begin() as c:
            c.execute(update(retrain_jobs).where(retrain_jobs.c.id == job_id, retrain_jobs.c.status == "running")
                      .values(**values))  # fmt: skip

    def job(self, job_id: int) -> dict[str, Any]:
        return self.read_job(self.engine, job_id)

    @staticmethod
    def read_job(engine: Engine, job_id: int) -> dict[str, Any]:
        """The job's row; :class:`RetrainError` if there is none."""
        with engine.connect() as c:
            row = c.execute(select(retrain_jobs).where(retrain_jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise RetrainError(f"no retrain job {job_id}; see `driftloop retrain status`")
        return dict(row)

    def targets(self, policy: PolicySettings) -> list[PromotionTarget]:
        if self._targets is not None:
            return [self._targets[n] for n in policy.targets if n in self._targets]
        return build_promotion_targets(self.settings, list(policy.targets))

    # -- the run ---------------------------------------------------------------------------------
    def execute(self, job_id: int) -> RunOutcome:
        """Run claimed job ``job_id`` to the end (dataset, training, gate, registry, promotion).

        The job must be ``running`` and claimed by this instance (:func:`~driftloop.retrain.queue.claim`).
        """
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        work = artifacts_dir(self.settings) / "jobs" / f"job-{job_id}"
        try:
            row = self.job(job_id)
            if row["status"] != "running" or row["instance"] != self.instance:
                raise RetrainError(f"job {job_id} is {row['status']} for {row['instance'] or 'nobody'}, not claimed "
                                   f"by {self.instance}; only the leader's worker runs queued jobs")  # fmt: skip
        except RetrainError as e:
            self.echo(str(e))
            return RunOutcome(job_id, "failed", message=str(e))
        try:
            policy = find_policy(self.settings, row["policy"])
            work.mkdir(parents=True, exist_ok=True)
            self._update(job_id, stage="dataset", work_dir=str(work), logs_path=str(work / "train.log"),
                         heartbeat_at=_now())  # fmt: skip
            out = self._run(policy, job_id, work, timings)
        except Exception as e:
            status = "cancelled" if isinstance(e, _Cancelled) else "failed"
            msg = str(e) if isinstance(e, (RetrainError, DatasetError, _Cancelled, PromotionFailed)) else (
                f"{type(e).__name__}: {e}")  # fmt: skip
            timings["total_s"] = round(time.perf_counter() - t0, 3)
            self._finish(job_id, status=status, stage="done", finished_at=_now(), error=msg[:8000], timings=timings,
                         pid=None)  # fmt: skip
            if status == "failed" and not isinstance(e, (RetrainError, DatasetError, PromotionFailed)):
                log.exception("retrain job %d failed", job_id)
            self.echo(f"job {job_id} {status}: {msg}")
            return RunOutcome(job_id, status, message=msg)
        timings["total_s"] = round(time.perf_counter() - t0, 3)
        self._finish(job_id, status="succeeded", stage="done", progress=1.0, finished_at=_now(), timings=timings,
                     message=out.message[:2000], version_id=out.version.id if out.version else None,
                     pid=None)  # fmt: skip
        return out

    def _check_cancel(self, job_id: int) -> None:
        if self.job(job_id)["cancel_requested"]:
            raise _Cancelled("cancelled by request before training finished; the champion is unchanged")
        if not self.fence():
            raise _Cancelled(f"instance {self.instance} is no longer the leader; the champion is unchanged")

    def _run(self, policy: PolicySettings, job_id: int, work: Path, timings: dict[str, float]) -> RunOutcome:
        s = self.settings
        t = time.perf_counter()
        champion = self.registry.ensure_base(policy.model_id, policy.base_model)
        started = _now()
        teacher: TeacherStats | None = None
        if policy.mode == "sft":
            snap = build_snapshot(self.engine, policy.model_id, policy.data, artifacts_dir(s) / "datasets",
                                  positive_threshold=s.feedback.positive_threshold, policy=policy.name)  # fmt: skip
        else:
            from driftloop.retrain.distill import build_distill_snapshot

            snap, teacher = build_distill_snapshot(
                self.engine, policy, artifacts_dir(s) / "datasets", positive_threshold=s.feedback.positive_threshold,
                cache_dir=artifacts_dir(s) / "teacher-cache", now=started, transport=self.http_transport)  # fmt: skip
            self.echo(f"job {job_id}: teacher answers: {teacher.to_dict()}")
        timings["dataset_s"] = round(time.perf_counter() - t, 3)
        m = snap.manifest
        self.echo(f"job {job_id}: dataset {snap.path.name}: {m['train_rows']} train / {m['eval_rows']} eval rows "
                  f"({m['sources']}, dropped {m['dropped']})")  # fmt: skip
        self._update(job_id, dataset_hash=snap.content_hash, stage="training", progress=0.02,
                     message=f"dataset {snap.content_hash[:12]}: {m['train_rows']} train, {m['eval_rows']} eval")  # fmt: skip
        self._check_cancel(job_id)

        adapter_out = work / "adapter"
        tc = policy.training
        # the policy's validated settings, as the worker hands them to retrain.trainer.train_lora
        train_config = {**tc.model_dump(), "lora": policy.lora.model_dump()}
        request = {
            "base_model": policy.base_model, "champion_adapter": champion.adapter_path,
            "train_path": str(snap.path / "train.jsonl"), "eval_path": str(snap.path / "eval.jsonl"),
            "golden_path": policy.gate.golden_set, "adapter_out": str(adapter_out), "train_config": train_config,
            "max_new_tokens": policy.gate.max_new_tokens, "generate": policy.gate.generate,
        }  # fmt: skip
        (work / "request.json").write_text(json.dumps(request, indent=1), encoding="utf-8")
        t = time.perf_counter()
        result = self._train_subprocess(job_id, work, tc.timeout_minutes * 60)
        timings["train_eval_s"] = round(time.perf_counter() - t, 3)
        timings.update({f"worker_{k}": v for k, v in result.get("timings", {}).items()})

        self._check_cancel(job_id)
        self._update(job_id, stage="gating", progress=0.96, heartbeat_at=_now())
        from driftloop.retrain.gate import ExampleScore, decide

        g = policy.gate
        suites = {name: ([ExampleScore.from_dict(x) for x in v["champion"]],
                         [ExampleScore.from_dict(x) for x in v["candidate"]])
                  for name, v in result["scores"].items()}  # fmt: skip
        if g.estimate:  # the workload's estimator champion scores both models' answers (metric 'estimate')
            from driftloop.retrain.estimator_jobs import add_estimates, suite_prompts

            suites, est_notes = add_estimates(self.settings, self.engine, policy.model_id, suites,
                                              suite_prompts(snap.path / "eval.jsonl", g.golden_set))  # fmt: skip
            for note in est_notes:
                self.echo(f"job {job_id}: {note}")
        t = time.perf_counter()
        suites, extra_notes = self._teacher_metrics(policy, snap, suites)
        for note in extra_notes:
            self.echo(f"job {job_id}: {note}")
        decision = decide(suites, g)
        if policy.mode != "sft":
            import dataclasses

            report = self._distill_report(policy, snap, suites, teacher, started)
            decision = dataclasses.replace(decision, report=report, notes=decision.notes + extra_notes)
        timings["teacher_metrics_s"] = round(time.perf_counter() - t, 3)
        gate = decision.to_dict()
        self.echo(f"job {job_id}: gate {'PASSED' if decision.promote else 'REJECTED'} "
                  f"(candidate vs champion {champion.version})\n{decision.summary()}")  # fmt: skip
        status = "candidate" if not decision.promote else ("pending_approval" if policy.approval == "manual"
                                                          else "approved")  # fmt: skip
        version = self.registry.register(
            policy.model_id, policy.base_model, adapter_path=str(adapter_out),
            status="rejected" if not decision.promote else status, reason="; ".join(decision.reasons)[:4000],
            parent_id=champion.id, job_id=job_id, policy=policy.name, dataset_hash=snap.content_hash,
            dataset_path=str(snap.path), config={"train": train_config, "gate": g.model_dump(), "mode": policy.mode,
                                                 **({"teacher": policy.teacher.model_dump()} if policy.teacher else {})},
            metrics={"train": result["train"], "comparisons": gate["comparisons"]}, gate=gate)  # fmt: skip
        self.registry.set_status(version.id, version.status, "gate",
                                 reason="; ".join(decision.reasons)[:4000],
                                 action="gate_passed" if decision.promote else "gate_rejected")  # fmt: skip
        if not decision.promote:
            return RunOutcome(job_id, "succeeded", version, False, gate,
                              f"gate rejected {version.version}: " + "; ".join(decision.reasons))  # fmt: skip
        if policy.approval == "manual":
            return RunOutcome(job_id, "succeeded", version, False, gate,
                              f"{version.version} passed the gate and waits for approval: "
                              f"driftloop models approve {policy.model_id} {version.version}")  # fmt: skip
        self._check_cancel(job_id)  # a cancelled job or a demoted leader never promotes
        self._update(job_id, stage="promoting", progress=0.98, heartbeat_at=_now())
        t = time.perf_counter()
        v = self.registry.promote(version.id, self.targets(policy), actor="driftloop",
                                  reason=f"gate passed (job {job_id}): " + "; ".join(decision.reasons)[:2000])
        timings["promote_s"] = round(time.perf_counter() - t, 3)
        self.echo(f"job {job_id}: promoted {v.family} {v.version} to champion")
        return RunOutcome(job_id, "succeeded", v, True, gate, f"promoted {v.version}")

    def _teacher_metrics(self, policy: PolicySettings, snap: Snapshot,
                         suites: dict[str, tuple[list[ExampleScore], list[ExampleScore]]],
                         ) -> tuple[dict[str, tuple[list[ExampleScore], list[ExampleScore]]], list[str]]:  # fmt: skip
        """``suites`` with ``similarity`` (distill/mix, or named by the gate) and ``judge_win`` (``gate.judge``)
        against each row's reference; notes on what could not be scored."""
        from driftloop.retrain.distill import AnswerCache, JudgeRun, judge_win_values, similarity_values, suite_rows
        from driftloop.retrain.gate import with_metric

        g = policy.gate
        want_sim = g.generate and (policy.mode != "sft" or "similarity" in (g.primary, *g.guards))
        if not g.generate or not (want_sim or g.judge):
            return suites, []
        rows = suite_rows(snap.path / "eval.jsonl", g.golden_set)
        notes: list[str] = []
        out = dict(suites)
        embed: Callable[[list[str]], Any] | None = None
        if want_sim:
            try:
                from driftloop.monitor.embeddings import load_embedder

                e = self.settings.monitor.embeddings
                emb = load_embedder(e.model_path, e.runtime, e.cache_dir)
                embed = lambda texts: emb.encode(texts, 256)  # noqa: E731 - answers: more than the monitor's opening
            except Exception as ex:  # no embeddings extra: the gate says the metric was not computed
                notes.append(f"similarity not computed: the embedding model could not be loaded ({ex})")
        judge = None
        if g.judge:
            judge = next((j for j in self.settings.quality.judges if j.name == g.judge), None)
            if judge is None:
                names = [j.name for j in self.settings.quality.judges]
                notes.append(f"judge_win not computed: gate.judge {g.judge!r} is not configured (quality.judges: {names})")
        run = JudgeRun(g.judge or "")
        jcache = AnswerCache(artifacts_dir(self.settings) / "judge-cache")
        client = None
        if judge is not None:
            from driftloop.monitor.judge import JudgeClient

            client = JudgeClient(judge, judge.max_requests_per_run, transport=self.http_transport)
        try:
            for name, (champ, cand) in suites.items():
                r = rows.get(name, [])
                if len(r) != len(champ):
                    notes.append(f"{name}: {len(r)} rows for {len(champ)} scores; similarity and judge_win skipped")
                    continue
                refs, prompts = [x["reference"] for x in r], [x["prompt"] for x in r]
                sides = [champ, cand]
                if embed is not None:
                    a, b = (similarity_values([x.output for x in side], refs, embed) for side in sides)
                    if a is not None and b is not None:
                        sides = [with_metric(sides[0], "similarity", a), with_metric(sides[1], "similarity", b)]
                if judge is not None and client is not None:
                    wa, wb = (judge_win_values(judge, self.engine, prompts, [x.output for x in side], refs,
                                               cache=jcache, run=run, client=client) for side in sides)  # fmt: skip
                    if wa is not None and wb is not None:
                        sides = [with_metric(sides[0], "judge_win", wa), with_metric(sides[1], "judge_win", wb)]
                    else:
                        notes.append(f"judge_win on {name} not computed: {run.to_dict()}")
                out[name] = (sides[0], sides[1])
        finally:
            if client is not None:
                client.close()
        if judge is not None:
            notes.append(f"judge {judge.name}: {run.requests} request(s), {run.cache_hits} cached verdict(s)")
        return out, notes

    def _distill_report(self, policy: PolicySettings, snap: Snapshot,
                        suites: Mapping[str, tuple[list[ExampleScore], list[ExampleScore]]],
                        teacher: TeacherStats | None, now: datetime) -> dict[str, Any]:  # fmt: skip
        """What was kept and saved, on the held-out rows whose reference is the teacher's answer."""
        from driftloop.retrain.cost import build_report, speed_from_latencies, teacher_log_speed

        g = policy.gate
        champ, cand = suites.get("heldout", ([], []))
        sources = [str(r.get("source", "")) for r in snap.eval]
        if len(sources) != len(champ):  # the worker scored another file: keep every row
            sources = ["teacher_log"] * len(champ)
        keep = [i for i, src in enumerate(sources) if src.startswith("teacher_")]
        t = policy.teacher
        speed = None
        if t is not None and t.model_id is not None:
            speed = teacher_log_speed(self.engine, t.model_id, now - timedelta(hours=policy.data.lookback_hours), now,
                                      policy.data.workload)  # fmt: skip
        if speed is None and teacher is not None and teacher.endpoint_latency_ms:
            speed = speed_from_latencies("endpoint", teacher.endpoint_latency_ms)
        rep = build_report(policy.mode, [champ[i] for i in keep], [cand[i] for i in keep],
                           teacher_counts=teacher.to_dict() if teacher else {}, teacher_speed=speed,
                           confidence=g.confidence, n_bootstrap=g.n_bootstrap, seed=g.seed)  # fmt: skip
        return rep.to_dict()

    def _train_subprocess(self, job_id: int, work: Path, timeout_s: float) -> dict[str, Any]:
        py = self.settings.retrain.python or sys.executable
        logf = open(work / "train.log", "ab")  # noqa: SIM115 - handed to the child, closed below
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            proc = subprocess.Popen([py, "-m", "driftloop.retrain.worker", str(work)], stdout=logf, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)  # fmt: skip
        finally:
            logf.close()
        self._update(job_id, pid=proc.pid)
        self.echo(f"job {job_id}: training subprocess pid {proc.pid}, log {work / 'train.log'}")
        deadline = time.monotonic() + timeout_s
        last_msg = None
        last_beat = time.monotonic()
        cancelled = False
        while True:
            try:
                rc = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            prog = _read_progress(work)
            if prog and prog.get("message") != last_msg:
                last_msg = prog.get("message")
                last_beat = time.monotonic()
                self._update(job_id, stage=prog.get("stage"), progress=0.05 + 0.9 * float(prog.get("progress", 0)),
                             message=str(last_msg)[:2000], heartbeat_at=_now())  # fmt: skip
            elif time.monotonic() - last_beat >= HEARTBEAT_S:
                last_beat = time.monotonic()
                self._update(job_id, heartbeat_at=_now())
            if not cancelled and (self.job(job_id)["cancel_requested"] or not self.fence()):
                cancelled = True
                proc.terminate()
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RetrainError(f"training exceeded its timeout ({timeout_s / 60:.0f} min) and was killed; "
                                   "raise retrain.policies[].training.timeout_minutes or train on less data")  # fmt: skip
        if cancelled or rc == 3:
            raise _Cancelled("cancelled during training; the champion is unchanged")
        if rc != 0:
            tail = _tail(work / "train.log")
            how = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
            raise RetrainError(f"training subprocess failed ({how}); the champion is unchanged. "
                               f"Log {work / 'train.log'}; last lines:\n{tail}")  # fmt: skip
        return dict(json.loads((work / "result.json").read_text(encoding="utf-8")))


class _Cancelled(Exception):
    pass


def _read_progress(work: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((work / "progress.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def request_cancel(engine: Engine, job_id: int) -> str:
    """Ask a queued or running job to stop; returns its status after the request.

    A queued job is cancelled at once, unless the worker claimed it a moment ago (the update is
    guarded by ``status = 'queued'``): then its runner sees ``cancel_requested`` and stops it.
    """
    with engine.begin() as c:
        row = c.execute(select(retrain_jobs.c.status).where(retrain_jobs.c.id == job_id)).first()
        if row is None:
            raise RetrainError(f"no retrain job {job_id}; see `driftloop retrain status`")
        if row.status in TERMINAL:
            return str(row.status)
        queued = c.execute(update(retrain_jobs).where(retrain_jobs.c.id == job_id, retrain_jobs.c.status == "queued")
                           .values(status="cancelled", finished_at=_now(), stage="done", cancel_requested=True,
                                   error="cancelled before it started")).rowcount  # fmt: skip
        if queued:
            return "cancelled"
        c.execute(update(retrain_jobs).where(retrain_jobs.c.id == job_id, retrain_jobs.c.status.in_(ACTIVE_STATUSES))
                  .values(cancel_requested=True))  # fmt: skip
    return "cancelling"


def cancel_running(engine: Engine, instance: str) -> int:
    """Ask every job ``instance`` is running to stop (daemon shutdown, lost leadership); returns how many.

    Queued jobs stay queued for the next leader.
    """
    with engine.begin() as c:
        n = c.execute(update(retrain_jobs).where(retrain_jobs.c.status == "running", retrain_jobs.c.instance == instance)
                      .values(cancel_requested=True)).rowcount  # fmt: skip
    return int(n or 0)


# -- the scheduled job ----------------------------------------------------------------------------
@dataclass
class PolicyDecision:
    """Why a policy did or did not queue a run on this evaluation."""

    policy: str
    action: str  # queued | skipped
    reason: str
    job_id: int | None = None


class RetrainPolicyJob:
    """Scheduled: for each policy, if triggered and allowed (cooldown, runs per day, new data), queue a retrain.

    It never runs one: the leader's worker (:class:`~driftloop.retrain.queue.RetrainWorker`) does.
    """

    def __init__(self, settings: Any, engine: Engine, instance: str) -> None:
        self.settings = settings
        self.engine = engine
        self.instance = instance

    def triggered(self, policy: PolicySettings, now: datetime) -> dict[str, Any] | None:
        """The trigger that fired, or None: the policy's open alerts, as the alert engine left them.

        ``trigger.alerts`` names configured rules; ``trigger.condition`` is evaluated by the engine as
        the implicit rule ``retrain.trigger.<policy>`` (same hysteresis, same ``alerts`` rows). Nothing
        is evaluated here.
        """
        from driftloop.monitor.alerts.engine import open_alerts, trigger_rule_name

        implicit = trigger_rule_name(policy.name) if policy.trigger.condition else None
        rules = [*policy.trigger.alerts, *([implicit] if implicit else [])]
        fired: dict[str, Any] = {}
        for a in open_alerts(self.engine, rules, policy.model_id):
            if a.rule == implicit:
                fired["condition"] = {"condition": policy.trigger.condition, "alert_id": a.id,
                                      "fired_at": a.fired_at.isoformat(), "message": a.message}  # fmt: skip
            else:
                fired.setdefault("alerts", []).append({"id": a.id, "rule": a.rule, "fired_at": a.fired_at.isoformat()})
        return {"kind": "policy", **fired} if fired else None

    def check(self, policy: PolicySettings, now: datetime) -> tuple[dict[str, Any] | None, str]:
        """(trigger, "") when a run may be queued now, else (None, why not).

        Whether a run is already queued or running is not checked here: the queue's unique index
        decides that when the job is enqueued.
        """
        if not policy.enabled:
            return None, "disabled"
        trig = self.triggered(policy, now)
        if trig is None:
            return None, "not triggered"
        with self.engine.connect() as c:
            jobs = c.execute(select(retrain_jobs.c.status, retrain_jobs.c.created_at).where(
                retrain_jobs.c.policy == policy.name).order_by(retrain_jobs.c.created_at.desc())).all()  # fmt: skip
        if jobs and now - utc(jobs[0].created_at) < timedelta(minutes=policy.cooldown_minutes):
            left = timedelta(minutes=policy.cooldown_minutes) - (now - utc(jobs[0].created_at))
            return None, f"cooldown: last run started {utc(jobs[0].created_at).isoformat()}, {left} left"
        today = [j for j in jobs if now - utc(j.created_at) < timedelta(days=1)]
        if len(today) >= policy.max_runs_per_day:
            return None, f"max_runs_per_day reached ({len(today)} run(s) in the last 24 h)"
        since = now - timedelta(hours=policy.data.lookback_hours)
        with self.engine.connect() as c:
            last_ok = c.execute(select(func.max(retrain_jobs.c.created_at)).where(and_(
                retrain_jobs.c.policy == policy.name, retrain_jobs.c.status == "succeeded"))).scalar()  # fmt: skip
        if last_ok is not None:
            since = max(since, utc(last_ok))
        if policy.mode == "sft":
            n = count_eligible(self.engine, policy.model_id, since, now, policy.data,
                               positive_threshold=self.settings.feedback.positive_threshold)
        else:  # distillation learns from every production prompt of the workload
            from driftloop.retrain.distill import count_prompts

            n = count_prompts(self.engine, policy.model_id, since, now, policy.data.workload)
        if n < policy.min_new_samples:
            return (
                None,
                f"only {n} new eligible record(s) since {since.isoformat()} (min_new_samples {policy.min_new_samples})",
            )
        return {**trig, "eligible": n}, ""

    def run_once(self, now: datetime | None = None) -> list[PolicyDecision]:
        """Evaluate every policy once; queue a run of those that may start."""
        now = now or _now()
        out: list[PolicyDecision] = []
        if not self.settings.retrain.enabled:
            return out
        for policy in self.settings.retrain.policies:
            try:
                trig, why = self.check(policy, now)
                if trig is None:
                    log.debug("retrain policy %s: %s", policy.name, why)
                    out.append(PolicyDecision(policy.name, "skipped", why))
                    continue
                q = enqueue(self.engine, policy, trig, f"scheduler:{self.instance}")
            except Exception as e:  # one broken policy never stops the others
                log.exception("retrain policy %s: trigger check failed", policy.name)
                out.append(PolicyDecision(policy.name, "skipped", f"check failed: {e}"))
                continue
            if not q.created:
                out.append(PolicyDecision(policy.name, "skipped", f"a run of this policy is already in progress "
                                                                  f"(job {q.job_id}, {q.status})", q.job_id))  # fmt: skip
                continue
            log.info("retrain policy %s triggered: %s; job %d queued", policy.name, trig, q.job_id)
            out.append(PolicyDecision(policy.name, "queued", f"job {q.job_id} queued", q.job_id))
        return out
