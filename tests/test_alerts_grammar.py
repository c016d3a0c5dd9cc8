"""Alert condition grammar (tokenizer + recursive descent, never eval) and check-config of alert rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.settings import ConfigError, load_settings
from driftloop.settings.conditions import BoolOp, Compare, ConditionError, Not, ordered_metrics, parse_condition


@pytest.mark.parametrize(
    ("cond", "metrics", "expected"),
    [
        ("drift.score > 0.3", {"drift.score": 0.5}, True),
        ("drift.score > 0.3", {"drift.score": 0.3}, False),
        ("drift.score >= 0.3", {"drift.score": 0.3}, True),
        ("drift.score > 0.3", {}, None),  # missing metric: unknown
        ("drift.score > 0.3", {"drift.score": float("nan")}, None),
        ("0.6 > quality.feedback_positive_rate", {"quality.feedback_positive_rate": 0.5}, True),
        ("latency.p95_ms > 2e3", {"latency.p95_ms": 2500.0}, True),
        ("drift.drifted == 1", {"drift.drifted": 1.0}, True),
        ("drift.drifted != 1", {"drift.drifted": 1.0}, False),
        ("volume.records <= -1", {"volume.records": -3}, True),
        ("drift.score > 0.3 and latency.p95_ms >= 2", {"drift.score": 0.5, "latency.p95_ms": 2}, True),
        ("drift.score > 0.3 and latency.p95_ms >= 2", {"drift.score": 0.1}, False),  # false and unknown
        ("drift.score > 0.3 and latency.p95_ms >= 2", {"drift.score": 0.9}, None),  # true and unknown
        ("drift.score > 0.3 or latency.p95_ms >= 2", {"drift.score": 0.9}, True),  # true or unknown
        ("drift.score > 0.3 or latency.p95_ms >= 2", {"drift.score": 0.1}, None),  # false or unknown
        ("not (drift.drifted == 1)", {"drift.drifted": 1}, False),
        ("not drift.drifted == 1", {}, None),
        # precedence: and binds tighter than or; parentheses override
        ("drift.score > 1 or drift.score < 0 and latency.p95_ms > 5", {"drift.score": 2, "latency.p95_ms": 0}, True),
        ("(drift.score > 1 or drift.score < 0) and latency.p95_ms > 5", {"drift.score": 2, "latency.p95_ms": 0}, False),
    ],
)
def test_condition_evaluation(cond: str, metrics: dict[str, float], expected: bool | None) -> None:
    assert parse_condition(cond).eval(metrics) is expected


def test_ast_shape_and_metrics() -> None:
    node = parse_condition("not (drift.score > 0.3) and (quality.bleu < 10 or 2000 < latency.p95_ms)")
    assert isinstance(node, BoolOp) and node.op == "and"
    assert isinstance(node.args[0], Not)
    right = node.args[1]
    assert isinstance(right, BoolOp) and right.op == "or"
    # a literal on the left is normalised: 2000 < x  ==  x > 2000
    assert right.args[1] == Compare("latency.p95_ms", ">", 2000.0)
    assert node.metrics() == {"drift.score", "quality.bleu", "latency.p95_ms"}
    # the printed form parses back to the same tree
    assert parse_condition(str(node)) == node
    # first appearance order (the alert's `value` is the first metric's)
    assert ordered_metrics(node) == ["drift.score", "quality.bleu", "latency.p95_ms"]
    assert ordered_metrics(parse_condition("z.b > 1 or (a.c < 2 and not z.b > 3)")) == ["z.b", "a.c"]


@pytest.mark.parametrize(
    ("cond", "fragment", "column"),
    [
        ("__import__('os').system('id')", 'unexpected character "\'"', 12),
        ("__import__('os')", "unexpected character", 12),
        ("drift.score >", "expected a metric name or a number but the condition ended", 14),
        ("drift.score > 0.3 drift.drifted == 1", "missing 'and'/'or'", 19),
        ("(drift.score > 0.3", "missing ')'", 19),
        ("drift.score > 0.3)", "unexpected ')'", 18),
        ("drift.score ** 2 > 1", "expected a metric name or a number, got '*'", 14),
        ("drift.score > 0.3; import os", "unexpected character ';'", 18),
        ("drift.score > nan", "expected a number, got 'nan'", 15),
        ("0.3 < 0.5", "a comparison needs a metric on one side", 1),
        ("1 + 2 * 3 > -4", "a comparison needs a metric on one side", 1),
        ("drift.score = 0.3", "got '=' (use == for equality)", 13),
        ("drift.score > 1e999", "number 1e999 is out of range", 15),
        ("drift.score > -inf", "expected a number, got 'inf'", 16),
        ("(drift.score - 0.1) > 0", "parentheses group conditions, not arithmetic", 19),
        ("drift.score < 1 < 2", "unexpected '<'", 17),
        ("drift.score > 0.1 +", "but the condition ended", 20),
        ("drift.score * / 2 > 1", "expected a metric name or a number, got '/'", 15),
        ("foo(drift.score) > 1", "unknown function 'foo'; the tests are drop(), rise() and change()", 1),
        ("drift.score > drop(quality.refusal_rate)", "drop() is a condition of its own, not a value", 15),
        ("drift.score(1) > 1", "unknown function 'drift.score'", 1),
        ("drop(drift.score)", "'drift.score' is not one (supported: quality.feedback_positive_rate, ", 6),
        ("drop(ref.quality.refusal_rate)", "'ref.quality.refusal_rate' is not one", 6),
        ("drop()", "expected a metric name, got ')'", 6),
        ("drop(quality.refusal_rate", "expected ',' or ')' but the condition ended", 26),
        ("drop(quality.refusal_rate 0.01)", "expected ',' or ')', got '0.01'", 27),
        ("drop(quality.refusal_rate, 0.01)", "drop() takes one metric; give alpha= and min_n= by name", 28),
        ("rise(quality.refusal_rate, quality.empty_rate)", "rise() takes one metric", 28),
        ("drop(quality.refusal_rate, beta=0.1)", "unknown argument 'beta' of drop(); use alpha= and min_n=", 28),
        ("drop(quality.refusal_rate, alpha=0.1, alpha=0.2)", "alpha given twice", 39),
        ("drop(quality.refusal_rate, alpha=0.5)", "alpha must be between 0 and 0.5 (exclusive), got 0.5", 34),
        ("drop(quality.refusal_rate, alpha=-0.01)", "alpha must be between 0 and 0.5 (exclusive), got -0.01", 35),
        ("drop(quality.refusal_rate, alpha=0)", "alpha must be between 0 and 0.5", 34),
        ("change(quality.empty_rate, min_n=0)", "min_n must be a whole number from 1 to", 34),
        ("change(quality.empty_rate, min_n=2.5)", "min_n must be a whole number", 34),
        ("change(quality.empty_rate, min_n)", "expected '=', got ')'", 33),
        ("drop(quality.refusal_rate) < 1", "unexpected '<' (missing 'and'/'or'?)", 28),
        ("drift.score > 0.3 and", "but the condition ended", 22),
        ("and drift.score > 0.3", "expected a metric name or a number, got 'and'", 1),
        ("", "empty condition", 1),
        ("   ", "empty condition", 1),
        ("drift.score > 0.3 \x00", "unexpected character", 19),
        ("drift.scöre > 1", "unexpected character 'ö'", 9),
        ("x" * 10_000, "longer than 2000 characters", 1),
        ("(" * 100 + "drift.score > 1" + ")" * 100, "nesting deeper than 32", 33),
        ("not " * 200 + "drift.score > 1", "nesting deeper than 32", 129),
    ],
)
def test_hostile_or_broken_conditions_are_rejected_with_position(cond: str, fragment: str, column: int) -> None:
    with pytest.raises(ConditionError) as e:
        parse_condition(cond)
    msg = str(e.value)
    assert fragment in msg
    assert f"at column {column}\n" in msg
    lines = msg.split("\n")
    assert len(lines) == 3 and lines[2].strip() == "^"
    shown = lines[1][4:]
    caret = lines[2].index("^") - 4
    if len(cond) <= 120:  # the caret points at the offending character
        assert shown == cond and caret == column - 1
    assert len(msg) < 400  # a 10k-character input does not produce a 10k-character error


def test_dunder_and_call_syntax_never_reach_python() -> None:
    # A name-only condition like "__class__ > 1" parses (it is just a metric name) and is then
    # rejected: by the grammar (dunder) here, and by check-config as an unknown metric.
    with pytest.raises(ConditionError, match="invalid metric name '__class__'"):
        parse_condition("__class__ > 1")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_either_parses_or_raises_condition_error(text: str) -> None:
    try:
        node = parse_condition(text)
    except ConditionError:
        return
    assert node.eval({}) is None or isinstance(node.eval({}), bool)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="drift.score<>=!() andornot0123456789.e-", max_size=60))
def test_grammar_alphabet_fuzz(text: str) -> None:
    try:
        node = parse_condition(text)
    except ConditionError:
        return
    assert parse_condition(str(node)) == node


# -- check-config -----------------------------------------------------------------------------


def _check_config(tmp_path: Path, exit_code: int, alerts: dict[str, object]) -> tuple[Path, str]:
    """Run `driftloop check-config` on a file with this ``alerts`` section; (the file, the output)."""
    p = tmp_path / "policy.yaml"
    p.write_text(yaml.safe_dump({"alerts": alerts}))
    res = CliRunner().invoke(app, ["check-config", str(p)])
    assert res.exit_code == exit_code, res.output
    return p, res.output


def test_check_config_reports_syntax_with_path_column_and_caret(tmp_path: Path) -> None:
    _, out = _check_config(tmp_path, 2, {"rules": [
        {"name": "ok", "condition": "drift.score > 0.3"},
        {"name": "bad", "condition": "drift.score >> 0.3"},
        {"name": "evil", "condition": "__import__('os').system('id')"},
        {"name": "nm", "condition": "drift.score > 0.1", "windows": 3, "of": 2},
        {"name": "sev", "condition": "drift.score > 0.1", "severity": "page"},
    ]})  # fmt: skip
    assert "alerts.rules.1.condition: expected a metric name or a number, got '>' at column 14" in out
    assert 'alerts.rules.2.condition: unexpected character "\'" at column 12' in out
    assert "alerts.rules.3: windows (3) cannot exceed of (2)" in out
    assert "alerts.rules.4.severity: must be one of 'info', 'warning' or 'critical'" in out
    assert "alerts.rules.0" not in out


def test_check_config_rejects_unknown_metrics_channels_and_duplicates(tmp_path: Path) -> None:
    _, out = _check_config(tmp_path, 2, {
        "channels": [{"name": "log", "type": "log"}, {"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/h"}],
        "rules": [
            {"name": "a", "condition": "drift.scor > 0.3", "channels": ["ops"]},
            {"name": "b", "condition": "quality.feedback_positive_rate < 0.6 and banana > 1", "channels": ["pager"]},
            {"name": "a", "condition": "drift.feature.latency_ms > 0.2"},
        ],
    })  # fmt: skip
    assert "alerts.rules.0.condition: unknown metric 'drift.scor'; did you mean 'drift.score'?" in out
    assert "alerts.rules.1.condition: unknown metric 'banana'" in out
    assert "alerts.rules.1.channels.0: unknown channel 'pager'; configured: ['log', 'ops']" in out
    assert "alerts.rules.2.name: duplicate rule name 'a'" in out
    assert "drift.feature.latency_ms" not in out  # per-feature drift metrics are known
    assert "quality.feedback_positive_rate'" not in out


def test_valid_policy_loads(tmp_path: Path) -> None:
    cfg, _ = _check_config(tmp_path, 0, {
        "channels": [{"name": "log", "type": "log"}, {"name": "ops", "type": "webhook", "url": "https://x.example/h",
                                                       "secret_env": "OPS_SECRET"}],
        "rules": [{"name": "q", "condition": "quality.feedback_positive_rate < 0.6", "windows": 2, "of": 3,
                   "severity": "critical", "channels": ["log", "ops"], "cooldown_minutes": 10,
                   "group_by": ["model", "segment"]}],
    })  # fmt: skip
    s = load_settings(cfg)
    assert s.alerts.rules[0].group_by == ["model", "segment"]


@pytest.mark.parametrize(
    ("channel", "fragment"),
    [
        ({"name": "w", "type": "webhook"}, "a webhook channel needs url"),
        ({"name": "w", "type": "webhook", "url": "ftp://x"}, "url must start with http:// or https://"),
        ({"name": "w", "type": "pagerduty", "url": "http://x"}, "alerts.channels.0.type"),
        ({"name": "s", "type": "slack", "url": "http://x", "secret": "k"}, "webhook channels only"),
        ({"name": "w", "type": "webhook", "url": "http://x", "secret": "a", "secret_env": "B"}, "not both"),
    ],
)
def test_channel_validation(channel: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(None, alerts={"channels": [channel]})
    assert fragment in "\n".join(e.value.problems)
