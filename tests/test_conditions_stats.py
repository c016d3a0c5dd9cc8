"""Relative and statistical alert conditions: arithmetic over metrics (a window against its reference)
and drop/rise/change, Fisher's exact test of a proportion's counts in the window against the reference."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from driftloop.settings import ConfigError, load_settings
from driftloop.settings.conditions import (
    Arith,
    Compare,
    Comparison,
    ConditionError,
    Metric,
    Neg,
    Num,
    ProportionTest,
    describe_tests,
    ordered_metrics,
    parse_condition,
    proportion_tests,
)
from driftloop.settings.metrics import PROPORTION_COUNTS, is_known_metric

FPR = "quality.feedback_positive_rate"


def fb(k: float | None, n: float | None, ref_k: float | None, ref_n: float | None) -> dict[str, float | None]:
    """A window's feedback counts and its reference's."""
    return {"quality.feedback_positive_n": k, "quality.feedback_n": n,
            "ref.quality.feedback_positive_n": ref_k, "ref.quality.feedback_n": ref_n}  # fmt: skip


# -- arithmetic -------------------------------------------------------------------------------


def test_relative_rule_compares_a_window_with_its_reference() -> None:
    node = parse_condition(f"{FPR} < ref.{FPR} - 0.1")
    assert node == Comparison(Metric(FPR), "<", Arith("-", Metric(f"ref.{FPR}"), Num(0.1)))
    assert node.eval({FPR: 0.55, f"ref.{FPR}": 0.7}) is True
    assert node.eval({FPR: 0.65, f"ref.{FPR}": 0.7}) is False
    assert node.eval({FPR: 0.55}) is None  # no reference: unknown, neither fires nor clears
    assert ordered_metrics(node) == [FPR, f"ref.{FPR}"]


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("a.x - b.x * 2 > 0", 1 - 2 * 3 > 0),  # * binds tighter than -
        ("a.x - b.x - 1 == -3", True),  # left-associative: (1 - 3) - 1
        ("a.x / b.x / 2 == 1 / 6", True),  # (1 / 3) / 2
        ("-a.x == -1", True),
        ("a.x - -b.x == 4", True),
        ("--a.x == 1", True),
        ("+a.x == 1", True),
        ("a.x * -2 < -1.5", True),
        ("2 * a.x + 1 > b.x", False),  # 3 > 3
        ("a.x + 1 >= b.x", False),  # NUMBER OP METRIC is not required on either side
        ("1 - a.x < b.x", True),
    ],
)
def test_arithmetic_precedence_and_unary_minus(cond: str, expected: bool) -> None:
    node = parse_condition(cond)
    assert node.eval({"a.x": 1.0, "b.x": 3.0}) is expected
    assert parse_condition(str(node)) == node


@pytest.mark.parametrize(
    ("metrics", "why"),
    [
        ({"a.x": 1.0}, "b.x missing"),
        ({"a.x": 1.0, "b.x": None}, "b.x NULL"),
        ({"a.x": 1.0, "b.x": float("nan")}, "b.x NaN"),
        ({"a.x": 1.0, "b.x": 0.0}, "division by zero"),
        ({"a.x": float("inf"), "b.x": float("inf")}, "inf / inf is NaN"),
    ],
)
def test_missing_values_and_division_by_zero_are_unknown(metrics: dict[str, float | None], why: str) -> None:
    assert parse_condition("a.x / b.x > 0.5").eval(metrics) is None, why
    assert parse_condition("not a.x / b.x > 0.5").eval(metrics) is None, why
    assert parse_condition("a.x / b.x > 0.5 or a.x >= 1").eval(metrics) is True, why  # true or unknown


def test_literal_comparisons_keep_their_old_shape() -> None:
    assert parse_condition("volume.records <= -1") == Compare("volume.records", "<=", -1.0)
    assert parse_condition("2000 < latency.p95_ms") == Compare("latency.p95_ms", ">", 2000.0)
    assert str(parse_condition("drift.score > +0.3")) == "drift.score > 0.3"
    assert parse_condition("-drift.score > 1") == Comparison(Neg(Metric("drift.score")), ">", Num(1.0))
    assert str(parse_condition("latency.p95_ms > 1234567.5")) == "latency.p95_ms > 1234567.5"  # no precision lost


# -- statistical tests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table", [(40, 100, 600, 1000), (12, 30, 15, 30), (700, 1000, 650, 1000), (0, 25, 3, 40), (25, 25, 40, 40)]
)
def test_p_values_are_scipys_fisher_exact(table: tuple[int, int, int, int]) -> None:
    k, n, rk, rn = table
    less, greater = (stats.fisher_exact([[k, n - k], [rk, rn - rk]], alternative=a).pvalue for a in ("less", "greater"))
    expected = {"drop": less, "rise": greater, "change": min(1.0, 2 * min(less, greater))}
    for kind, p in expected.items():
        got = ProportionTest(kind, FPR).p_value(fb(*table))
        assert got is not None and math.isclose(got, p, rel_tol=1e-12), kind


def test_change_is_drop_or_rise_at_half_alpha() -> None:
    for table in [(40, 100, 600, 1000), (50, 100, 600, 1000), (70, 100, 600, 1000), (75, 100, 600, 1000)]:
        m = fb(*table)
        either = parse_condition(f"drop({FPR}, alpha=0.025) or rise({FPR}, alpha=0.025)").eval(m)
        assert parse_condition(f"change({FPR}, alpha=0.05)").eval(m) is either


def test_drop_is_one_sided() -> None:
    down, up = fb(40, 100, 600, 1000), fb(80, 100, 600, 1000)
    drop, rise, change = (parse_condition(f"{k}({FPR})") for k in ("drop", "rise", "change"))
    assert drop.eval(down) is True and drop.eval(up) is False
    assert rise.eval(down) is False and rise.eval(up) is True
    assert change.eval(down) is True and change.eval(up) is True
    same = fb(60, 100, 600, 1000)
    assert drop.eval(same) is False and rise.eval(same) is False and change.eval(same) is False


def test_alpha_is_the_threshold_on_the_p_value() -> None:
    m = fb(50, 100, 600, 1000)
    p = ProportionTest("drop", FPR).p_value(m)
    assert p is not None and 0.01 < p < 0.05
    assert parse_condition(f"drop({FPR})").eval(m) is False
    assert parse_condition(f"drop({FPR}, alpha=0.05)").eval(m) is True


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        (fb(5, 19, 600, 1000), None),  # 19 labelled records in the window < min_n
        (fb(0, 20, 600, 1000), True),  # 20: tested (and a clear drop)
        (fb(0, 20, 10, 19), None),  # the reference side is too small
        (fb(None, 100, 600, 1000), None),  # a count missing
        (fb(40, 100, None, None), None),  # no reference
        (fb(float("nan"), 100, 600, 1000), None),
        (fb(101, 100, 600, 1000), None),  # more positives than labelled: broken counts
        (fb(-1, 100, 600, 1000), None),
        (fb(40.5, 100, 600, 1000), None),  # counts are whole numbers
        (fb(40.0, 100.0, 600.0, 1000.0), True),  # stored as floats
        (fb(4e9, 1e10, 6e9, 1e10), None),  # above MAX_COUNT (scipy loses precision there)
    ],
)
def test_insufficient_or_broken_counts_are_unknown(metrics: dict[str, float | None], expected: bool | None) -> None:
    assert parse_condition(f"drop({FPR})").eval(metrics) is expected


def test_min_n_is_configurable() -> None:
    m = fb(0, 10, 600, 1000)
    assert parse_condition(f"drop({FPR})").eval(m) is None
    assert parse_condition(f"drop({FPR}, min_n=10)").eval(m) is True
    assert parse_condition(f"drop({FPR}, min_n=11)").eval(m) is None


def test_refusal_rate_counts_against_volume() -> None:
    node = parse_condition("rise(quality.refusal_rate)")
    m = {"quality.refusal_n": 30, "volume.records": 200, "ref.quality.refusal_n": 10, "ref.volume.records": 1000}
    assert node.eval(m) is True
    assert node.metrics() == {"quality.refusal_rate", "ref.quality.refusal_rate", "quality.refusal_n",
                              "volume.records", "ref.quality.refusal_n", "ref.volume.records"}  # fmt: skip
    assert ordered_metrics(node) == ["quality.refusal_rate", "ref.quality.refusal_rate"]


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        # the test is unknown (insufficient data): Kleene logic
        (f"drop({FPR}) and drift.score > 0.5", None),
        (f"drop({FPR}) and drift.score > 0.9", False),
        (f"drop({FPR}) or drift.score > 0.5", True),
        (f"drop({FPR}) or drift.score > 0.9", None),
        (f"not drop({FPR})", None),
        (f"not (drop({FPR}) or rise({FPR}))", None),
    ],
)
def test_kleene_logic_with_unknown_tests(cond: str, expected: bool | None) -> None:
    m = {**fb(1, 5, 600, 1000), "drift.score": 0.7}
    assert parse_condition(cond).eval(m) is expected


def test_tests_nest_under_not_and_or_and_round_trip() -> None:
    cond = (f"(drop({FPR}, alpha=0.05) or rise(quality.refusal_rate, min_n=50)) and "
            f"not change(quality.empty_rate, alpha=0.001, min_n=5) and {FPR} < ref.{FPR} - 0.05")  # fmt: skip
    node = parse_condition(cond)
    assert [str(t) for t in proportion_tests(node)] == [
        f"drop({FPR}, alpha=0.05)", "rise(quality.refusal_rate, min_n=50)",
        "change(quality.empty_rate, alpha=0.001, min_n=5)"]  # fmt: skip
    assert parse_condition(str(node)) == node
    assert str(parse_condition(f"drop({FPR}, alpha=0.01, min_n=20)")) == f"drop({FPR})"  # defaults left out
    assert ordered_metrics(node)[:4] == [FPR, f"ref.{FPR}", "quality.refusal_rate", "ref.quality.refusal_rate"]


def test_describe_tests_gives_p_value_and_counts() -> None:
    node = parse_condition(f"drop({FPR}) or rise(quality.refusal_rate)")
    p = stats.fisher_exact([[40, 60], [600, 400]], alternative="less").pvalue
    assert describe_tests(node, fb(40, 100, 600, 1000)) == [
        f"drop({FPR}): p={p:.3g} (window 40/100 vs reference 600/1000)",
        "rise(quality.refusal_rate): insufficient data"]  # fmt: skip


def test_every_tested_proportion_has_known_counts() -> None:
    for metric, counts in PROPORTION_COUNTS.items():
        for name in [metric, *counts, *(f"ref.{c}" for c in counts)]:
            assert is_known_metric(name), name


def test_parsing_and_plain_conditions_do_not_load_scipy() -> None:
    code = ("import sys; from driftloop.settings.conditions import parse_condition as p; "
            f"n = p('drop({FPR}) or drift.score > 1'); n.eval({{'drift.score': 2}}); print('scipy' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- fuzz ---------------------------------------------------------------------------------------

_PIECES = ["a.x", "b.y", f"{FPR}", f"ref.{FPR}", "drop(", "rise(", "change(", "alpha=", "min_n=", ",", "(", ")",
           "+", "-", "*", "/", "<", ">=", "==", "0", "0.5", "20", "1e3", "and", "or", "not", "=", "nan"]  # fmt: skip
_VALUES = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 2000).map(float))
_NAMES = ["a.x", "b.y", FPR, f"ref.{FPR}", "quality.feedback_positive_n", "quality.feedback_n",
          "ref.quality.feedback_positive_n", "ref.quality.feedback_n"]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14).map(" ".join), st.dictionaries(st.sampled_from(_NAMES), _VALUES))
def test_token_soup_parses_or_raises_condition_error_and_never_fails_to_evaluate(text: str, m: Any) -> None:
    try:
        node = parse_condition(text)
    except ConditionError:
        return
    assert parse_condition(str(node)) == node
    assert node.eval(m) in (True, False, None)


_ATOMS = st.one_of(st.sampled_from(["a.x", "b.y", FPR, f"ref.{FPR}"]), st.sampled_from(["0", "0.5", "2", "1e3"]))
_SUMS = st.recursive(
    _ATOMS,
    lambda inner: st.one_of(
        st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from("+-*/"), inner), inner.map(lambda a: f"-{a}")
    ),
    max_leaves=5,
)
_TESTS = st.builds(
    lambda kind, metric, args: f"{kind}({', '.join([metric, *args])})",
    st.sampled_from(["drop", "rise", "change"]),
    st.sampled_from(list(PROPORTION_COUNTS)),
    st.lists(st.sampled_from(["alpha=0.05", "min_n=5"]), unique=True),
)
_CONDITIONS = st.recursive(
    st.one_of(_TESTS, st.builds(lambda a, op, b: f"{a} {op} {b}", _SUMS, st.sampled_from(["<", ">=", "=="]), _SUMS)),
    lambda inner: st.one_of(
        inner.map(lambda c: f"not {c}"),
        inner.map(lambda c: f"({c})"),
        st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from(["and", "or"]), inner),
    ),
    max_leaves=6,
)
_ALL_NAMES = [*_NAMES, "quality.refusal_n", "volume.records", "ref.quality.refusal_n", "ref.volume.records"]


@settings(max_examples=400, deadline=None)
@given(_CONDITIONS, st.dictionaries(st.sampled_from(_ALL_NAMES), _VALUES))
def test_grammar_shaped_conditions_round_trip_and_evaluate(text: str, m: Any) -> None:
    try:
        node = parse_condition(text)
    except ConditionError as e:  # only the comparisons of two literals are invalid here
        assert "a comparison needs a metric on one side" in str(e)
        return
    assert parse_condition(str(node)) == node
    assert node.eval(m) in (True, False, None)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abxy.+-*/<>=!(),_ 0123456789e", max_size=60))
def test_arithmetic_alphabet_fuzz(text: str) -> None:
    try:
        node = parse_condition(text)
    except ConditionError:
        return
    assert parse_condition(str(node)) == node


# -- check-config -------------------------------------------------------------------------------


def _problems(tmp_path: Path, cfg: dict[str, Any]) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    return "\n".join(e.value.problems)


def test_check_config_finds_unknown_metrics_inside_arithmetic_and_references(tmp_path: Path) -> None:
    text = _problems(tmp_path, {"alerts": {"rules": [
        {"name": "ok", "condition": f"{FPR} < ref.{FPR} - 0.1 and drop({FPR}) and drift.group.tone == 1"},
        {"name": "typo", "condition": f"{FPR} < ref.quality.feedback_positiv_rate * 0.8"},
        {"name": "ref-drift", "condition": "drift.score > ref.drift.score"},
    ]}})  # fmt: skip
    assert (
        f"alerts.rules.1.condition: unknown metric 'ref.quality.feedback_positiv_rate'; did you mean 'ref.{FPR}'?"
        in text
    )
    assert "alerts.rules.2.condition: unknown metric 'ref.drift.score'" in text
    assert "alerts.rules.0" not in text
    # a test of a metric without counts is a syntax error (found before the cross-checks run)
    text = _problems(tmp_path, {"alerts": {"rules": [{"name": "t", "condition": "drop(quality.bleu)"}]}})
    assert "alerts.rules.0.condition: drop() tests a proportion with known counts; 'quality.bleu' is not one" in text


def test_retrain_trigger_conditions_get_the_same_checks(tmp_path: Path) -> None:
    policy = {"name": "p", "model_id": "toy", "base_model": "/m",
              "trigger": {"condition": f"drop({FPR}) or {FPR} < ref.quality.feedback_positve_rate - 0.1"}}  # fmt: skip
    text = _problems(tmp_path, {"retrain": {"policies": [policy]}})
    assert (f"retrain.policies.0.trigger.condition: unknown metric 'ref.quality.feedback_positve_rate'; "
            f"did you mean 'ref.{FPR}'?") in text  # fmt: skip
    bad = {**policy, "trigger": {"condition": f"drop({FPR}, alpha=0.9)"}}
    text = _problems(tmp_path, {"retrain": {"policies": [bad]}})
    assert "retrain.policies.0.trigger.condition" in text and "alpha must be between 0 and 0.5" in text
