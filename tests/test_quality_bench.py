"""bench/quality.py --quick on the shared AlpacaEval data: the JSON line's structure and its statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.alpaca import DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.source]


def test_quick_bench(tmp_path: Path) -> None:
    if not (DATA_DIR / "alpaca-7b.jsonl.gz").exists():
        pytest.skip(f"AlpacaEval data not found at {DATA_DIR} (set DRIFTLOOP_ALPACAEVAL_DIR)")
    out = tmp_path / "quality.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench/quality.py"), "--quick", "--windows", "20",
         "--cache-dir", str(tmp_path / "emb"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "DRIFTLOOP_ALPACAEVAL_DIR": str(DATA_DIR)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "estimator" in proc.stderr  # progress goes to stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())
    for key in ("coverage", "width_ratio", "width_ratio_judge_95", "detection_delay_windows", "false_alarm_rate"):
        assert key in result
    models = result["config"]["models"]
    assert set(result["per_model"]) == set(models) and len(models) == 3
    # coverage of the 90 % intervals over 60 windows: loose, but a broken interval (e.g. collapsing to
    # [0, 0] when no positive is in the slice) fails it on alpaca-7b's 2.5 % rate
    assert result["coverage"] >= 0.75
    assert all(v >= 0.75 for v in result["coverage_judges"].values())
    for m, p in result["per_model"].items():
        assert p["windows"] == 20
        assert 0 <= p["rate"] <= 1
        # PPI++ never wider than the classical interval from the same labels (any source, any window)
        ratios = [v for k, v in p.items() if k.startswith("width_ratio")]
        assert ratios and max(ratios) <= 1.02, (m, ratios)
        # a 95 % judge narrows the interval where there is something to estimate
        if p["rate"] > 0.2:
            assert p["width_ratio_judge_95"] < 0.85, (m, p["width_ratio_judge_95"])
        # more labels, narrower intervals
        w = [p["width_by_label_fraction"][f]["classical"] for f in sorted(p["width_by_label_fraction"], key=float)]
        assert w == sorted(w, reverse=True)
    # a strong -> weak switch (0.3 -> 0.025) is seen; no-drift windows rarely alarm
    alpaca = result["per_model"]["alpaca-7b"]
    assert alpaca["detection"]["missed"] == 0 and alpaca["detection_delay_windows"] <= 3
    assert result["false_alarm_rate"] <= 0.1
    assert isinstance(result["targets"], dict) and all(isinstance(v, bool) for v in result["targets"].values())
