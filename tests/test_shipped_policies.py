"""No shipped configuration judges quality against an absolute number (driftloop issue 14).

A positive-feedback rate of 0.3 is a disaster for one model and normal for another, so every alert rule and
retrain trigger that ships (the YAML files under deploy/, the demo's settings, the built-in defaults) must
judge a ``quality.*`` metric against the model's own reference: a statistical test (``drop(...)``) or an
arithmetic comparison with a ``ref.`` metric. Latency and drift rules may keep absolute numbers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from driftloop.demo_loop import DemoConfig, _demo_settings
from driftloop.settings import Settings, load_settings
from driftloop.settings.conditions import (
    BoolOp,
    Compare,
    Comparison,
    Expr,
    Node,
    Not,
    ProportionTest,
    parse_condition,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_FILES = sorted(p for ext in ("*.yaml", "*.yml") for p in (ROOT / "deploy").rglob(ext))


def _is_quality(name: str) -> bool:
    return name.removeprefix("ref.").startswith("quality.")


def _constant(e: Expr) -> bool:
    return not e.names()


def absolute_quality_comparisons(node: Node) -> list[str]:
    """The comparisons in ``node`` that put a quality metric against nothing but constants."""
    if isinstance(node, Compare):
        return [str(node)] if _is_quality(node.metric) else []
    if isinstance(node, Comparison):
        sides = ((node.left, node.right), (node.right, node.left))
        bad = any(_constant(other) and any(_is_quality(n) for n in side.names()) for side, other in sides)
        return [str(node)] if bad else []
    if isinstance(node, Not):
        return absolute_quality_comparisons(node.arg)
    if isinstance(node, BoolOp):
        return [c for a in node.args for c in absolute_quality_comparisons(a)]
    assert isinstance(node, ProportionTest), type(node)
    return []


def conditions(s: Settings) -> list[tuple[str, str]]:
    """(where, condition) of every alert rule and every retrain trigger condition of ``s``."""
    out = [(f"alerts.rules.{r.name}", r.condition) for r in s.alerts.rules]
    out += [
        (f"retrain.policies.{p.name}.trigger", p.trigger.condition) for p in s.retrain.policies if p.trigger.condition
    ]
    return out


def _demo(tmp_path: Path) -> Settings:
    return _demo_settings(DemoConfig(), tmp_path, f"sqlite:///{tmp_path / 'd.db'}", "127.0.0.1:9092",
                          tmp_path / "base", 8700, 8600)  # fmt: skip


def _shipped(tmp_path: Path) -> dict[str, Settings]:
    out = {str(p.relative_to(ROOT)): load_settings(p) for p in DEPLOY_FILES}
    out["demo (driftloop demo)"] = _demo(tmp_path)
    out["defaults"] = Settings()
    return out


@pytest.mark.parametrize(
    ("condition", "absolute"),
    [
        ("quality.feedback_positive_rate < 0.3", True),
        ("0.3 > quality.feedback_positive_rate", True),  # flipped into a Compare
        ("quality.refusal_rate - 0.01 > 0.05", True),
        ("2 * quality.refusal_rate > 0.1 + 0.02", True),
        ("ref.quality.refusal_rate < 0.01", True),
        ("drift.drifted == 1 and not (quality.empty_rate > 0.1)", True),
        ("latency.p95_ms > 2000 or drop(quality.feedback_positive_rate)", False),
        ("quality.feedback_positive_rate < ref.quality.feedback_positive_rate - 0.1", False),
        ("quality.refusal_rate > 2 * ref.quality.refusal_rate", False),
        ("drop(quality.feedback_positive_rate, alpha=0.01) or rise(quality.refusal_rate)", False),
    ],
)
def test_the_walker_finds_absolute_quality_comparisons_anywhere(condition: str, absolute: bool) -> None:
    assert bool(absolute_quality_comparisons(parse_condition(condition))) is absolute


def test_every_shipped_rule_and_trigger_judges_quality_relatively(tmp_path: Path) -> None:
    assert {"deploy/driftloop.yaml", "deploy/policies.example.yaml", "deploy/retrain.example.yaml"} <= {
        str(p.relative_to(ROOT)) for p in DEPLOY_FILES
    }
    shipped = _shipped(tmp_path)
    bad = [
        f"{name}: {where}: {c}"
        for name, s in shipped.items()
        for where, cond in conditions(s)
        for c in absolute_quality_comparisons(parse_condition(cond))
    ]
    assert not bad, "absolute quality thresholds in shipped configuration:\n" + "\n".join(bad)
    # each shipped file and the demo watch quality at all (a file that dropped its quality rule would pass)
    for name, s in shipped.items():
        if name != "defaults":
            assert any("quality." in cond for _, cond in conditions(s)), name


def test_the_demo_keeps_its_baseline_while_quality_is_down(tmp_path: Path) -> None:
    """The demo's story needs the quality alert open until the retrain starts: with a relative rule that
    takes a reference that freezes while windows are unhealthy (``last_healthy``), not a sliding one."""
    s = _demo(tmp_path)
    assert s.monitor.reference.kind == "last_healthy"
    rule = next(r for r in s.alerts.rules if r.name == "quality-drop")
    assert isinstance(parse_condition(rule.condition), ProportionTest)
    assert any("quality-drop" in p.trigger.alerts for p in s.retrain.policies)
