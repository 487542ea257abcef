"""The package's import graph: stages import only stages below them, there are no cycles, and no module hides an
import of the project's own modules inside a function (except the optional lm-eval extra).

The graph is read from the source with ``ast`` (no module is imported), ``models/`` counted as
``optima_jax.models`` as the wheel installs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"optima_jax": ROOT / "optima_jax", "optima_jax.models": ROOT / "models"}

# The pipeline's stages, lowest first: a module may import its own stage and the stages below it. A module's
# stage is that of the longest prefix listed here.
STAGES: list[tuple[str, ...]] = [
    ("optima_jax", "optima_jax.errors", "optima_jax.fileio", "optima_jax.progress", "optima_jax.transfers"),
    ("optima_jax.models",),
    ("optima_jax.config", "optima_jax.sparsity", "optima_jax.sharding", "optima_jax.assets"),
    ("optima_jax.data",),
    ("optima_jax.qp", "optima_jax.selectors", "optima_jax.updates", "optima_jax.refine"),
    ("optima_jax.engine",),
    ("optima_jax.pruner",),
    ("optima_jax.checkpoint", "optima_jax.report", "optima_jax.run_log", "optima_jax.capture"),
    ("optima_jax.evaluate",),
    ("optima_jax.lm_eval", "optima_jax.validation", "optima_jax.pipeline"),
    ("optima_jax.prune", "optima_jax.export"),
]

# Modules that need an optional extra (pip install 'optima_jax[lm-eval]'): importing them inside the function
# that needs them is the point, so that everything else runs without the extra.
OPTIONAL_EXTRA_MODULES = {"optima_jax.lm_eval"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "optima_jax" and parts and parts[0] == "models":
                continue
            out[name] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an imported name refers to (the longest known module prefix), else None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path):
    """(target module, line, inside a function) for every import of a project module."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    def in_function(node) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return True
        return False

    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        targets = {t for t in (_resolve(n) for n in names if n.startswith("optima_jax")) if t and t != module}
        # "from optima_jax import x": the package itself only if no submodule x was meant
        if isinstance(node, ast.ImportFrom) and len(targets) > 1:
            targets.discard(_resolve(node.module or ""))
        for t in targets:
            yield t, node.lineno, in_function(node)


def _stage(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(STAGES):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} belongs to no stage: add it to STAGES"
    return best


EDGES = [(m, t, line, fn) for m, path in MODULES.items() for t, line, fn in _imports(m, path)]


def test_every_module_has_a_stage():
    for m in MODULES:
        _stage(m)


def test_no_function_level_imports_of_project_modules():
    hidden = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}"
        for m, t, line, fn in EDGES
        if fn and t not in OPTIONAL_EXTRA_MODULES
    ]
    assert not hidden, "imports of the project's own modules inside functions:\n" + "\n".join(sorted(hidden))


def test_stages_import_only_downwards():
    upward = [
        f"{MODULES[m].relative_to(ROOT)}:{line} ({m}, stage {_stage(m)}) imports {t} (stage {_stage(t)})"
        for m, t, line, fn in EDGES
        if t not in OPTIONAL_EXTRA_MODULES and _stage(t) > _stage(m)
    ]
    assert not upward, "imports against the pipeline's direction:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, t, _, fn in EDGES:
        if not fn:
            graph[m].add(t)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_module_imports_another_modules_private_names():
    private = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optima_jax"):
                private += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert not private, "private names imported across modules:\n" + "\n".join(private)


def test_the_checker_sees_a_planted_cycle_and_a_hidden_import(tmp_path):
    """The AST walk finds what it is meant to find (a checker that reads nothing would pass the tests above)."""
    a = tmp_path / "a.py"
    a.write_text("from optima_jax import engine\n\ndef f():\n    from optima_jax.data import sampling\n")
    found = set(_imports("optima_jax.report", a))
    assert found == {("optima_jax.engine", 1, False), ("optima_jax.data.sampling", 4, True)}
    assert _stage("optima_jax.data.sampling") < _stage("optima_jax.engine") < _stage("optima_jax.prune")
