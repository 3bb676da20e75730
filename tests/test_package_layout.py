"""Package layout rules: no import cycle between the package's modules (lazy imports included)."""
from __future__ import annotations

import ast
import os

import keras_frcnn_cryo

PACKAGE_DIR = os.path.dirname(keras_frcnn_cryo.__file__)


def _modules() -> dict[str, str]:
    """Dotted module name inside the package -> its file; a subpackage is named by its folder
    (its ``__init__.py``), its modules as ``folder.module``."""
    out = {}
    for root, _, files in os.walk(PACKAGE_DIR):
        rel = os.path.relpath(root, PACKAGE_DIR)
        prefix = "" if rel == "." else rel.replace(os.sep, ".")
        if prefix and "__init__.py" not in files:
            continue
        for name in files:
            if not name.endswith(".py") or name == "__main__.py" or (name == "__init__.py" and not prefix):
                continue
            stem = name[:-3]
            out[prefix if stem == "__init__" else ".".join(filter(None, [prefix, stem]))] = os.path.join(root, name)
    return out


def import_graph(module_level_only: bool = False) -> dict[str, set[str]]:
    """module -> the package modules it imports (relative imports anywhere in the file, or only
    those at module level: what importing the module loads). Names as :func:`_modules` gives them."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        is_package = path.endswith("__init__.py")
        here = module.split(".") if is_package else module.split(".")[:-1]   # the importing package
        deps = set()
        for node in (tree.body if module_level_only else ast.walk(tree)):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                base = here[:len(here) - (node.level - 1)]
                targets = [".".join(base + node.module.split("."))] if node.module else [
                    ".".join(base + [alias.name]) for alias in node.names]
                for target in targets:
                    while target and target not in modules:        # a name inside a module: the module
                        target = target.rpartition(".")[0]
                    if target:
                        deps.add(target)
        graph[module] = deps - {module}
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
    assert {"boxes", "anchors", "roi_helpers", "data_generators", "synthetic.phantom", "tomo_io.mrc"} <= set(graph)
    assert {"synthetic.params", "synthetic.phantom"} <= graph["synthetic"] and "tomo_io" in graph["synthetic.dataset"]
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
    assert not {"train", "trainer", "losses", "optimizer", "data_generators"} & reachable(graph, "evaluation")
    assert {"train", "trainer", "losses"} <= reachable(graph, "demo")      # the check can see such a path


# data, file-format and arithmetic modules: usable from a notebook without the command-line layer
LIBRARY_MODULES = ("annotations", "anchors", "atomic", "boxes", "masks_to_boxes", "metrics", "pascal_voc_parser",
                   "preprocessing", "simple_parser", "splits", "synthetic", "targets_tf", "tomo_io", "tracking", "writers",
                   "distribute", "textio", "reports", "detections_csv", "hardware", "pictures", "model")


def test_io_and_arithmetic_modules_do_not_load_the_command_line_layer():
    graph = import_graph(module_level_only=True)
    for module in LIBRARY_MODULES:
        loaded = reachable(graph, module)
        assert not {"cli", "train", "trainer"} & loaded, (module, sorted(loaded))
    assert "cli" in reachable(graph, "train")                    # the check can see such a path


def test_every_command_module_has_one_cli_convention():
    import importlib
    for name in ("train", "predict", "evaluation", "demo", "tomo_io", "masks_to_boxes", "synthetic"):
        module = importlib.import_module(f"keras_frcnn_cryo.{name}")
        for function in ("build_parser", "main", "console_main"):
            assert callable(getattr(module, function, None)), (name, function)


def test_scoring_a_detections_csv_loads_no_tensorflow():
    # measure_map.py --detections only reads files: importing the evaluation code must not start
    # TensorFlow (seconds of start-up); load_detector imports the model when a model is evaluated
    import subprocess
    import sys
    probe = ("import sys, keras_frcnn_cryo.evaluation, keras_frcnn_cryo.predict; "
             "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(PACKAGE_DIR))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    assert "model" in reachable(import_graph(module_level_only=True), "train")   # where it does load
