"""The package's shape: every module imports, no import cycle anywhere in src/, arrows run one way, and the bare
``import ctd_hf`` loads none of the heavy libraries."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "src" / "ctd_hf"
# Lower layers never import higher ones, and packages of one layer above the base never import each other: base
# (with adapter, the saved adapter format) -> training, decoding (siblings) -> evaluation, synthesis, integrations ->
# study -> cli.
LAYERS = {"_version": 0, "_compat": 0, "resources": 0, "formula": 0, "prompts": 0, "models": 0, "records": 0,
          "distributed": 0, "plots": 0, "adapter": 0, "settings": 0, "sources": 0, "training": 1, "decoding": 1,
          "evaluation": 2, "synthesis": 2, "integrations": 2,
          "study": 3, "cli": 4}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))
           if "metrics" not in path.parts}  # the metric scripts are loaded by path by `evaluate`, not imported


def imports_of(name: str, path: Path) -> set[str]:
    """The ctd_hf modules ``name`` imports anywhere in its file (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES and c != name}
    return found


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_import_cycle():
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def against_layering(source: str, target: str) -> bool:
    """An import up a layer, or between two packages of one layer above the base (siblings stay independent)."""
    from_layer, to_layer = layer(source), layer(target)
    if from_layer is None or to_layer is None:
        return False
    return to_layer > from_layer or (to_layer == from_layer > 0 and source.split(".")[1] != target.split(".")[1])


def test_arrows_run_one_way():
    upward = [f"{source} -> {target}" for source, targets in GRAPH.items() for target in targets
              if against_layering(source, target)]
    assert not upward, "imports against the layering: " + ", ".join(sorted(upward))


def test_bare_import_loads_no_heavy_library():
    code = ("import sys, ctd_hf; heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets', 'evaluate', "
            "'accelerate') if m in sys.modules]; print(','.join(heavy)); print(ctd_hf.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "" and out[1] == importlib.import_module("ctd_hf._version").__version__


def test_public_names_resolve():
    import ctd_hf

    for name in ctd_hf.__all__:
        assert getattr(ctd_hf, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ctd_hf.nope  # noqa: B018
    with pytest.warns(DeprecationWarning, match="generate_doubled"):
        assert ctd_hf.generate is ctd_hf.generate_doubled


def test_nothing_reads_the_shared_folder_beside_the_checkout():
    """What the package, the tests and the examples read ships in this repository (``ctd_hf/resources``)."""
    needle = "shared" + "/"  # spelled apart so that this file does not match itself
    suffixes = (".py", ".md", ".cfg", ".toml", ".txt", ".json", ".yaml")
    files = [path for folder in ("src", "tests", "examples", "bench") for path in (ROOT / folder).rglob("*")
             if path.is_file() and path.suffix in suffixes and not any(p.endswith(".egg-info") for p in path.parts)]
    offenders = [str(path.relative_to(ROOT)) for path in files if needle in path.read_text(errors="ignore")]
    assert files and not offenders, f"files that refer to the shared folder: {offenders}"
