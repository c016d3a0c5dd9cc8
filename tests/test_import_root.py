"""One import root: the installed package exposes driftloop.* and nothing generic.

Run from a folder outside the checkout, so that the repository's own top-level folders (``monitor/``
...) are not on ``sys.path`` and only what the install provides can be imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _py(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_design_card_folders_import_under_driftloop(tmp_path: Path) -> None:
    r = _py("import driftloop.monitor, driftloop.retrain, driftloop.connectors, driftloop.migrations; "
            "print(driftloop.monitor.check.__name__ if hasattr(driftloop.monitor, 'check') else 'ok')", tmp_path)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", ["monitor", "retrain", "connectors", "migrations"])
def test_nothing_generic_is_installed(tmp_path: Path, name: str) -> None:
    r = _py(f"import {name}", tmp_path)
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (name, r.stdout, r.stderr)


def test_the_cli_does_not_load_the_monitoring_stack(tmp_path: Path) -> None:
    """Every `driftloop` process imports the CLI (the ingest consumer and its spawned writer child too);
    pandas, scipy, Evidently and torch load only where a command uses them (~150 MB per process)."""
    r = _py("import sys, driftloop.cli; "
            "print(sorted(m for m in ('pandas', 'scipy', 'evidently', 'torch', 'transformers') if m in sys.modules))",
            tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
