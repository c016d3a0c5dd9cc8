"""The real-model demo's built-in traffic and wiring (the demo itself runs ~20 minutes on 2 cores: README)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from driftloop.demo_prompts import DemoPrompt, general_prompts, support_prompts
from driftloop.ingest.redact import Redactor


def test_each_teacher_answer_holds_its_fact_and_survives_pii_redaction() -> None:
    red = Redactor()
    sup = support_prompts()
    assert len(sup) >= 40 and len({p.text for p in sup}) == len(sup)
    for p in sup:
        assert p.teacher is not None and p.happy(p.teacher), p.text
        # ingestion redacts before storage: a fact that looked like PII would be trained as "[phone]"
        assert red.text(p.teacher) == p.teacher and red.text(p.text) == p.text, p.text


def test_happy_ignores_case_spacing_and_backticks_and_needs_the_fact() -> None:
    p = DemoPrompt("support", "q", ("acmectl login",), "a")
    assert p.happy("Run `ACMECTL   login --sso`.")
    assert not p.happy("Open the Acme Cloud console and log in.")
    assert all(g.expected and g.teacher is None for g in general_prompts())


def test_a_fact_is_not_guessable_from_another_intents_answer() -> None:
    # each intent's fact appears in its own teacher answer only: a student that learned one answer by rote
    # does not make the users of the other intents happy
    sup = support_prompts()
    facts = {p.expected[0] for p in sup}
    for p in sup:
        assert [f for f in facts if f in p.teacher.lower()] == [p.expected[0]], p.text  # type: ignore[union-attr]


def test_demo_refuses_an_unknown_model(tmp_path: Path) -> None:
    from driftloop.cli import app

    r = CliRunner().invoke(app, ["demo", "--model", "llama-70b", "--data-dir", str(tmp_path / "d")])
    assert r.exit_code == 2 and "unknown model 'llama-70b'" in r.output
    assert not (tmp_path / "d").exists()


def test_settings_distill_the_support_workload_from_the_teachers_logs(tmp_path: Path) -> None:
    from driftloop.demo_smollm2 import STUDENT, TEACHER, SmolDemoConfig, _settings

    s = _settings(SmolDemoConfig(), tmp_path, "sqlite://", "127.0.0.1:9", tmp_path / "base", 1, 2)
    (pol,) = s.retrain.policies
    assert pol.mode == "distill" and pol.teacher is not None and pol.teacher.model_id == TEACHER
    assert pol.model_id == STUDENT and pol.data.workload == "support" and pol.gate.primary == "similarity"
    assert s.ingest.workload.keys == ["route"] and pol.trigger.alerts == [s.alerts.rules[0].name]
