"""The package's shape: each floor of the data flow imports only the floors below it, and no module imports
itself back through others (read from the source with `ast`, lazy imports inside functions included); and the
entry points start without the heavy libraries only one option needs (a real interpreter's sys.modules)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ENV, REPO

PACKAGE = REPO / "vision_ensemble"
# Lowest first: a module may import its own floor and those before it, never one after it.
FLOORS = [["config"], ["images", "plots", "hub"], ["data"], ["model"], ["training"], ["evaluation"], ["serving"],
          ["labeling"], ["labeler", "onnx_export", "sweep", "datacheck", "cli", "__init__"]]
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    path = REPO / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


def imports_of(source: str, package: str) -> set[str]:
    """Every vision_ensemble module that `source`, a module of `package`, imports, as a dotted name."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "vision_ensemble":  # `from . import sources` names a module
                found |= {f"{target}.{a.name}" if is_module(f"{target}.{a.name}") else target for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "vision_ensemble"}
    return found


def floor_of(module: str) -> int:
    parts = module.split(".")
    return FLOOR["__init__"] if len(parts) == 1 else FLOOR[parts[1]]


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        graph[name] = imports_of(path.read_text(), name if path.name == "__init__.py" else name.rpartition(".")[0])
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} (floor {floor_of(m)}) imports {t} (floor {floor_of(t)})"
            for m, targets in sorted(graph.items()) for t in sorted(targets) if floor_of(t) > floor_of(m)]


def import_circles(graph: dict[str, set[str]]) -> list[str]:
    state, circles = {}, []

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                circles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return circles


def test_every_module_has_a_floor():
    unplaced = sorted({m.split(".")[1] for m in import_graph() if "." in m} - set(FLOOR))
    assert not unplaced, f"place these in FLOORS (and the table in docs/index.md): {unplaced}"


def test_no_module_imports_a_floor_above_it():
    assert not upward_imports(import_graph()), "\n".join(upward_imports(import_graph()))


def test_no_import_circles():
    assert not import_circles(import_graph()), "\n".join(import_circles(import_graph()))


def test_the_checks_catch_a_planted_circle_and_a_lazy_upward_import():
    lazy = "def f():\n    from ..serving.predict import predict_image\n"
    planted = {"vision_ensemble.model.member": imports_of(lazy, "vision_ensemble.model"),
               "vision_ensemble.serving.predict": {"vision_ensemble.model.member"}}
    assert planted["vision_ensemble.model.member"] == {"vision_ensemble.serving.predict"}
    assert upward_imports(planted) == ["vision_ensemble.model.member (floor 3) imports "
                                       "vision_ensemble.serving.predict (floor 6)"]
    assert import_circles(planted) == ["vision_ensemble.model.member -> vision_ensemble.serving.predict -> "
                                       "vision_ensemble.model.member"]


# Libraries that only one option or one button needs: up to a second or so of every start each (BENCHMARKS.md:
# start-up).
OPTIONAL = ("pytorch_grad_cam", "captum", "sklearn", "cleanlab", "onnxruntime", "mlflow", "optuna", "imagehash",
            "datasets")
LOAD_ENTRY_POINTS = """
import importlib.util, sys
names, paths = sys.argv[1].split(","), sys.argv[2:]
for path in paths:
    spec = importlib.util.spec_from_file_location(path.replace("/", "_").removesuffix(".py"), path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(",".join(name for name in names if name in sys.modules))
"""


@pytest.mark.slow
def test_entry_points_start_without_the_libraries_only_an_option_needs():
    """Loading train/, evaluation/ and app.py (all their imports, not a run) leaves grad-cam, Captum, scikit-learn,
    cleanlab, ONNX Runtime, MLflow, Optuna, imagehash and `datasets` to the code that uses them."""
    result = subprocess.run([sys.executable, "-c", LOAD_ENTRY_POINTS, ",".join(OPTIONAL), "train/finetune.py",
                             "evaluation/evaluate.py", "evaluation/thresholds.py", "app.py"],
                            env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "", f"imported at start-up: {result.stdout.strip()}"
