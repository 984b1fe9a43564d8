"""The package's shape, held by a test: no import cycles, inference that never loads
the training loop, and modules small enough to read (issue 10's boundaries)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lenet"
# Using a trained model must not need the machinery that trains one.
INFERENCE = ("lenet.use.predict", "lenet.use.serve", "lenet.use.export", "lenet.use.evaluation", "lenet.use.inspection")
TRAINING_PACKAGE = "lenet.training"
MAX_MODULE_LINES = 500


def module_name(path: Path) -> str:
    parts = ("lenet",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the lenet modules it imports (at the top or inside functions)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == "lenet":
            continue  # the facade re-exports everything, lazily
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                found = known(target) if target.startswith("lenet") else None
                if found and found not in (name, "lenet"):
                    edges.add(found)
        graph[name] = edges
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycles():
    graph = imports()
    cycles = sorted(m for m in graph if m in reachable(graph, m))
    assert cycles == [], f"modules that import themselves through others: {cycles}"


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_never_reaches_the_training_loop(module):
    training = {m for m in reachable(imports(), module) if m.startswith(TRAINING_PACKAGE)}
    assert training == set()


def test_no_module_over_500_lines():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_the_checker_sees_a_real_edge():
    # Guards the test itself: a graph without edges would pass every check above.
    graph = imports()
    assert "lenet.training.loop" in graph["lenet.training.driver"]
    assert "lenet.store.models" in graph["lenet.use.predict"]


def test_every_module_in_an_xdist_group_shares_its_worker_by_file():
    """conftest.SHARED_WORKER is what keeps an xdist_group's tests on one worker (see
    there); a module marked with a group but missing from it would be spread again."""
    import re

    from conftest import SHARED_WORKER

    tests = Path(__file__).resolve().parent
    marked = {f"tests/{p.name}" for p in tests.glob("test_*.py")
              if re.search(r"^pytestmark = .*pytest\.mark\.xdist_group\(", p.read_text(), re.M)}
    assert marked and marked == set(SHARED_WORKER)


def test_the_top_level_shows_the_plan():
    """Subpackages by job; at most 12 modules of their own at the top (issue 23)."""
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 12, modules
    assert {"configuration", "data", "model", "training", "speed", "store", "use", "experiments", "cli"} <= \
        {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def test_only_the_speed_package_reaches_its_mechanisms():
    """Fused layers, halves and CUDA graphs are behind the one seam (speed.step, speed.forward)."""
    mechanisms = {"lenet.speed.fused", "lenet.speed.halves", "lenet.speed.graphs"}
    outside = {m: sorted(edges & mechanisms) for m, edges in imports().items()
               if not m.startswith("lenet.speed") and edges & mechanisms}
    assert outside == {}


def _imports_in(path: Path) -> list[tuple[ast.AST, bool]]:
    """Every import statement of a module, and whether it sits inside a function."""
    tree = ast.parse(path.read_text())
    inside = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}
    return [(node, id(node) in inside) for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_no_private_name_is_imported_from_another_module():
    found = [f"{p.relative_to(PACKAGE)}:{node.lineno} {alias.name}" for p in PACKAGE.rglob("*.py")
             for node, _ in _imports_in(p) if isinstance(node, ast.ImportFrom)
             for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert found == []


# Imported where they are used: they cost seconds, or come with an extra (issue 23).
HEAVY = ("ray", "optuna", "matplotlib", "onnx", "onnxruntime", "onnxscript", "torch.onnx", "uvicorn", "fastapi",
         "starlette", "httpx", "tensorboard", "torch.utils.tensorboard", "IPython", "tqdm.notebook", "PIL",
         "lenet.use.figures", "lenet.experiments.search.lines")


def test_function_local_imports_are_the_cli_boundary_or_heavy_dependencies():
    """The CLI imports the library lazily (`lenet --help` loads no torch); elsewhere a
    function-local import is for a heavy or optional dependency only."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if name.startswith("lenet.cli"):
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node, inside in _imports_in(path):
            if not inside:
                continue
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                targets = [base.rstrip(".")]
            else:
                targets = [a.name for a in node.names]
            found += [f"{name}:{node.lineno} {t}" for t in targets
                      if not any(t == h or t.startswith(h + ".") for h in HEAVY)]
    assert found == []
