"""The wheel installs one import root, ``driftloop``, with every module of the source and its data files.

Built with ``python -m build --wheel --no-isolation`` from a copy of the tree git sees (so no build/ or
egg-info lands in the checkout, and a stale build/ cannot hide a missing package). The expected module list
comes from pyproject's package-dir, so a package added to the source but not to [tool.setuptools] fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.source

pytest.importorskip("build", reason="the dev extra's `build` builds the wheel")


def _source_modules() -> set[str]:
    """Every .py and data file the wheel should carry, named as in the wheel (driftloop/...)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    expected: set[str] = set()
    for package, folder in cfg["package-dir"].items():
        src = ROOT / folder
        for dirpath, dirnames, filenames in os.walk(src):  # symlinked sub-packages are their own entries
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not (Path(dirpath) / d).is_symlink()]
            rel = Path(dirpath).relative_to(src)
            expected |= {str(Path(package.replace(".", "/")) / rel / f) for f in filenames if f.endswith(".py")}
    return {p.replace("/./", "/") for p in expected}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        path = ROOT / name
        if not path.exists() and not path.is_symlink():  # deleted in the work tree, not yet in git
            continue
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            os.symlink(os.readlink(path), src / name)
        elif path.is_file():
            shutil.copy2(path, src / name)
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)], cwd=src,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (whl,) = out.glob("driftloop-*.whl")
    return zipfile.ZipFile(whl)


def test_every_module_lives_under_driftloop_and_none_is_missing(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    dist_info = {n.split("/")[0] for n in names if ".dist-info/" in n}
    assert len(dist_info) == 1
    outside = [n for n in names if not n.startswith("driftloop/") and not n.startswith(f"{next(iter(dist_info))}/")]
    assert not outside, f"files outside driftloop/: {outside}"
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"monitor", "retrain", "connectors", "migrations", "tests"}, tops
    modules = {n for n in names if n.endswith(".py")}
    expected = _source_modules()
    assert expected - modules == set(), "source modules missing from the wheel (add the package to [tool.setuptools])"
    assert modules - expected == set(), "modules in the wheel that the source does not have"
    top_level = wheel.read(f"{next(iter(dist_info))}/top_level.txt").decode().split()
    assert top_level == ["driftloop"]


def test_migrations_and_data_files_are_included(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert "driftloop/migrations/script.py.mako" in names and "driftloop/migrations/env.py" in names
    versions = sorted(n for n in names if n.startswith("driftloop/migrations/versions/") and n.endswith(".py"))
    assert [Path(v).name for v in versions] == sorted(p.name for p in (ROOT / "migrations/versions").glob("*.py"))
    assert "driftloop/py.typed" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "driftloop = driftloop" in wheel.read(entry_points).decode()
