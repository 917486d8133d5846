"""The package's layers: a lower layer never imports a higher one, and no module imports itself
back through others (function-level imports included). The order is written in docs/design.md."""

from __future__ import annotations

import ast
from pathlib import Path

import dspa_lite

ROOT = Path(dspa_lite.__file__).parent
LAYERS = ["method", "loading", "evaluation", "toyworld", "notebook", "cli"]  # lowest first; __init__ re-exports


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int | None:
    part = module.split(".")[1] if "." in module else None
    return LAYERS.index(part) if part in LAYERS else None


def imports(path: Path) -> list[tuple[str, int]]:
    """``(imported dspa_lite module, line)`` for every import in the file, at any depth."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("dspa_lite")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("dspa_lite"):
                continue
            for a in node.names:  # `from . import x` imports the submodule x when there is one
                sub = f"{base}.{a.name}"
                known = (ROOT.parent / sub.replace(".", "/")).with_suffix(".py").exists() or \
                    (ROOT.parent / sub.replace(".", "/") / "__init__.py").exists()
                out.append((sub if known else base, node.lineno))
    return out


def graph() -> dict[str, list[tuple[str, int]]]:
    return {module_name(p): imports(p) for p in sorted(ROOT.rglob("*.py"))}


def test_no_upward_imports():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        me = module_name(path)
        for target, line in imports(path):
            mine, theirs = layer(me), layer(target)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {LAYERS[mine]} imports {target} "
                           f"({LAYERS[theirs]} is a higher layer)")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    edges = {m: {t: line for t, line in targets if t != m} for m, targets in graph().items()}
    edges = {m: {t: line for t, line in ts.items() if t in edges and not m.startswith(t + ".")} for m, ts in edges.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in edges[m]:
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            steps = [f"{a} -> {b} (line {edges[a][b]})" for a, b in zip(cycle, cycle[1:])]
            raise AssertionError("import cycle:\n" + "\n".join(steps))


def test_no_private_names_cross_modules():
    bad = [f"{p.relative_to(ROOT.parent)}:{node.lineno}: imports {a.name}"
           for p in sorted(ROOT.rglob("*.py")) for node in ast.walk(ast.parse(p.read_text()))
           if isinstance(node, ast.ImportFrom) for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)
