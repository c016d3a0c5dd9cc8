"""The gate against a teacher: metrics similarity (the shipped MiniLM) and judge_win (a scripted judge over
HTTP) through the paired bootstrap and the decision; the report of retained quality and cost from known
inputs; and one retrain run in distill mode on the toy model, end to end."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from driftloop.retrain.cost import (
    DistillReport,
    build_report,
    report_lines,
    retained_quality,
    speed_from_latencies,
    student_speed,
    teacher_log_speed,
)
from driftloop.retrain.distill import AnswerCache, JudgeRun, judge_win_values, similarity_values
from driftloop.retrain.gate import ExampleScore, GateDecision, decide, paired_bootstrap, with_metric
from driftloop.settings.retrain import GateSettings
from driftloop.store.db import create_engine_from_url
from tests.monitor_helpers import T0, insert_rows, interaction
from tests.test_judge import Stub, judge_settings, stub  # noqa: F401 - the scripted judge fixture

N = 30


def refs(n: int = N) -> list[str]:
    return [f"To reset the password of account {i}, open settings and choose reset password." for i in range(n)]


def scores(outputs: list[str]) -> list[ExampleScore]:
    return [ExampleScore(nll=10.0, n_tokens=5, rouge_l=0.1, output=o) for o in outputs]


# ------------------------------------------------------------------------------------------------ similarity
def test_similarity_primary_promotes_a_candidate_that_answers_like_the_teacher() -> None:
    from driftloop.monitor.embeddings import load_embedder

    emb = load_embedder()

    def embed(texts: list[str]) -> Any:
        return emb.encode(texts, 256)

    r = refs()
    champ_out = [f"The weather in city {i} is sunny today." for i in range(N)]  # off-topic answers
    cand_out = [f"Open settings and choose reset password for account {i}." for i in range(N)]
    ch_sim = similarity_values(champ_out, r, embed)
    ca_sim = similarity_values(cand_out, r, embed)
    assert ch_sim is not None and ca_sim is not None
    assert similarity_values([r[0]], [r[0]], embed) == [pytest.approx(1.0, abs=1e-5)]
    assert similarity_values([""], [r[0]], embed) == [0.0]  # an empty answer keeps nothing
    assert similarity_values([None], [r[0]], embed) is None
    champ = with_metric(scores(champ_out), "similarity", ch_sim)
    cand = with_metric(scores(cand_out), "similarity", ca_sim)
    imp, lo, hi = paired_bootstrap(champ, cand, "similarity", n_bootstrap=500)
    assert lo > 0.2 and lo <= imp <= hi
    spec = GateSettings(primary="similarity", guards={}, min_examples=20, n_bootstrap=500, min_improvement=0.1)
    d = decide({"heldout": (champ, cand)}, spec)
    assert d.promote, d.reasons
    assert d.comparison("similarity") is not None and "judge_win" not in {c.metric for c in d.comparisons}
    assert not any("judge_win" in n for n in d.notes)  # not configured: not even a note
    # the other way round, and a margin above what is there: rejected
    assert not decide({"heldout": (cand, champ)}, spec).promote
    assert not decide({"heldout": (champ, cand)}, spec.model_copy(update={"min_improvement": 0.99})).promote
    # a similarity primary that was not computed cannot pass
    d2 = decide({"heldout": (scores(champ_out), scores(cand_out))}, spec)
    assert not d2.promote and any("similarity on heldout: not computed" in x for x in d2.reasons)


def test_example_scores_round_trip_the_new_fields() -> None:
    s = ExampleScore(nll=1.0, n_tokens=2, similarity=0.5, judge_win=1.0, gen_latency_s=0.25, gen_tokens=7, gen_batch=4)
    assert ExampleScore.from_dict(s.to_dict()) == s
    assert ExampleScore.from_dict({"nll": 1, "n_tokens": 2}).similarity is None  # results of older workers
    with pytest.raises(ValueError, match="3 values for 2"):
        with_metric([s, s], "similarity", [1.0, 2.0, 3.0])


# ------------------------------------------------------------------------------------------------ judge_win
def _prefers(marker: str) -> Any:
    """A judge that prefers the answer containing ``marker`` (else a tie), wherever it is shown."""

    def reply(body: dict[str, Any]) -> tuple[int, dict[str, str], str]:
        text = str(body["messages"][-1]["content"])
        a = re.search(r"Answer A:\n(.*?)\n\nAnswer B:", text, re.S)
        b = re.search(r"Answer B:\n(.*?)\n\nDecide", text, re.S)
        assert a and b, text
        if marker in a.group(1) and marker not in b.group(1):
            return 200, {}, "A is better.\nPREFERENCE: A"
        if marker in b.group(1) and marker not in a.group(1):
            return 200, {}, "B is better.\nPREFERENCE: B"
        return 200, {}, "Same.\nPREFERENCE: TIE"

    return reply


def test_judge_win_from_a_pairwise_judge_with_cache_and_budget(stub: Stub, pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    eng = create_engine_from_url(pg_url)
    stub.reply = _prefers("GOOD")
    r = refs(N)
    prompts = [f"How do I reset account {i}?" for i in range(N)]
    cand_out = [f"GOOD answer {i}" if i % 3 else f"plain answer {i}" for i in range(N)]  # 2/3 win, 1/3 lose
    champ_out = [f"plain reply {i}" for i in range(N)]  # never better than the reference
    r = ["GOOD " + x if i % 3 == 0 else x for i, x in enumerate(r)]  # the reference wins where the answer is plain
    cache = AnswerCache(tmp_path / "judge-cache")
    # a pointwise judge is asked with the shipped pairwise rubric
    s = judge_settings(stub.url, mode="pointwise", max_requests_per_run=1000)
    run = JudgeRun(s.name)
    cand = judge_win_values(s, eng, prompts, cand_out, r, cache=cache, run=run)
    champ = judge_win_values(s, eng, prompts, champ_out, r, cache=cache, run=run)
    assert cand is not None and champ is not None
    assert cand == [0.0 if i % 3 == 0 else 1.0 for i in range(N)]
    assert champ == [0.0 if i % 3 == 0 else 0.5 for i in range(N)]  # plain vs plain: a tie
    assert run.requests == 2 * N == len(stub.requests) and run.cache_hits == 0
    positions = {("Answer A:\nGOOD" in str(b["messages"][-1]["content"])) for _, b, _ in stub.requests[:N]}
    assert positions == {True, False}  # the order is chosen by content: both positions occur
    # the same content again: every verdict from the cache, no request
    run2 = JudgeRun(s.name)
    assert judge_win_values(s, eng, prompts, cand_out, r, cache=cache, run=run2) == cand
    assert run2.requests == 0 and run2.cache_hits == N and len(stub.requests) == 2 * N
    # through the gate: judge_win as the primary
    cs = with_metric(scores(champ_out), "judge_win", champ)
    ca = with_metric(scores(cand_out), "judge_win", cand)
    spec = GateSettings(primary="judge_win", judge="stub", guards={}, min_examples=20, n_bootstrap=500)
    d = decide({"heldout": (cs, ca)}, spec)
    c = d.comparison("judge_win")
    assert d.promote and c is not None and c.candidate == pytest.approx(2 / 3) and c.champion == pytest.approx(1 / 3)
    # a budget smaller than the suite: no metric with holes
    run3 = JudgeRun(s.name)
    small = judge_settings(stub.url, mode="pairwise", max_requests_per_run=3)
    assert judge_win_values(small, eng, prompts, [x + "!" for x in cand_out], r, cache=cache, run=run3) is None
    assert run3.budget_exhausted and run3.requests == 3
    eng.dispose()


# ------------------------------------------------------------------------------------------------ the report
def test_cost_report_numbers_from_known_inputs(pg_url: str) -> None:
    # two generate calls: two examples in 1.0 s (10 and 20 tokens), two in 0.5 s (5 and 5 tokens)
    cand = [ExampleScore(nll=1, n_tokens=1, gen_latency_s=t, gen_tokens=k, gen_batch=2, similarity=sim,
                         judge_win=w, rouge_l=rl)
            for t, k, sim, w, rl in [(1.0, 10, 0.8, 1.0, 0.5), (1.0, 20, 0.9, 1.0, 0.5), (0.5, 5, 1.0, 0.5, 0.5),
                                     (0.5, 5, 0.7, 1.0, 0.5)]]  # fmt: skip
    champ = [ExampleScore(nll=1, n_tokens=1, similarity=0.5, judge_win=0.0, rouge_l=0.25) for _ in cand]
    st = student_speed(cand)
    assert st is not None and st.source == "eval" and st.n == 4
    assert st.tokens_per_s == pytest.approx(40 / 1.5)  # each call's time counted once
    assert st.p50_ms == pytest.approx(750.0) and st.p95_ms == pytest.approx(1000.0) and st.mean_tokens == 10.0
    assert student_speed([ExampleScore(nll=1, n_tokens=1)]) is None

    # the teacher's latency from its logs (of its workload), tokens/s over rows with both numbers
    eng = create_engine_from_url(pg_url)
    rows = [{**interaction(i, model="teacher", latency=float(ms)), "tokens_out": 30, "workload": "w"}
            for i, ms in enumerate([100, 200, 300, 400, 500])]  # fmt: skip
    rows.append({**interaction(9, model="teacher", latency=9000.0), "workload": "other"})
    insert_rows(eng, rows)
    t = teacher_log_speed(eng, "teacher", T0 - timedelta(hours=1), T0 + timedelta(hours=1), "w")
    assert t is not None and (t.source, t.n, t.p50_ms, t.mean_tokens) == ("logs", 5, 300.0, 30.0)
    assert t.p95_ms == pytest.approx(480.0) and t.tokens_per_s == pytest.approx(150 / 1.5)
    assert teacher_log_speed(eng, "nobody", T0 - timedelta(hours=1), T0 + timedelta(hours=1)) is None
    eng.dispose()
    ep = speed_from_latencies("endpoint", [50.0, 150.0])
    assert ep is not None and ep.p50_ms == 100.0 and ep.tokens_per_s is None

    ret = {r.metric: r for r in retained_quality(champ, cand, n_bootstrap=500)}
    assert set(ret) == {"similarity", "judge_win", "rouge_l"}  # bleu was not computed: left out
    assert ret["similarity"].retained == pytest.approx(0.85) and ret["similarity"].champion_retained == 0.5
    assert ret["similarity"].ci_low <= 0.85 <= ret["similarity"].ci_high
    assert ret["judge_win"].retained == 1.0 and ret["judge_win"].candidate == pytest.approx(0.875)  # a win rate over 0.5: capped
    assert ret["judge_win"].champion_retained == 0.0
    assert ret["rouge_l"].retained == 0.5 and ret["rouge_l"].ci_low == ret["rouge_l"].ci_high == 0.5

    rep = build_report("distill", champ, cand, teacher_counts={"from_logs": 4, "from_endpoint": 0}, teacher_speed=t,
                       n_bootstrap=500)  # fmt: skip
    assert rep.latency_ratio == pytest.approx(300 / 750)
    d = rep.to_dict()
    assert d["student"]["tokens_per_s"] == pytest.approx(40 / 1.5) and d["teacher_speed"]["p50_ms"] == 300.0
    text = "\n".join(report_lines(d))
    assert "similarity  85.0%" in text and "champion 50.0%" in text and "2.50x slower" in text
    assert "from_logs 4" in text
    # the decision carries the report through JSON (the registry, `models show`)
    dec = GateDecision(True, "similarity", ["ok"], [], {"confidence": 0.95}, report=d)
    back = GateDecision.from_dict(dec.to_dict())
    assert back.report == d and "quality retained vs the teacher" in back.summary()
    assert "report" not in GateDecision(True, "perplexity", [], [], {}).to_dict()  # sft decisions are unchanged
    empty = DistillReport("distill").to_dict()
    assert "(no metric)" in "\n".join(report_lines(empty))


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_a_distill_retrain_run_on_the_toy_model_reports_what_was_kept_and_saved(
    pg_url: str, tmp_path: Path, toy_base_model: Path
) -> None:
    """The student (the toy model, trained on domain A) serves domain B badly; the teacher's shadow answers
    to the same prompts are logged. A distill run trains on them and gates against the teacher."""
    from driftloop.retrain.dataset import near_key
    from driftloop.retrain.registry import ModelRegistry
    from driftloop.retrain.runner import RetrainRunner
    from driftloop.settings import load_settings
    from tests.alpaca import store_records
    from tests.retrain_helpers import run_retrain, toy_records

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    student = toy_records("B", 160, start=start, model_id="toy", good=False, correction_rate=0.0, prefix="s", seed=4)
    teacher = toy_records("B", 160, start=start + timedelta(seconds=1), model_id="teacher", prefix="t", seed=4)
    for r in teacher:
        r.pop("feedback")  # shadow traffic: nobody rates the teacher's answers
    assert [r["prompt"] for r in student] == [r["prompt"] for r in teacher]
    store_records(pg_url, student + teacher, topic="t")
    s = load_settings(None, database={"url": pg_url}, data_dir=str(tmp_path / "data"), retrain={"policies": [{
        "name": "toy-distill", "model_id": "toy", "base_model": str(toy_base_model), "trigger": {"alerts": ["x"]},
        "mode": "distill", "teacher": {"model_id": "teacher"},
        "data": {"eval_fraction": 0.2, "min_eval_samples": 20},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "training": {"epochs": 4, "learning_rate": 3e-3, "batch_size": 16, "max_length": 96},
        "gate": {"n_bootstrap": 500, "min_examples": 20, "max_new_tokens": 24, "guards": {}},
    }]}, alerts={"rules": [{"name": "x", "condition": "quality.feedback_positive_rate < 0.3"}]})  # fmt: skip
    eng = create_engine_from_url(pg_url)
    lines: list[str] = []
    out = run_retrain(s, eng, s.retrain.policies[0], {"kind": "manual"}, RetrainRunner(s, eng, "leader",
                                                                                        echo=lines.append))  # fmt: skip
    print("\n".join(lines))
    assert out.status == "succeeded", out.message
    gate = out.gate
    assert gate is not None and gate["promote"], gate["reasons"]
    rep = gate["report"]
    distinct = len({near_key(r["prompt"]) for r in student})  # the toy domain repeats some prompts
    assert rep["mode"] == "distill" and rep["teacher"]["prompts"] == distinct
    assert rep["teacher"]["from_logs"] == distinct and rep["teacher"]["requests"] == 0
    ret = {r["metric"]: r for r in rep["retained"]}
    assert {"similarity", "rouge_l", "bleu"} <= set(ret)
    # the candidate learned the teacher's answers: it keeps more of them than the champion did
    assert ret["similarity"]["retained"] > ret["similarity"]["champion_retained"]
    assert ret["rouge_l"]["retained"] > ret["rouge_l"]["champion_retained"]
    sim = next(c for c in gate["comparisons"] if c["metric"] == "similarity" and c["suite"] == "heldout")
    assert sim["ci_low"] > 0
    assert rep["student"]["source"] == "eval" and rep["student"]["tokens_per_s"] > 0
    lat = sorted(r["latency_ms"] for r in teacher)
    assert rep["teacher_speed"]["source"] == "logs" and lat[0] <= rep["teacher_speed"]["p50_ms"] <= lat[-1]
    v = ModelRegistry(eng).find("toy", "v1")
    assert v.gate is not None and v.gate["report"] == rep  # stored with the version: `models show` prints it
    assert "quality retained vs the teacher" in GateDecision.from_dict(v.gate).summary()
    assert any("teacher answers" in x for x in lines)
    eng.dispose()
