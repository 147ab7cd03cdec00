"""The package layout: no import cycle between modules (type-checking imports included) or between stage
packages, small modules, the README's layout section matching the tree."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lepton_ray

PACKAGE = Path(lepton_ray.__file__).parent
README = PACKAGE.parent / "README.md"
MAX_MODULE_LINES = 400


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.Module, type_checking: bool = True) -> list[ast.stmt]:
    """Import statements: module level, inside functions and (`type_checking`) under `if TYPE_CHECKING:`: a module
    cycle there is a cycle for type checkers and readers, the sign of a type living in the wrong module."""
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if not type_checking and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path, type_checking: bool = True) -> dict[str, set[str]]:
    """Module -> the package modules it imports (a package stands for its `__init__`); `type_checking`: with the
    imports under `if TYPE_CHECKING:`."""
    top = root.name
    modules = {module_name(path, root): path for path in root.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in imports(ast.parse(path.read_text()), type_checking):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                if target == top or target.startswith(top + "."):
                    resolved = resolve(target)
                    if resolved and resolved != name:
                        graph[name].add(resolved)
    return graph


def stage(module: str) -> str:
    """`lepton_ray.trial.loop` -> `trial`; a top-level module is a stage of its own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def stage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    stages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        stages.setdefault(stage(module), set()).update(stage(t) for t in targets if stage(t) != stage(module))
    return stages


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (iterative DFS with colours)."""
    colour = dict.fromkeys(graph, 0)
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(child, 0) == 1:
                return path[path.index(child):] + [child]
            elif colour.get(child, 0) == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


# ---- the checks on a made-up package (so the real checks can fail) ---------------------------

def write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root / "pkg"


def test_a_cycle_through_a_function_level_or_a_type_checking_import_is_found(tmp_path):
    package = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a/__init__.py": "",
        "pkg/a/one.py": "from pkg.b.two import f\n",
        "pkg/b/__init__.py": "",
        "pkg/b/two.py": "def f():\n    from pkg.a import one\n",
        "pkg/b/three.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a.one import x\n",
    })
    graph = import_graph(package)
    assert graph["pkg.b.two"] == {"pkg.a.one"}
    assert graph["pkg.b.three"] == {"pkg.a.one"} and import_graph(package, type_checking=False)["pkg.b.three"] == set()
    assert find_cycle(graph) in (["pkg.a.one", "pkg.b.two", "pkg.a.one"], ["pkg.b.two", "pkg.a.one", "pkg.b.two"])


def test_stage_packages_that_import_each_other_are_a_cycle_even_without_a_module_cycle(tmp_path):
    package = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a/__init__.py": "",
        "pkg/a/one.py": "from pkg.b.two import f\n",
        "pkg/a/leaf.py": "",
        "pkg/b/__init__.py": "",
        "pkg/b/two.py": "from pkg.a.leaf import g\n",
    })
    graph = import_graph(package)
    assert find_cycle(graph) is None
    assert find_cycle(stage_graph(graph)) in (["a", "b", "a"], ["b", "a", "b"])


# ---- the real package ------------------------------------------------------------------------

def test_no_module_imports_itself_back_through_others():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_stage_packages_depend_one_way():
    cycle = find_cycle(stage_graph(import_graph(PACKAGE, type_checking=False)))  # a stage may name a higher stage's type
    assert cycle is None, "stage packages import each other: " + " -> ".join(cycle) + "; move the shared piece down to the lower stage"


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these by concern: {long}"


def readme_layout() -> set[str]:
    block = re.search(r"## Layout\n.*?```\n(.*?)```", README.read_text(), re.S).group(1)
    return {match.group(1) for match in re.finditer(r"^  (\S+?)/?\s", block, re.M)}


def test_the_readme_layout_names_every_stage_package_and_top_level_module_and_nothing_else():
    on_disk = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    on_disk |= {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert readme_layout() == on_disk


def test_the_public_entry_points_import_from_their_documented_paths():
    from lepton_ray.compress import COMPRESSORS
    from lepton_ray.data import DATASETS
    from lepton_ray.deploy import POLICIES, select
    from lepton_ray.distill.losses import LOSSES
    from lepton_ray.export import export_int8
    from lepton_ray.models import MODELS
    from lepton_ray.sweep import run_sweep

    assert {"digits", "synthetic"} <= set(DATASETS.names()) and "cnn_small" in MODELS.names() and "kd" in LOSSES.names()
    assert "knee" in POLICIES.names() and COMPRESSORS and callable(select) and callable(export_int8) and callable(run_sweep)


def test_importing_lepton_ray_loads_neither_ray_nor_torch():
    """Notebook users import the package before they call it; the sweep's imports come on first use."""
    code = "import sys, lepton_ray; print(sorted({'ray', 'torch', 'mlflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_trial_worker_starts_without_onnx_or_onnx_runtime():
    """Every DDP worker (and each trial's Tune actor) imports the loop; only rank 0's finish exports and measures
    the int8 file, so onnx and ORT (~0.7 s of a worker's start on 2 cores) come on that first use."""
    code = "import sys, lepton_ray.trial.loop, lepton_ray.sweep.trial_driver; print(sorted({m.split('.')[0] for m in sys.modules} & {'onnx', 'onnxruntime', 'onnxscript'}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lepton_ray_sweep_is_callable_with_the_entry_points_signature_and_still_the_sweep_package():
    from lepton_ray.sweep.api import dotted_overrides, sweep
    from lepton_ray.sweep.runner import run_sweep

    assert callable(lepton_ray.sweep) and inspect.signature(lepton_ray.sweep) == inspect.signature(sweep)
    assert lepton_ray.sweep.run_sweep is run_sweep and importlib.import_module("lepton_ray.sweep") is lepton_ray.sweep
    assert dotted_overrides({"training__epochs": 2, "distillation__losses__0__weight": 0.5}) == {"training.epochs": 2, "distillation.losses.0.weight": 0.5}


@pytest.mark.parametrize("command", ["select", "leaderboard"])
def test_reading_a_sweep_back_loads_neither_torch_nor_ray_tune(command, tmp_path):
    """`select` and `leaderboard` only read MLflow and the study: on a 400-trial sweep, torch, Ray Tune and
    scikit-learn were half of `select`'s 23 s (benchmarks/sweep_scale.py). Run here on a folder with no sweep,
    so each command gets as far as its first read (the study, the experiment) and stops with its one-line error."""
    args = [command, "workflows/digits_quickstart.yaml", "--set", f"output_dir={tmp_path}", "--set", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    code = f"import sys; from lepton_ray.cli import main; code = main({args!r}); print(code, sorted({{'torch', 'ray.tune', 'sklearn', 'onnxruntime'}} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    assert done.stderr.startswith("lepton-ray: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert done.stdout.split(maxsplit=1)[1].strip() == "[]" and done.stdout.split()[0] != "0"
