"""Imports: the package layers, no cycle between parcae modules, and `import parcae` stays light.

The import graph is read from the source with `ast`: an edge A -> B for every `import` of parcae
module B in module A, at module level or inside a function (a function-level import hides a
cycle from the interpreter, not from the design). `from P import name` is an edge to `P.name`
when that is a module, else to `P`. A package's `__init__` is a module like any other: its
re-exports are its edges, and a module importing from the package depends on them. Importing
`P.x` also runs `P/__init__.py`, but that is not counted as an edge of the importer (else every
module would sit in a cycle through `parcae/__init__.py`). Imports under `if TYPE_CHECKING:`
never run and are skipped; imports by name at runtime (`importlib.import_module`) are not seen.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "parcae"


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` under the source folder `src`
    (a package's `__init__.py` under the package's name)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Import statements of `tree`, at any depth, outside `if TYPE_CHECKING:` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _imports(child)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def import_graph(src: Path = SRC, package: str = PACKAGE) -> dict[str, dict[str, str]]:
    """module -> {imported module of the same package: where ("file:line")}."""
    modules = module_files(src, package)
    graph: dict[str, dict[str, str]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(src)}:{node.lineno}"
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the importer's package, `level` steps up
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in targets:
                if target in modules and target != name:
                    edges.setdefault(target, where)
    return graph


def components(graph: dict[str, dict[str, str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set(stack[stack.index(node) :])
            del stack[stack.index(node) :]
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def shortest_cycle(graph: dict[str, dict[str, str]], component: set[str]) -> list[str]:
    """[a, b, ..., a]: the shortest cycle inside `component` through its first module."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while True:  # breadth first: every module of a component reaches every other
        following = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target == start:
                    return paths[node] + [start]
                if target in component and target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following


