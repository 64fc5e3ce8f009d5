"""The package's layout rules (issue 11): no import cycle between its modules
at import time, and no kernel module importing the autograd layer or the
public API above it (kernels are the bottom of the house)."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mmcal_kernels")
KERNEL_MODULES = ("backends.triton.reductions", "backends.triton.elementwise", "backends.triton.slots",
                  "backends.triton.configs")  # fmt: skip
ABOVE_THE_KERNELS = ("autograd", "backends.kernel_backend", "functional", "module", "gates_backward")


def _modules() -> dict[str, str]:
    found = {}
    for dirpath, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), PACKAGE)[:-3].replace(os.sep, ".")
                found[rel[: -len(".__init__")] if rel.endswith("__init__") else rel] = os.path.join(dirpath, f)
    return found


def _imports_at_import_time(name: str, path: str, modules) -> set[str]:
    """The package modules ``name`` imports at its top level (imports inside functions run later, on call)."""
    package = name if os.path.basename(path) == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{target}.{alias.name}".lstrip(".")
                edges.add(full if full in modules else target)
    return {e for e in edges if e in modules and e != name}


def _graph():
    modules = _modules()
    return {name: _imports_at_import_time(name, path, modules) for name, path in modules.items()}


def test_no_import_cycle():
    graph = _graph()
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            # A submodule importing its own package is how Python packages work
            # (the package is initialised first), not a cycle.
            if node.startswith(nxt + ".") or nxt == "":
                continue
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("kernel", KERNEL_MODULES)
def test_kernel_modules_do_not_import_the_layers_above(kernel):
    graph = _graph()
    seen, todo = set(), [kernel]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert not seen & set(ABOVE_THE_KERNELS), f"{kernel} imports {sorted(seen & set(ABOVE_THE_KERNELS))}"


def test_the_rule_sees_imports():
    """The graph is not empty by mistake: the fused node's module imports the spec, the torch gate network its backward."""
    graph = _graph()
    assert "spec" in graph["autograd"] and "gates_backward" in graph["gates_torch"]
    assert "op_checks" in graph["backends.triton.reductions"] and "checks" in graph["op_checks"]
