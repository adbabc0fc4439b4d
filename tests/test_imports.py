"""The package's import graph: no cycles among module-level imports."""

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
