"""The house's layout, checked from the code's own imports so that the README's picture is the architecture and not
a wish: packages stand on floors and import only from their own floor or below; no two modules import each other,
directly or round a circle; `runtime/` is a stack whose files import only files beneath them; no module is over
450 lines; every command is a module of `peftstd/commands/`. TYPE_CHECKING imports do not count; imports inside
functions do (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "peftstd"

FLOORS = [
    {"__init__", "errors", "basics"},                 # ground: atomic writes, hashing, machine facts, the config-section base
    {"data", "models", "tasks"},                      # data sources, model registry, task heads/losses/metrics
    {"methods", "regularization"},                    # fine-tuning methods and regularizers, each with its section
    {"config", "pretraining"},                        # the schema assembled from the sections above
    {"training"},                                     # the training loop's parts: precision, sharding, FLOPs, schedules
    {"run"},                                          # the run directory the recipes write: manifest, checkpoints, report
    {"runtime"},                                      # reading run/export folders, loading and running artifacts
    {"evaluation", "export", "bench", "serve", "sweep"},  # what the commands do
    {"commands", "recipes"},                          # one module per `peftstd` subcommand; the training scripts
    {"cli", "__main__"},                              # the `peftstd` entry point: parses and dispatches
]
FLOOR = {package: level for level, packages in enumerate(FLOORS) for package in packages}

# runtime/, bottom to top: a file imports only files on a lower step
RUNTIME_STACK = [
    {"folders", "taskdata", "sampling"},              # typed records of run/export folders (monitor.json too); plain data
    {"inference", "load"},                            # ONNX sessions and shared steps; loading a run's PyTorch model
    {"engines", "decoders", "gguf_model"},            # engines of encoder artifacts; decoders for token-by-token generation; llama.cpp
    {"backends", "predictors"},                       # predictors over an engine, the benchmark's backends
    {"choice"},                                       # which artifact and runtime run fastest here (times predictors)
    {"language_model", "classifier_adapters", "timing"},  # a causal LM to serve; classifiers sharing a base; timing
    {"drift"},                                        # drift of a predictor's inputs and outputs (uses predictors)
]
MAX_LINES = 450


def modules(root: Path) -> dict[str, Path]:
    """Dotted module names of peftstd/ and recipes/ under `root`."""
    found = {}
    for path in [*sorted((root / "peftstd").rglob("*.py")), *sorted((root / "recipes").glob("*.py"))]:
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The peftstd modules `path` imports (a name imported from a package counts as its module when it is one)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "peftstd":
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "peftstd"}
    return {m for m in found if m in known and m != name}


def graph(root: Path = REPO) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(path, name, known) for name, path in known.items()}


def package_of(module: str) -> str:
    """The floor's key: peftstd.<package>, `recipes` for the recipes."""
    parts = module.split(".")
    return "recipes" if parts[0] == "recipes" else (parts + ["__init__"])[1]


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports of a package on a higher floor, and runtime files importing a runtime file on a higher step."""
    step = {f"peftstd.runtime.{name}": level for level, names in enumerate(RUNTIME_STACK) for name in names}
    found = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            own, other = package_of(source), package_of(target)
            if FLOOR[other] > FLOOR[own]:
                found.append(f"{source} ({own}, floor {FLOOR[own]}) imports {target} ({other}, floor {FLOOR[other]})")
            elif source in step and target in step and step[target] > step[source]:
                found.append(f"{source} (runtime step {step[source]}) imports {target} (runtime step {step[target]})")
    return found


def test_every_package_and_runtime_file_has_a_place():
    packages = {package_of(m) for m in modules(REPO)}
    assert packages <= set(FLOOR), f"give these packages a floor in tests/test_layout.py and the README: {packages - set(FLOOR)}"
    runtime = {p.stem for p in (PACKAGE / "runtime").glob("*.py")} - {"__init__"}
    placed = set().union(*RUNTIME_STACK)
    assert runtime <= placed, f"give these runtime files a step in RUNTIME_STACK and the README: {runtime - placed}"


def test_no_import_circle():
    found = circles(graph())
    assert not found, "modules that import each other (round a circle): " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_imports_one_above_it():
    found = upward(graph())
    assert not found, "\n".join(found)


def test_the_checks_catch_a_planted_circle_and_upward_import(tmp_path):
    """The two checks above, on a copy of the code with one import planted each: they would fail."""
    shutil.copytree(PACKAGE, tmp_path / "peftstd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "recipes", tmp_path / "recipes", ignore=shutil.ignore_patterns("__pycache__", "configs", "accelerate", "sweeps"))
    folders = tmp_path / "peftstd" / "runtime" / "folders.py"
    folders.write_text(folders.read_text() + "\n\ndef planted():\n    from peftstd.runtime.drift import compare\n")
    errors = tmp_path / "peftstd" / "tasks" / "__init__.py"
    errors.write_text(errors.read_text() + "\n\ndef planted():\n    from peftstd.serve.app import build_app\n")
    edges = graph(tmp_path)
    assert any("peftstd.runtime.folders" in c and "peftstd.runtime.drift" in c for c in circles(edges))
    found = upward(edges)
    assert "peftstd.tasks (tasks, floor 1) imports peftstd.serve.app (serve, floor 7)" in found, found
    assert any("peftstd.runtime.folders (runtime step 0) imports peftstd.runtime.drift" in line for line in found), found


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(REPO)): n for p in modules(REPO).values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def test_every_command_is_a_module_and_cli_only_dispatches():
    from peftstd.cli import build_parser
    from peftstd.commands import COMMANDS, command

    parser = build_parser()
    listed = set(next(a for a in parser._actions if a.dest == "command").choices)
    files = {p.stem for p in (PACKAGE / "commands").glob("*.py")} - {"__init__", "arguments", "keys"}
    assert listed == set(COMMANDS) == files
    for name in COMMANDS:
        module = command(name)
        assert callable(module.run) and callable(module.add_arguments) and module.HELP, name
    cli = ast.parse((PACKAGE / "cli.py").read_text())
    assert {n.name for n in cli.body if isinstance(n, ast.FunctionDef)} == {"build_parser", "main"}


def test_json_records_are_read_through_the_typed_reader():
    """run and export folders' JSON files are read in runtime/folders.py, not parsed raw by the commands."""
    raw = [str(p.relative_to(REPO)) for name, p in modules(REPO).items()
           if package_of(name) in ("evaluation", "export", "bench", "serve", "commands", "cli")
           and any(key in p.read_text() for key in ('"export.json").read_text', '"manifest.json").read_text', '"labels.json").read_text'))]
    assert not raw, raw
