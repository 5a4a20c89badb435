"""The layout's rule (numgpt/__init__.py's docstring, the README's Layout section), read from the
code with ``ast``: numgpt's imports point down the layers of LAYERS, the import graph has no
cycle but the documented ones (LAZY_EDGES), and an import inside a function is of another
library, never of numgpt's own modules but for LAZY_EDGES."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first: a module may import its own layer and the ones before it, never one after it.
# A module's layer is its longest prefix in this table.
LAYERS = [
    ("foundation", ("numgpt.errors", "numgpt.schema", "numgpt.safe_write", "numgpt.cache", "numgpt.bf16",
                    "numgpt.device", "numgpt.cuda", "numgpt.backend")),
    ("core", ("numgpt.autograd", "numgpt.precision", "numgpt.ops", "numgpt.registry", "numgpt.optim",
              "numgpt.graph", "numgpt.kernels")),
    ("nn", ("numgpt.nn",)),
    ("models", ("numgpt.models", "numgpt.gradcheck")),      # gradcheck's check_model builds a tiny GPTModel
    ("io", ("numgpt.io",)),
    ("data", ("numgpt.data",)),
    ("training", ("numgpt.training",)),
    ("api", ("numgpt",)),                                    # numgpt/__init__.py: the public names, re-exported
    ("cli", ("numgpt.cli", "numgpt.__main__")),
]

# The imports of numgpt's own modules made inside a function, each (importer, imported prefix): the
# documented cycles and the lazily loaded kernels. Nothing else of numgpt is imported in a function.
LAZY_EDGES = {
    # Tensor's operators (x + y, x[i], x.sum()) are ops, and the ops make Tensors
    ("numgpt.autograd", "numgpt.ops."): "Tensor's operators -> ops -> Tensor",
    # the ops ask the registry which function runs; the registry lists the reference pairs it chooses from
    ("numgpt.registry", "numgpt.ops."): "ops -> registry -> the reference pairs",
    ("numgpt.registry", "numgpt.optim"): "optim -> registry -> AdamW's reference update",
    # numba: heavy to import and absent in kernel mode numpy, loaded when first asked for
    ("numgpt.registry", "numgpt.kernels"): "the numba twins, loaded when kernel mode numba first runs",
    ("numgpt.cli.info", "numgpt.kernels"): "numgpt info reports the kernels without making every command load numba",
    ("numgpt.nn.inference_bf16", "numgpt.kernels.bf16_weights"): "the widening kernel, in kernel mode numba only",
    ("numgpt.precision", "numgpt.kernels.bf16_detect"): "the bf16 path (CPU features), asked in kernel mode numba only",
    ("numgpt.precision", "numgpt.kernels.bf16"): "the weight cache's copies, made by the kernels in kernel mode numba",
}


def module_files():
    """{module name: path} of numgpt/ and kernels/ (installed as numgpt.kernels)."""
    files = {}
    for folder, package in (("numgpt", "numgpt"), ("kernels", "numgpt.kernels")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package,) + parts)
            files[name.removesuffix(".__init__")] = path
    return files


MODULES = module_files()


def imported_modules(node, importer):
    """The numgpt modules one import statement loads (``from numgpt import backend`` loads
    numgpt.backend; ``from numgpt.io.safe_io import read_json`` loads numgpt.io.safe_io)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "numgpt"]
    base = node.module or ""
    if node.level:                                           # relative: from the importer's package
        package = importer.split(".")
        if not MODULES[importer].name == "__init__.py":
            package = package[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != "numgpt":
        return []
    submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    return submodules if len(submodules) == len(node.names) else [base] + submodules


def import_statements():
    """[(importer, imported module, line, inside a function)] over every module."""
    found = []
    for importer, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def visit(node, in_function, importer=importer):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    found.extend((importer, module, child.lineno, in_function)
                                 for module in imported_modules(child, importer))
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
        visit(tree, False)
    return found


IMPORTS = import_statements()


def layer_of(module):
    best = None
    for rank, (name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[2]):
                best = (rank, name, len(prefix))
    assert best is not None, f"{module} is in no layer of LAYERS: add it to the table"
    return best[:2]


def lazy_reason(importer, module):
    return next((reason for (source, target), reason in LAZY_EDGES.items()
                 if importer == source and (module == target or module.startswith(target))), None)


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_imports_point_down_the_layers():
    upward = []
    for importer, module, line, _ in IMPORTS:
        (low, low_name), (high, high_name) = layer_of(importer), layer_of(module)
        if high > low and lazy_reason(importer, module) is None:
            upward.append(f"{MODULES[importer].relative_to(ROOT)}:{line}: {importer} ({low_name}) imports "
                          f"{module} ({high_name})")
    print(f"{len(IMPORTS)} imports of numgpt's own modules read")
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_no_import_of_numgpt_inside_a_function_but_the_documented_ones():
    inside = [f"{MODULES[importer].relative_to(ROOT)}:{line}: {importer} imports {module}"
              for importer, module, line, in_function in IMPORTS
              if in_function and lazy_reason(importer, module) is None]
    assert not inside, "imports of numgpt's own modules inside a function:\n" + "\n".join(inside)


def test_every_documented_lazy_import_is_there():
    """LAZY_EDGES names no edge that the code has dropped (an allow-list that only grows hides new ones)."""
    for (source, target), reason in LAZY_EDGES.items():
        assert any(importer == source and (module == target or module.startswith(target)) and in_function
                   for importer, module, _, in_function in IMPORTS), f"{source} -> {target} ({reason}) is gone"


def find_cycle(edges):
    """One cycle of the directed graph ``edges`` ({node: set of nodes}) as a list of nodes, or None."""
    state, stack = {}, []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = walk(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = walk(node)
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_cycle_but_the_documented_ones():
    """Every import, at module level and inside functions, but LAZY_EDGES: no cycle. A package's
    __init__ importing its own modules is no cycle (importing numgpt.io.safe_io runs numgpt/io/__init__.py
    first, which is not an import of it by safe_io)."""
    edges = {}
    for importer, module, _, _ in IMPORTS:
        if lazy_reason(importer, module) is None and module != importer:
            edges.setdefault(importer, set()).add(module)
    cycle = find_cycle(edges)
    assert cycle is None, "an import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    """The check above can fail: a three-module cycle and a self-contained diamond."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}}) is None


@pytest.mark.parametrize("importer, module", [("numgpt.autograd", "numgpt.io.checkpoint"),
                                              ("numgpt.ops.gelu", "numgpt.models.gpt"),
                                              ("numgpt.models.gpt", "numgpt.training.train"),
                                              ("numgpt.io.checkpoint", "numgpt.cli.train")])
def test_the_layers_order_core_below_io_models_training_cli(importer, module):
    """The table says what the rule says: the core imports no io, models, training or cli."""
    assert layer_of(importer)[0] < layer_of(module)[0]


def imports_without_a_reason(where, text):
    """["where:line: statement"] of the imports inside functions of ``text`` that give no reason: a
    comment on the statement, or on the line above it, or the statement directly below one that
    gives it (a block of imports shares its reason)."""
    lines, missing = text.split("\n"), []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                own = "#" in "\n".join(lines[child.lineno - 1:child.end_lineno])
                above = lines[child.lineno - 2].strip()
                if not (own or above.startswith("#") or above.startswith(("import ", "from "))):
                    missing.append(f"{where}:{child.lineno}: {lines[child.lineno - 1].strip()}")
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
    visit(ast.parse(text), False)
    return missing


def test_every_import_inside_a_function_gives_its_reason():
    missing = [line for path in MODULES.values()
               for line in imports_without_a_reason(path.relative_to(ROOT), path.read_text(encoding="utf-8"))]
    assert not missing, "imports inside a function without a one-line reason:\n" + "\n".join(missing)


def test_the_reason_check_finds_an_import_without_one():
    text = ("import os\n"
            "def plot():\n"
            "    import matplotlib                 # heavy: only for drawing\n"
            "    import matplotlib.pyplot\n"
            "def draw():\n"
            "    x = 1\n"
            "    import matplotlib\n")
    assert imports_without_a_reason("m.py", text) == ["m.py:7: import matplotlib"]
