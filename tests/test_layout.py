"""The package's floors: a module imports only from its own floor or below (TYPE_CHECKING imports aside), so the
layout in the README is the architecture and not a wish."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "peftstd"

FLOORS = [
    {"__init__", "errors", "basics"},                 # ground: atomic writes, hashing, the config-section base
    {"data", "models", "tasks"},                      # data sources, model registry, task heads/losses/metrics
    {"methods", "regularization"},                    # fine-tuning methods and regularizers, each with its section
    {"config", "pretraining"},                        # the schema assembled from the sections above
    {"training", "run"},                              # the training loop's parts and the run directory it writes
    {"runtime"},                                      # reading run/export folders, loading and running artifacts
    {"evaluation", "export", "bench", "serve", "sweep"},  # what the commands do
    {"cli", "__main__"},                              # the commands
]
FLOOR = {package: level for level, packages in enumerate(FLOORS) for package in packages}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found |= {(name.split(".") + ["__init__"])[1] for name in names if name.split(".")[0] == "peftstd"}
    return found


def package_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("").parts
    return relative[0]


def test_every_package_has_a_floor():
    packages = {package_of(p) for p in PACKAGE.rglob("*.py")}
    assert packages <= set(FLOOR), f"give these packages a floor in tests/test_layout.py and the README: {packages - set(FLOOR)}"


def test_no_module_imports_one_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = package_of(path)
        for target in imported_packages(path):
            if FLOOR[target] > FLOOR[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} ({own}, floor {FLOOR[own]}) imports {target} (floor {FLOOR[target]})")
    assert not upward, "\n".join(upward)


def test_json_records_are_read_through_the_typed_reader():
    """run and export folders' JSON files are read in runtime/folders.py, not parsed raw by the commands."""
    raw = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
           if package_of(p) in ("evaluation", "export", "bench", "serve", "cli")
           and any(name in p.read_text() for name in ('"export.json").read_text', '"manifest.json").read_text', '"labels.json").read_text'))]
    assert not raw, raw
