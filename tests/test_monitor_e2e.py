"""Detection on real AlpacaEval traffic: Kafka (Tansu) -> ``driftloop run`` -> PostgreSQL -> alerts.

(a) quality drift with the same prompts: gpt4_1106_preview answers, then alpaca-7b answers;
(b) input drift with the same model: prompts from selfinstruct+helpful_base, then koala+vicuna;
The no-drift false-alarm rate (every shared model, >= 40 windows) is bench/detection.py's, with a
reduced case in tests/test_detection.py.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from driftloop.monitor.alerts.engine import evaluate, load_points
from driftloop.settings import load_settings
from driftloop.settings.conditions import parse_condition
from tests.alpaca import load, now_minus, to_log_records
from tests.helpers import stop_daemons
from tests.ingest_helpers import produce_values, wait_for

pytestmark = pytest.mark.slow

POLICY = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy/policies.example.yaml").read_text())
WINDOW = POLICY["monitor"]["window"]["size"]


def _scenarios(seed: int = 0) -> tuple[list[dict], list[dict], int, int]:
    rng = random.Random(seed)
    gpt4, alpaca = load("gpt4_1106_preview"), load("alpaca-7b")
    # (a) same prompts, the serving model switches after 4 windows (window 0 has no reference yet)
    order = list(range(len(gpt4)))
    rng.shuffle(order)
    a_rows = [gpt4[i] for i in order[: 4 * WINDOW]] + [alpaca[i] for i in order[: 3 * WINDOW]]
    # (b) same model, the prompt mix shifts after 2 windows (resampled with fresh ids to fill windows)
    before = [r for r in gpt4 if r["dataset"] in ("selfinstruct", "helpful_base")]
    after = [r for r in gpt4 if r["dataset"] in ("koala", "vicuna")]
    b_rows = [rng.choice(before) for _ in range(3 * WINDOW)] + [rng.choice(after) for _ in range(2 * WINDOW)]
    start = now_minus(6)
    recs_a = to_log_records(a_rows, start=start, model_id="assistant-quality", prefix="qa", seed=seed)
    recs_b = to_log_records(b_rows, start=start, model_id="assistant-input", prefix="in", seed=seed + 1)
    return recs_a, recs_b, 4, 3


def test_drift_detected_through_kafka_and_driftloop_run(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path
) -> None:
    import json

    recs_a, recs_b, switch_a, switch_b = _scenarios()
    cfg = {
        **POLICY,
        "database": {"url": pg_url},
        "kafka": {"bootstrap_servers": [kafka_bootstrap], "topics": [topics["logs"]], "dlq_topic": topics["dlq"],
                  "group_id": f"g-{topics['logs']}"},
        "scheduler": {"drift_check_s": 2, "policy_evaluation_s": 2, "leader_retry_s": 0.5},
        "api": {"enabled": False},
        "monitor": {**POLICY["monitor"], "reports_dir": str(tmp_path / "reports")},
    }  # fmt: skip
    path = tmp_path / "driftloop.yaml"
    path.write_text(yaml.safe_dump(cfg))
    merged = [v for pair in zip(recs_a, recs_b, strict=False) for v in pair] + recs_a[len(recs_b) :]
    produce_values(kafka_bootstrap, topics["logs"], [json.dumps(r).encode() for r in merged])
    n_windows = len(recs_a) // WINDOW + len(recs_b) // WINDOW
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftloop", "run", "--config", str(path)],
        stdout=open(log, "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"},
    )
    eng = create_engine(pg_url)

    def q(sql: str) -> list:
        with eng.connect() as c:
            return list(c.execute(text(sql)).all())

    try:
        wait_for(lambda: q("select count(*) from monitor_windows")[0][0] >= n_windows, 600, "all windows checked")
        wait_for(lambda: len(q("select 1 from alerts where rule = 'quality-drop'")) > 0, 60, "the quality alert")
        wait_for(lambda: len(q("select 1 from alerts where rule = 'dataset-drift' and model_id = 'assistant-input'")) > 0,
                 60, "the input drift alert")  # fmt: skip
    finally:
        stop_daemons(proc)
    assert q("select count(*) from interactions")[0][0] == len(recs_a) + len(recs_b)
    fired = q(
        "select a.rule, a.model_id, w.window_index from alerts a join monitor_windows w on w.id = a.window_id"
        " order by a.id"
    )
    # The live alert names the newest window checked when the policy ran; under load one drift pass may
    # check several windows, so the detection window is taken from the same decision code replayed over
    # the stored windows in order (what the live job saw, one window at a time).
    s = load_settings(path)
    index = {r[0]: r[1] for r in q("select id, window_index from monitor_windows")}
    first = {}
    for rule in s.alerts.rules:
        node = parse_condition(rule.condition)
        for model in ("assistant-quality", "assistant-input"):
            pts = [p for p in load_points(eng, model_id=model) if p.segment == ""]
            for i in range(len(pts)):
                if evaluate(node, pts[: i + 1], rule.windows, rule.of).decision == "firing":
                    first[(rule.name, model)] = index[pts[i].window_id]
                    break
    assert {(r, m) for r, m, _ in fired} >= {
        ("quality-drop", "assistant-quality"),
        ("dataset-drift", "assistant-input"),
    }
    qa = first[("quality-drop", "assistant-quality")]
    ib = first[("dataset-drift", "assistant-input")]
    print(f"\nquality drift: switch at window {switch_a}, alert at window {qa} (delay {qa - switch_a + 1} window(s))")
    print(f"input drift:   switch at window {switch_b}, alert at window {ib} (delay {ib - switch_b + 1} window(s))")
    assert switch_a <= qa <= switch_a + 1, "quality alert not within 2 windows of the switch"
    assert switch_b <= ib <= switch_b + 1, "input drift alert not within 2 windows of the switch"
    # nothing fired before the switches
    early = [(r, m, i) for r, m, i in fired if (m == "assistant-quality" and i < switch_a) or
             (m == "assistant-input" and i < switch_b)]  # fmt: skip
    assert not early, f"alerts before any drift: {early}"
    switch = {"assistant-quality": switch_a, "assistant-input": switch_b}
    assert all(idx >= switch[m] for (_r, m), idx in first.items()), f"a rule held before the switch: {first}"
    drifted_prompt = q(
        "select d.feature from drift_results d join monitor_windows w on w.id = d.window_id "
        f"where w.model_id = 'assistant-input' and w.window_index between {switch_b} and {ib} and d.drifted"
    )
    # the evidence is on the input side: prompt text/embedding/length or the prompts' language
    input_side = {
        "prompt",
        "prompt_embedding",
        "prompt_chars",
        "prompt_tokens",
        "prompt_words",
        "tokens_in",
        "language",
    }
    assert input_side & {r[0] for r in drifted_prompt}, drifted_prompt
    reports = q("select report_path from monitor_windows where report_path is not null")
    assert reports and all(Path(r[0]).exists() for r in reports)
    eng.dispose()
    assert proc.returncode == 0, log.read_text()[-3000:]
