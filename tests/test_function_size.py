"""The application layer stays in small steps: no function or method in it is longer than 80 lines.

Why: the loop's behaviour lives in these modules (CLI, daemon, API, model server, demo, ingest loop); a
function that no longer fits on a screen hides its steps. The check reads the source (ast), so it runs in
the fast lane with no services. Nested functions count towards the function that holds them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import driftloop

MAX_LINES = 80
PKG = Path(driftloop.__file__).resolve().parent  # the source tree, or the installed package (wheel check)

# modules and packages (every .py below them) of the application layer, plus the ingest service's main loop
APPLICATION_LAYER = [
    "cli.py", "daemon.py", "daemon_cli.py", "demo.py", "demo_loop.py", "jobs.py", "scheduler.py", "leader.py",
    "dashboards.py", "client.py", "api", "serve", "ingest/service.py",
]  # fmt: skip


def _files() -> list[Path]:
    out: list[Path] = []
    for p in (PKG / name for name in APPLICATION_LAYER if (PKG / name).exists()):
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return out


def test_every_listed_module_exists() -> None:
    missing = [name for name in APPLICATION_LAYER if not (PKG / name).exists()]
    assert not missing, f"listed in APPLICATION_LAYER but not in driftloop/: {missing}; update the list"


def long_functions(source: str, limit: int = MAX_LINES) -> list[str]:
    """``name:line (n lines)`` of every function or method in ``source`` longer than ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            if n > limit:
                found.append((node.lineno, f"{node.name}:{node.lineno} ({n} lines)"))
    return [s for _, s in sorted(found)]


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_function_over_80_lines(path: Path) -> None:
    too_long = long_functions(path.read_text())
    assert not too_long, f"driftloop/{path.relative_to(PKG)}: split into well-named steps of at most {MAX_LINES} " \
                         f"lines: {too_long}"  # fmt: skip


def test_the_check_counts_methods_nested_functions_and_async_ones() -> None:
    def lines(n: int, indent: int) -> str:
        return "".join(f"{' ' * indent}x{i} = {i}\n" for i in range(n))

    method = "class C:\n    def method(self):\n" + lines(MAX_LINES, 8)  # def + 80 lines: 81
    outer = "async def outer():\n    def inner():\n        pass\n" + lines(MAX_LINES - 3, 4)  # 80, inner included
    source = "def short():\n    return 1\n\n\n" + method + "\n\n" + outer
    first = 6 + MAX_LINES + 3
    assert long_functions(source) == [f"method:6 ({MAX_LINES + 1} lines)"]
    assert long_functions(source, limit=MAX_LINES - 1) == [f"method:6 ({MAX_LINES + 1} lines)",
                                                           f"outer:{first} ({MAX_LINES} lines)"]  # fmt: skip
