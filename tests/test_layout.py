"""The house rules, checked on the source: layers import one way, no cycles, no private imports, small modules,
and ``python -m optsearch --help`` loads no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "optsearch"
MAX_LINES = 420

# Lower numbers are lower layers; a module may import its own layer's package and anything below it.
# Modules of different packages on one layer may not import each other.
LAYERS = {
    "errors": 0, "stats": 0,
    "genome": 1,
    "optim": 2, "train": 2,
    "search": 3,
    "analysis": 4, "benchmark": 4,
    "dashboard": 5,
    "cli": 6,
    "__init__": 7, "__main__": 7,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
        out[".".join(("optsearch", *parts))] = path
    return out


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every optsearch import in a file, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optsearch"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("optsearch")]
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = _modules()


def _resolve(module: str, name: str) -> str:
    """``from pkg import sub`` names a submodule when pkg.sub is one."""
    return f"{module}.{name}" if f"{module}.{name}" in MODULES else module


def test_every_package_has_a_layer() -> None:
    assert {_package(m) for m in MODULES} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    own = _package(module)
    targets = {_resolve(t, n) for t, names in _imports(MODULES[module]) for n in (names or [""])}
    for target in sorted(targets):
        other = _package(target)
        if other == own:
            continue
        assert LAYERS[other] < LAYERS[own], f"{module} imports {target}: {other} is not below {own}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_from_other_modules(module: str) -> None:
    for target, names in _imports(MODULES[module]):
        private = [n for n in names if n.startswith("_") and _resolve(target, n) == target]
        assert not private, f"{module} imports private {private} from {target}"


def test_no_import_cycles() -> None:
    graph = {m: {_resolve(t, n) for t, names in _imports(p) for n in (names or [""])} & set(MODULES)
             for m, p in MODULES.items()}
    # A package's __init__ re-exporting its own modules is not a cycle of concerns.
    graph = {m: {t for t in ts if not (m == t or t.startswith(m + ".") and MODULES[m].name == "__init__.py")}
             for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(t):], t]))
            if t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{module} has {n} lines; split it by concern"


def test_help_imports_no_torch() -> None:
    code = "import sys, runpy; sys.argv = ['optsearch', '--help']\n" \
           "try:\n    runpy.run_module('optsearch', run_name='__main__')\nexcept SystemExit:\n    pass\n" \
           "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "usage" in r.stdout
    assert r.stderr.strip().endswith("NO-TORCH")
