"""The package's import graph and layout: no cycles, commands on top of a few plumbing modules,
library stages that only import earlier stages (README, layout)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tpt_aqa"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the tpt_aqa modules it imports at module level (not inside functions)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import mod` imports the submodule when there is one
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t.startswith("tpt_aqa") and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "tpt_aqa.config" in graph and "tpt_aqa.core.errors" in graph["tpt_aqa.config"]
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


# Commands users run; each is an entry point on one floor above the shared modules.
ENTRY_POINTS = {
    "train",
    "eval",
    "predict",
    "convert",
    "extract_features",
    "verify",
    "export_table",
    "aggregate",
    "benchmark",
    "weights",
    "prepare_frames",
    "export_synthetic",
}
# Tools built on a whole training run, one floor higher still.
TOOLS = {"make_demo_checkpoint", "run_jigsaws_folds"}


def test_every_command_module_is_classified():
    graph = import_graph()
    commands = {
        name.removeprefix("tpt_aqa.")
        for name in graph
        if name.count(".") == 1
        and (PACKAGE / f"{name.removeprefix('tpt_aqa.')}.py").is_file()
        and "def main(" in (PACKAGE / f"{name.removeprefix('tpt_aqa.')}.py").read_text()
    }
    assert commands == ENTRY_POINTS | TOOLS


def test_entry_points_never_import_each_other():
    graph = import_graph()
    for name in ENTRY_POINTS:
        others = {f"tpt_aqa.{e}" for e in ENTRY_POINTS | TOOLS} - {f"tpt_aqa.{name}"}
        assert not graph[f"tpt_aqa.{name}"] & others, name


# The library's stages in pipeline order (README, layout): a stage imports only earlier ones.
STAGES = ("core", "data", "models", "scoring", "training", "reporting")
# Top-level modules that are not commands: what the commands share above the stages.
PLUMBING = {"cli", "config", "predictor"}
# Package folders above the plumbing: the studies of the `benchmark` command.
ABOVE_PLUMBING = {"benchmarks"}


def unit(module: str) -> str:
    """The package folder (``scoring``) or top-level module (``train``) a module belongs to;
    ``tpt_aqa`` for the package itself."""
    return module.split(".")[1] if "." in module else module


def floor(u: str) -> int:
    """How high a unit sits: stages in order, then plumbing, the benchmark studies, commands and
    the tools built on commands."""
    if u == "tpt_aqa":
        return 0  # the package's own __init__ (its version) sits with core
    if u in STAGES:
        return STAGES.index(u)
    ranks = [(PLUMBING, 0), (ABOVE_PLUMBING, 1), (ENTRY_POINTS, 2), (TOOLS, 3)]
    return len(STAGES) + next(rank for names, rank in ranks if u in names)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a unit on a higher floor than the importer's, as ``importer → imported``."""
    return sorted(
        f"{m} → {d}" for m, deps in graph.items() for d in deps if floor(unit(d)) > floor(unit(m))
    )


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    units: dict[str, set[str]] = {}
    for m, deps in graph.items():
        units.setdefault(unit(m), set()).update(unit(d) for d in deps if unit(d) != unit(m))
    return units


def layers(graph: dict[str, set[str]]) -> int:
    """Units on the longest import chain (the graph has no cycle)."""
    depth: dict[str, int] = {}

    def visit(u: str) -> int:
        if u not in depth:
            depth[u] = 1 + max((visit(d) for d in graph[u]), default=0)
        return depth[u]

    return max(visit(u) for u in graph)


def test_layout_checks_find_planted_mistakes():
    assert upward_imports({"tpt_aqa.data.base": {"tpt_aqa.scoring.groups"}}) == [
        "tpt_aqa.data.base → tpt_aqa.scoring.groups"
    ]
    assert upward_imports({"tpt_aqa.training.run_folder": {"tpt_aqa.config"}})
    assert upward_imports({"tpt_aqa.scoring.bank": {"tpt_aqa.data.samplers"}}) == []
    assert layers({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"c"}}) == 3


def test_the_top_level_holds_the_commands_and_a_few_plumbing_modules():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == ENTRY_POINTS | TOOLS | PLUMBING, sorted(top ^ (ENTRY_POINTS | TOOLS | PLUMBING))
    assert len(PLUMBING) <= 3
    folders = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert folders == set(STAGES) | ABOVE_PLUMBING


def test_no_module_imports_a_higher_floor():
    assert upward_imports(import_graph()) == []


def test_data_and_models_import_no_later_stage():
    for name, deps in import_graph().items():
        if unit(name) in ("data", "models"):
            assert {unit(d) for d in deps} <= {"tpt_aqa", "core", "data", "models"}, name


def test_core_imports_no_other_package_folder():
    for name, deps in import_graph().items():
        if unit(name) == "core":
            assert {unit(d) for d in deps} <= {"tpt_aqa", "core"}, (name, deps)


def test_the_units_have_no_cycle_and_at_most_eight_layers():
    units = unit_graph(import_graph())
    assert find_cycle(units) is None, " → ".join(find_cycle(units))
    assert layers(units) <= 8


def test_no_test_imports_from_a_command_module():
    """Tests reach a command as a module (``from tpt_aqa import train as train_entry``) to run it;
    ``from tpt_aqa.<command> import name`` only in that command's own test file, or for its
    ``main``/``run``: helpers that other tests need live in library modules."""
    commands = ENTRY_POINTS | TOOLS
    wrong = []
    for path in sorted(PACKAGE.parents[1].joinpath("tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
                "tpt_aqa."
            ):
                continue
            command = node.module.split(".")[1]
            names = {a.name for a in node.names}
            if command in commands and path.stem != f"test_{command}" and names - {"main", "run"}:
                wrong.append(f"{path.name}:{node.lineno} from {node.module} import {sorted(names)}")
    assert wrong == []


def test_library_imports_change_nothing_until_setup():
    """Importing the library (no command) registers no resolver and adds no warning filter;
    ``core.startup.setup`` does both, once however often it is called."""
    code = """
import importlib, pkgutil, warnings
from omegaconf import OmegaConf
import tpt_aqa
commands = set(COMMANDS)
for m in pkgutil.walk_packages(tpt_aqa.__path__, "tpt_aqa."):
    if m.name.removeprefix("tpt_aqa.") not in commands:
        importlib.import_module(m.name)
from tpt_aqa.core.startup import QUIET_WARNINGS, setup
def quieted():
    patterns = {f[1].pattern for f in warnings.filters if f[0] == "ignore" and f[1] is not None}
    return [m for m, _ in QUIET_WARNINGS if m in patterns]
assert not OmegaConf.has_resolver("tpt_aqa.weights_setting")
assert quieted() == []
setup(); after = list(warnings.filters); setup()
assert OmegaConf.has_resolver("tpt_aqa.weights_setting")
assert len(quieted()) == len(QUIET_WARNINGS) and len(warnings.filters) == len(after)
print("ok")
""".replace("COMMANDS", repr(sorted(ENTRY_POINTS | TOOLS)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "ok", proc.stderr
