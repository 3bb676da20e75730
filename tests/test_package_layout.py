"""Package layout rules: no import cycle between the package's modules (lazy imports included)."""
from __future__ import annotations

import ast
import os

import keras_frcnn_cryo

PACKAGE_DIR = os.path.dirname(keras_frcnn_cryo.__file__)


def import_graph(module_level_only: bool = False) -> dict[str, set[str]]:
    """module -> the package modules it imports (relative imports anywhere in the file, or only
    those at module level: what importing the module loads)."""
    modules = {name[:-3] for name in os.listdir(PACKAGE_DIR) if name.endswith(".py")}
    graph = {}
    for module in modules:
        with open(os.path.join(PACKAGE_DIR, f"{module}.py"), encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        deps = set()
        for node in (tree.body if module_level_only else ast.walk(tree)):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        graph[module] = deps & modules - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}          # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert {"boxes", "anchors", "roi_helpers", "data_generators"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_evaluation_does_not_load_the_trainer():
    # measure_map.py needs the detector, not the training loop, its losses or its optimiser
    graph = import_graph()
    assert not {"train", "losses", "data_generators"} & reachable(graph, "evaluation")
    assert {"train", "losses"} <= reachable(graph, "demo")      # the check can see such a path


# data, file-format and arithmetic modules: usable from a notebook without the command-line layer
LIBRARY_MODULES = ("annotations", "anchors", "atomic", "boxes", "masks_to_boxes", "metrics", "pascal_voc_parser",
                   "preprocessing", "simple_parser", "splits", "synthetic", "targets_tf", "tomo_io", "tracking", "writers",
                   "distribute")


def test_io_and_arithmetic_modules_do_not_load_the_command_line_layer():
    graph = import_graph(module_level_only=True)
    for module in LIBRARY_MODULES:
        loaded = reachable(graph, module)
        assert "cli" not in loaded and "train" not in loaded, (module, sorted(loaded))
    assert "cli" in reachable(graph, "predict")                  # the check can see such a path


def test_every_command_module_has_one_cli_convention():
    import importlib
    for name in ("train", "predict", "evaluation", "demo", "tomo_io", "masks_to_boxes", "synthetic"):
        module = importlib.import_module(f"keras_frcnn_cryo.{name}")
        for function in ("build_parser", "main", "console_main"):
            assert callable(getattr(module, function, None)), (name, function)
