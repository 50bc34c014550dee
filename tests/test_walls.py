"""The walls of the design: what each part may import (design.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The daemon and the CLI wire everything together; the rest of controller/ is the pure core.
WIRING = {"controller/cli.py", "controller/daemon.py"}
RULES = {
    "controller": {"vllm_autoscaler.metrics", "vllm_autoscaler.actuators",
                   "vllm_autoscaler.simulations", "aiohttp", "kubernetes", "modal"},
    "simulations": {"vllm_autoscaler.metrics", "vllm_autoscaler.actuators"},
    "metrics": {"vllm_autoscaler.simulations", "vllm_autoscaler.actuators"},
    "actuators": {"vllm_autoscaler.simulations", "vllm_autoscaler.metrics"},
}  # fmt: skip
PACKAGE_OF = {folder: f"vllm_autoscaler.{folder}" for folder in RULES}


def imported_modules(path: Path, package: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # resolve relative imports against the file's package
                parts = (package + "." + ".".join(path.relative_to(ROOT).parts[1:-1])).strip(".").split(".")
                base = parts[: len(parts) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module or "")
    return names


def sources():
    for folder in RULES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel not in WIRING:
                yield pytest.param(folder, path, id=rel)


@pytest.mark.parametrize("folder, path", list(sources()))
def test_module_respects_the_walls(folder, path):
    forbidden = RULES[folder]
    bad = {
        name for name in imported_modules(path, PACKAGE_OF[folder])
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    }  # fmt: skip
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)} across a wall"