def find_cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One cycle through each group of modules that import each other."""
    return sorted(shortest_cycle(graph, component) for component in components(graph))


def describe(graph: dict[str, dict[str, str]], component: set[str]) -> str:
    cycle = shortest_cycle(graph, component)
    edges = "\n".join(f"  {a} -> {b}  ({graph[a][b]})" for a, b in zip(cycle, cycle[1:]))
    return f"{', '.join(sorted(component))} import each other, e.g.\n{edges}"


def test_the_graph_has_module_level_function_level_and_relative_imports(tmp_path):
    files = {
        "pkg/__init__.py": "from pkg.sub import helper\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/helper.py": "import os\nimport pkg.base\n",
        "pkg/base.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from pkg import late\n"
            "def f():\n    from . import late\n    return late\n"
        ),
        "pkg/late.py": "from .sub.helper import os\nfrom pkg import sub\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert {module: sorted(edges) for module, edges in graph.items()} == {
        "pkg": ["pkg.sub.helper"],
        "pkg.sub": [],
        "pkg.sub.helper": ["pkg.base"],
        "pkg.base": ["pkg.late"],
        "pkg.late": ["pkg.sub", "pkg.sub.helper"],
    }
    assert graph["pkg.base"]["pkg.late"] == "pkg/base.py:5"
    assert find_cycles(graph) == [["pkg.base", "pkg.late", "pkg.sub.helper", "pkg.base"]]


def test_parcae_modules_import_each_other_without_cycles():
    graph = import_graph()
    found = components(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(graph, c) for c in found)


# The package layers, bottom first (docs/ARCHITECTURE.md §8 says why): a module may import its
# own unit and the units of lower layers; units of one layer are independent of each other. A
# unit is a subpackage of parcae or a top-level module; the command modules (`P.commands`,
# `P.*_commands`: each package's subcommands) form one unit, just under the `cli` that loads
# them, and do not import each other either.
COMMAND_MODULES = "command modules"
LAYERS = (
    ("errors",),
    ("values", "outputs", "device", "commands"),
    ("model",),
    ("data",),
    ("quant", "perf"),
    ("infer",),
    ("export", "hf"),
    ("eval", "serve"),
    ("train",),
    ("scaling",),
    (COMMAND_MODULES,),
    ("cli", PACKAGE),
    ("__main__",),
)


def unit_of(module: str) -> str:
    """The unit of a parcae module: "model" for parcae.model.base, "errors" for parcae.errors,
    "parcae" for the package itself, COMMAND_MODULES for parcae.eval.commands."""
    parts = module.split(".")
    if len(parts) > 2 and (parts[-1] == "commands" or parts[-1].endswith("_commands")):
        return COMMAND_MODULES
    return parts[1] if len(parts) > 1 else parts[0]


def layer_violations(
    graph: dict[str, dict[str, str]], layers: tuple[tuple[str, ...], ...] = LAYERS
) -> list[str]:
    """One line per import that breaks the layer order `layers` (bottom first), naming the
    importing module, the imported one, where, and the rule broken."""
    rank = {unit: level for level, units in enumerate(layers) for unit in units}
    problems = []
    for module, edges in sorted(graph.items()):
        unit = unit_of(module)
        if unit not in rank:
            problems.append(f"{module}: its unit {unit!r} is in no layer (add it to LAYERS)")
            continue
        for target, where in sorted(edges.items()):
            other = unit_of(target)
            if other not in rank:
                continue  # an unknown unit is reported as an importer
            if other == unit == COMMAND_MODULES:
                rule = "command modules stay independent of each other"
            elif other == unit:
                continue
            elif rank[other] > rank[unit]:
                rule = f"{unit} (layer {rank[unit]}) may not import {other} (layer {rank[other]})"
            elif rank[other] == rank[unit]:
                rule = f"{unit} and {other} share layer {rank[unit]} and stay independent"
            else:
                continue
            problems.append(f"{where}: {module} imports {target}, but {rule}")
    return problems


def test_the_layer_check_names_the_importer_the_imported_and_the_rule():
    graph = {
        "parcae.model.base": {"parcae.errors": "parcae/model/base.py:3"},
        "parcae.errors": {},
        "parcae.data.sft": {"parcae.model.loss": "parcae/data/sft.py:4"},
        "parcae.model.loss": {"parcae.data.sft": "parcae/model/loss.py:9"},
        "parcae.export.onnx": {"parcae.hf.transformers": "parcae/export/onnx.py:7"},
        "parcae.hf.transformers": {},
        "parcae.eval.commands": {
            "parcae.cli": "parcae/eval/commands.py:2",
            "parcae.scaling.commands": "parcae/eval/commands.py:3",
        },
        "parcae.scaling.commands": {},
        "parcae.cli": {},
        "parcae.extra": {},
    }
    assert layer_violations(graph) == [
        "parcae/eval/commands.py:2: parcae.eval.commands imports parcae.cli, but command "
        "modules (layer 10) may not import cli (layer 11)",
        "parcae/eval/commands.py:3: parcae.eval.commands imports parcae.scaling.commands, but "
        "command modules stay independent of each other",
        "parcae/export/onnx.py:7: parcae.export.onnx imports parcae.hf.transformers, but "
        "export and hf share layer 6 and stay independent",
        "parcae.extra: its unit 'extra' is in no layer (add it to LAYERS)",
        "parcae/model/loss.py:9: parcae.model.loss imports parcae.data.sft, but model (layer 2) "
        "may not import data (layer 3)",
    ]


def test_parcae_modules_import_only_their_own_and_lower_layers():
    problems = layer_violations(import_graph())
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_the_architecture_document_states_the_layers_the_test_checks():
    """docs/ARCHITECTURE.md §8 lists the layers top first, one line each, units by name."""
    text = (SRC.parent / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("## 8. Package layers", 1)[1].split("```", 2)[1]
    documented = [
        tuple(unit.strip() for unit in line.split("#")[0].split(","))
        for line in block.strip().splitlines()
    ]
    assert documented[::-1] == list(LAYERS)


# Not needed to build, run or load a model: training, data, plotting, logging and the
# transformers extra bring these in when used. (transformers: see tests/hf/test_transformers.py.)
HEAVY = (
    "torch.distributed.",
    "torch.utils.tensorboard",
    "torch._dynamo",
    "tensorboard",
    "datasets",
    "pyarrow",
    "tokenizers",
    "matplotlib",
    "wandb",
    "scipy",
    "yaml",
    "sympy",
    "parcae.train",
    "parcae.data",
)


def test_import_parcae_imports_nothing_heavy_beyond_torch():
    code = (
        "import sys, torch; before = set(sys.modules); import parcae; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    added = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert "parcae.model" in added
    heavy = [
        name
        for name in added
        if any(
            name == prefix.rstrip(".") or name.startswith(prefix.rstrip(".") + ".")
            for prefix in HEAVY
        )
    ]
    assert not heavy, f"`import parcae` imports {', '.join(heavy)}"


WITHOUT_HF_EXTRA = """
import sys
sys.modules["transformers"] = None  # as if not installed: importing it raises
sys.modules["datasets"] = None
import parcae
from parcae.cli import main
from parcae.data.sources import iter_documents
from parcae.errors import MissingDependencyError

try:
    import parcae.hf.transformers
except MissingDependencyError as error:
    print(error)
try:
    next(iter_documents("hf:some/dataset"))
except MissingDependencyError as error:
    print(error)
print(main(["convert", "official", "in", "out"]))
"""


def test_without_the_hf_extra_parcae_works_and_hf_features_name_the_extra():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_HF_EXTRA], check=True, capture_output=True, text=True
    )
    transformers_error, datasets_error, exit_code = result.stdout.splitlines()
    assert transformers_error == (
        "parcae.hf (the transformers classes) needs the optional "
        "package 'transformers': pip install 'parcae[hf]'"
    )
    assert datasets_error == (
        "the input hf:some/dataset needs the optional package 'datasets': pip install 'parcae[hf]'"
    )
    assert exit_code == "2"
    assert result.stderr == f"parcae: error: {transformers_error}\n"
