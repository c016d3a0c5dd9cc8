"""The package's layering (pyproject's import-linter contract) covers every module, and no two parts import each other.

`lint-imports` checks that no layer imports one above it; these tests keep that check honest: a new
top-level module left out of the contract would be checked against nothing, and two modules of one
layer (or of one container) importing each other form a cycle the layers contract does not forbid.
"""

from __future__ import annotations

import re
import tomllib
from collections import defaultdict
from functools import cache
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


@cache
def _graph() -> grimp.ImportGraph:
    # include_external_packages=False: only driftloop's own modules (monitor/, retrain/, ... via the symlinks)
    return grimp.build_graph("driftloop", cache_dir=None)


def _contract() -> dict[str, object]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    assert cfg["root_package"] == "driftloop"
    (layers,) = [c for c in cfg["contracts"] if c["type"] == "layers"]
    return dict(layers)


def _placed() -> list[str]:
    """Every module named in the layers contract (``a : b`` and ``a | b`` both name two)."""
    return [name for line in _contract()["layers"] for name in re.split(r"\s*[:|]\s*", str(line).strip()) if name]  # type: ignore[attr-defined]


def _children() -> set[str]:
    return {m.removeprefix("driftloop.") for m in _graph().find_children("driftloop")}


def test_every_module_of_driftloop_has_a_layer() -> None:
    placed = _placed()
    assert len(placed) == len(set(placed)), f"named twice: {sorted({p for p in placed if placed.count(p) > 1})}"
    missing = sorted(_children() - set(placed))
    assert not missing, f"add these to [tool.importlinter] layers in pyproject.toml: {missing}"
    stale = sorted(set(placed) - _children())
    assert not stale, f"the layers contract names modules that do not exist: {stale}"


def test_the_layers_run_from_the_application_down_to_settings_and_store() -> None:
    layers = [str(line) for line in _contract()["layers"]]  # type: ignore[attr-defined]
    assert _contract()["containers"] == ["driftloop"]
    assert [n.strip() for n in layers[1].split(":")] == ["retrain"]
    assert {n.strip() for n in layers[2].split("|")} == {"ingest", "monitor", "connectors"}
    bottom = {n.strip() for n in layers[-1].split(":")}
    assert {"settings", "store", "migrations", "broker"} <= bottom
    assert {"cli", "daemon", "api", "serve", "jobs", "scheduler", "client"} <= {n.strip() for n in layers[0].split(":")}


def _top(module: str, depth: int) -> str:
    return ".".join(module.split(".")[:depth])


def _cycles(depth: int) -> list[list[str]]:
    """Strongly connected groups (size > 1) of the graph of imports between modules cut to ``depth`` parts."""
    g = _graph()
    edges: dict[str, set[str]] = defaultdict(set)
    for m in g.modules:
        if not m.startswith("driftloop.") or m.count(".") < depth - 1:
            continue
        for imported in g.find_modules_directly_imported_by(m):
            if imported.count(".") >= depth - 1 and _top(imported, depth) != _top(m, depth):
                edges[_top(m, depth)].add(_top(imported, depth))
    # Tarjan's algorithm
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_the_parts_of_driftloop() -> None:
    """driftloop.X never imports driftloop.Y while Y (directly or through others) imports X."""
    cycles = _cycles(2)
    detail = {
        tuple(c): [(a, b, _graph().find_shortest_chain(a, b)) for a in c for b in c if a != b][:4] for c in cycles
    }
    assert not cycles, f"import cycles between top-level modules of driftloop: {detail}"


@pytest.mark.parametrize("package", ["driftloop.settings", "driftloop.store"])
def test_the_bottom_layer_imports_nothing_above_it(package: str) -> None:
    """Settings and store are what everything else builds on: no import of theirs reaches another layer."""
    bottom = {n.strip() for n in str(_contract()["layers"][-1]).split(":")}  # type: ignore[index]
    g = _graph()
    for m in g.find_descendants(package) | {package}:
        for imported in g.find_modules_directly_imported_by(m):
            assert _top(imported, 2).removeprefix("driftloop.") in bottom, f"{m} imports {imported}"
