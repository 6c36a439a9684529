"""The package's import graph: no circle among agentflan modules, and the layers that must stay light do."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import agentflan

PACKAGE = Path(agentflan.__file__).parent
REPO = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the agentflan modules it imports, anywhere in it (top level, in functions, under
    TYPE_CHECKING): a circle closed by a function-level import is still a circle."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from agentflan.train import loop` imports the module agentflan.train.loop
                targets |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        graph[name] = {
            t for t in targets if t in modules and t != name and modules[t].name != "__init__.py"
        }
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert "agentflan.train.data" in graph["agentflan.train.recipe"]  # a top-level import
    assert "agentflan.train.loop" in graph["agentflan.train.recipe"]  # a function-level one


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_in_the_package():
    assert circles(import_graph()) == []


def test_a_tune_study_plans_without_torch():
    """The study's driver plans trials (the search space, ASHA's budget in total steps) without loading torch:
    the config functions live apart from the training loop."""
    code = f"""
import sys
from agentflan.config import load_config
from agentflan.tune.space import load_space
from agentflan.tune.study import _scheduler
cfg = load_config({str(REPO / "pipelines/local.yaml")!r}, ["train.max_steps=null"])
space = load_space({str(REPO / "tune_spaces/asha_vs_grid.yaml")!r}, cfg)
assert space.scheduler.kind == "asha" and _scheduler(space, cfg) is not None
print("torch" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
