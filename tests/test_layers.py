"""minisft's import graph, read from the source with `ast` (nothing is imported, so a lazy import
inside a function counts as much as one at the top). Five rules:

(a) nothing in minisft imports torch or reference_models (also not through importlib or runpy);
(b) no import cycle between minisft's modules, nor between its units (LAYERS);
(c) imports point down: a unit imports only units of its own or a lower layer of LAYERS;
(d) no method package (minisft/methods/<paper>/) imports another: what two methods share lives in a
    shared module (methods.select, model.budgets, core.errors, model.adapters, ...);
(e) the fast path is reached only through minisft.core.fastpath: nothing but the package root
    imports minisft.gpu (which registers itself there).

A unit is a top-level folder of minisft (core, nn, data, distributed, model, training, gpu, testing,
app), except under methods/: methods.config, methods.base, methods.select, one unit per paper package and methods
(the registry in methods/__init__.py); and the package root (minisft/__init__.py, the public API). Every unit must be declared in LAYERS: a new
module gets a place in the architecture on purpose. The last test plants one violation of each
rule in a copy of the tree and checks that it is reported.
"""

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# low to high, one entry per folder (methods: per package); the trainer drives any Method through its
# protocol alone, so it sits below them; the fast path (gpu) sits above everything it stands in for
LAYERS = [
    ("core",),
    ("nn", "data", "distributed"),
    ("model",),
    ("training",),
    ("methods.config", "methods.base", "methods.select"),
    ("methods.spruft", "methods.adapeft", "methods.loradrop", "methods.gmt", "methods.mgpp"),
    ("methods",),
    ("gpu",),
    ("testing",),
    ("app",),
    ("minisft", "__main__"),
]
PAPERS = LAYERS[5]
FORBIDDEN = ("torch", "reference_models")
DYNAMIC_IMPORTS = ("import_module", "__import__", "run_module")


def modules(root):
    """{module name: path} of every minisft/**/*.py under `root`."""
    out = {}
    for path in sorted((root / "minisft").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def unit(module):
    """The unit (LAYERS) a module belongs to."""
    parts = module.split(".")[1:]
    if not parts:
        return "minisft"
    if parts[0] == "methods" and len(parts) > 1:
        return f"methods.{parts[1]}"
    return parts[0]


def imports(module, path, known):
    """[(line, imported name)] of one file: minisft modules resolved to the module they name (the
    submodule for `from pkg import submodule`), anything else as written."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((node.lineno, sub if sub in known else target))
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            arg = node.args[0] if node.args else None
            if name in DYNAMIC_IMPORTS and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.append((node.lineno, arg.value))
    return out


def find_cycle(edges):
    """One cycle of the directed graph {node: set of nodes} as a list, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def violations(root):
    """Every breach of rules (a)-(d) in the tree under `root`, as readable lines."""
    known = modules(root)
    layer = {u: i for i, names in enumerate(LAYERS) for u in names}
    found = []
    module_edges, unit_edges = {}, {}
    for module, path in known.items():
        here = unit(module)
        if here not in layer:
            found.append(f"undeclared unit {here!r} ({path.relative_to(root)}): give it a place in LAYERS")
            continue
        for line, name in imports(module, path, known):
            where = f"{path.relative_to(root)}:{line}"
            if name.split(".")[0] in FORBIDDEN:
                found.append(f"(a) {where} imports {name}")
            if not (name == "minisft" or name.startswith("minisft.")):
                continue
            module_edges.setdefault(module, set()).add(name)
            there = unit(name)
            if there == here:
                continue
            unit_edges.setdefault(here, set()).add(there)
            if there in layer and layer[there] > layer[here]:
                found.append(f"(c) {where}: {here} (layer {layer[here]}) imports {name} ({there}, layer {layer[there]})")
            if here in PAPERS and there in PAPERS:
                found.append(f"(d) {where}: method package {here} imports method package {there}")
            if there == "gpu" and here != "minisft":
                found.append(f"(e) {where}: {here} imports the fast path {name}; register it with minisft.core.fastpath")
    for kind, edges in (("modules", module_edges), ("units", unit_edges)):
        cycle = find_cycle(edges)
        if cycle:
            found.append(f"(b) import cycle between {kind}: {' -> '.join(cycle)}")
    return found


def test_minisft_imports_point_one_way():
    assert violations(ROOT) == []


def test_every_unit_is_declared_once():
    declared = [u for names in LAYERS for u in names]
    assert len(declared) == len(set(declared))
    assert {unit(m) for m in modules(ROOT)} == set(declared)


PLANTS = [
    ("minisft/training/train.py", "from ..methods.base import Method\n", "(c) minisft/training/train.py"),
    ("minisft/methods/select.py", "from ..methods import REGISTRY\n", "(c) minisft/methods/select.py"),
    ("minisft/nn/gelu.py", "from ..model.gpt import GPT\n", "(c) minisft/nn/gelu.py"),
    ("minisft/methods/gmt/method.py", "from ..mgpp.schedule import magnitude_masks\n",
     "(d) minisft/methods/gmt/method.py"),
    ("minisft/nn/gelu.py", "from ..gpu import kernels\n", "(e) minisft/nn/gelu.py"),
    ("minisft/app/cli.py", "from ..gpu import kernels\n", "(e) minisft/app/cli.py"),
    ("minisft/methods/base.py", "import torch\n", "(a) minisft/methods/base.py"),
    ("minisft/app/cli.py", "def bench():\n    from reference_models.bench.step import main\n", "(a) minisft/app/cli.py"),
    ("minisft/app/cli.py", "import importlib\nimportlib.import_module('reference_models.bench.step')\n",
     "(a) minisft/app/cli.py"),
    ("minisft/data/corpus.py", "from .tokenizer import build_tokenizer\n", "(b) import cycle between modules"),
    ("minisft/fresh.py", "", "undeclared unit 'fresh'"),
]


@pytest.mark.parametrize("path,code,expected", PLANTS, ids=[p[2].split()[0] + ":" + p[0] for p in PLANTS])
def test_a_planted_violation_is_reported(tmp_path, path, code, expected):
    shutil.copytree(ROOT / "minisft", tmp_path / "minisft", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / path
    target.write_text((target.read_text() if target.exists() else "") + "\n" + code)
    found = violations(tmp_path)
    assert any(line.startswith(expected) for line in found), found
