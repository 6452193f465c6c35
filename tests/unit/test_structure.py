"""The package's rooms and the direction of their imports (README, Layout): read from the source, nothing run.

Each room may import only rooms on a lower floor (or itself): cli -> attack, cluster -> cell, export -> analysis ->
quant, tasks -> data -> study -> registry, results, errors. `cluster/` sits above `cell/`: the cell knows nothing of
the cluster (locks, progress, the job's time limit and planted trouble reach it as `cell/hooks.py`, filled by
`cluster/runner.py`), and the cluster may drive cells. `study/` and `analysis/` import no torch, `analysis/` never a
model, and no module imports itself through others (no import circle, lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "qlbench"
FLOOR = {"cli": 7, "__init__": 7, "attack": 6, "cluster": 6, "cell": 5, "export": 5, "analysis": 4, "quant": 3,
         "tasks": 3, "data": 2, "study": 1, "registry": 0, "results": 0, "errors": 0}
NO_TORCH = {"study", "analysis", "cluster", "cli", "registry", "results", "errors"}
HEAVY = ("torch", "transformers", "peft", "bitsandbytes")
NEVER = {"analysis": {"cell", "quant", "tasks", "data"},  # aggregates read parquet, never a model
         "cell": {"cluster"}}  # a cell knows nothing of Snakemake or SLURM: what a driver adds, it is lent (hooks)


def room(module: str) -> str:
    """`qlbench.cell.loop` -> `cell`; `qlbench.results` -> `results`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> list[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return found


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_room_has_a_floor():
    rooms = {room("qlbench." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)) for p in FILES}
    assert rooms == set(FLOOR)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_and_heavy_libraries_stay_out_of_light_rooms(path):
    here = room("qlbench." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    for module in imports(path):
        top = module.split(".")[0]
        if top == "qlbench" and "." in module:
            there = room(module)
            if there in FLOOR and there != here:
                assert FLOOR[there] < FLOOR[here], f"{path.name} ({here}) imports {module} ({there}): upward"
                assert there not in NEVER.get(here, ()), f"{path.name} ({here}) imports {module} ({there})"
        if here in NO_TORCH:
            assert top not in HEAVY, f"{path.name} ({here}) imports {module}"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("qlbench",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def import_graph() -> dict[str, set[str]]:
    """qlbench module -> the qlbench modules it imports; `from package import module` counts as the module alone."""
    names = {module_name(p): p for p in FILES}
    graph = {}
    for name, path in names.items():
        found = {m for m in imports(path) if m in names and m != name}
        graph[name] = {m for m in found if not any(o.startswith(m + ".") for o in found)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each as the path from a module back to itself (Tarjan's strongly connected components)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_circle_check_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
