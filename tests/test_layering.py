"""The package's layers: imports point one way, and no module imports itself back through others.

Order (bottom first): lc.config and lc.device; data; ops; models; training; evaluation; bench;
report; cli. A module may import its own package and anything lower, never anything higher.

training, evaluation and bench are siblings above models; only the imports that exist between them
are allowed, in one direction each, which keeps them acyclic: evaluation may import training (the
checkpoint loader), bench may import training and evaluation (checkpoints, Table 6's CRF and
inference); training imports neither, and evaluation does not import bench.

Every import counts, also the ones inside functions (lazy imports are a startup-time device, not
a licence to point upward). The source is parsed (ast), nothing is imported.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lc"

# rank of each top-level part of lc; an import may go to the same rank or a lower one (training,
# evaluation and bench get three ranks: the one direction allowed between the siblings)
RANK = {"config": 0, "device": 0, "__init__": 0, "data": 1, "ops": 2, "models": 3, "training": 4,
        "evaluation": 5, "bench": 6, "report": 7, "cli": 8}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The lc module `name` refers to (itself, or its nearest enclosing module), or None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The lc modules `module` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from lc.x import y`: y may be a submodule or a name in lc.x
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            if name == "lc" or name.startswith("lc."):
                target = _resolve(name, modules)
                if target is not None and target != module:
                    found.add(target)
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def test_every_part_of_lc_has_a_rank() -> None:
    parts = {_part(m) for m in _modules()}
    assert parts <= set(RANK), f"give {sorted(parts - set(RANK))} a place in RANK (and in HELPERS/README)"


def test_imports_point_down_the_layers() -> None:
    violations = []
    for module, targets in _graph().items():
        for target in sorted(targets):
            if RANK[_part(target)] > RANK[_part(module)]:
                violations.append(f"{module} imports {target}")
    assert not violations, "imports against the layer order:\n  " + "\n  ".join(violations)


def test_no_import_cycles() -> None:
    # a package's __init__ that re-exports its submodules lazily is not a cycle with them
    graph = {m: {t for t in targets if not (m and t.startswith(m + ".") and (PACKAGE.parent / Path(
        *m.split("."))).is_dir())} for m, targets in _graph().items()}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_checker_sees_upward_and_lazy_imports(tmp_path) -> None:
    """The parser finds function-level and relative imports (the test above could not fail otherwise)."""
    modules = {"lc.models.cascade": Path(), "lc.report.paper": Path(), "lc.models": Path(),
               "lc.models.irnet": Path()}
    source = tmp_path / "cascade.py"
    source.write_text("from .irnet import IRNet\n\ndef f():\n    from lc.report import paper\n")
    assert _imports("lc.models.cascade", source, modules) == {"lc.models.irnet", "lc.report.paper"}
