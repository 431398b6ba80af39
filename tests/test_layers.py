"""The package's layers import downwards only. Every import is read from the source with `ast`,
function-level (lazy) ones and TYPE_CHECKING ones included, so a cycle cannot hide behind a
late import.

Layers, lowest first (a module may import its own layer and the ones below):

0. foundations: types, recipe, resources, atomic, checksums, progress (no knowledge of models or simulators)
1. adapters, data, models, hub: benchmark formats, datasets, networks, the hub cache. The issue's
   sketch put adapters above data; here data reads demonstrations through an adapter, and an
   adapter only converts arrays, so they share a layer.
2. policies: the registry of recipes and builders
3. agent, residual, loading, sim: agents (VLAAgent, the residual agent, load_agent's registry of
   loaders) and the simulators, which know nothing of each other
4. eval
5. train
6. demo
7. cli, the package root (a lazy facade) and adapters.robotwin_policy (RoboTwin's entry point,
   which RoboTwin imports as a script)

`from vla_agents import __version__` is a foundation import: the root defines it before anything else.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vla_agents"
LAYERS = (
    ("types", "recipe", "resources", "atomic", "checksums", "progress"),
    ("adapters", "data", "models", "hub"),
    ("policies",),
    ("agent", "residual", "loading", "sim"),
    ("eval",),
    ("train",),
    ("demo",),
    ("cli", "", "adapters.robotwin_policy"),
)


def layer(module: str) -> int:
    """The layer of `vla_agents.<module>`, by its longest listed prefix ("" is the package root)."""
    name = module.removeprefix("vla_agents").removeprefix(".")
    matches = [(len(prefix), i) for i, names in enumerate(LAYERS) for prefix in names
               if name == prefix or (prefix and name.startswith(f"{prefix}."))]
    if not matches:
        raise AssertionError(f"vla_agents.{name} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return max(matches)[1]


def module_name(file: Path, package: Path = PACKAGE) -> str:
    parts = file.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(file: Path) -> list[tuple[int, str]]:
    """(line, module) of every vla_agents import in `file`, wherever it sits."""
    found = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("vla_agents"):
            if node.module == "vla_agents":  # names from the root: __version__, or the module each re-exports
                found += [(node.lineno, "vla_agents.types" if a.name == "__version__" else "vla_agents") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("vla_agents")]
    return found


def upward_imports(package: Path = PACKAGE) -> list[str]:
    bad = []
    for file in sorted(package.rglob("*.py")):
        here = module_name(file, package)
        for line, target in imports(file):
            if layer(target) > layer(here):
                bad.append(f"{file.relative_to(package.parent)}:{line} {here} (layer {layer(here)}) imports "
                           f"{target} (layer {layer(target)})")
    return bad


def test_no_module_imports_a_higher_layer() -> None:
    assert upward_imports() == []


def test_every_module_has_a_layer() -> None:
    for file in PACKAGE.rglob("*.py"):
        layer(module_name(file))


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    """A function-level import of a higher layer, as load_agent's residual loader once was, is caught."""
    (tmp_path / "vla_agents" / "models").mkdir(parents=True)
    (tmp_path / "vla_agents" / "models" / "x.py").write_text(
        "def f():\n    from vla_agents.train.rl import train_rl\n    return train_rl\n")
    assert upward_imports(tmp_path / "vla_agents") == [
        "vla_agents/models/x.py:2 vla_agents.models.x (layer 1) imports vla_agents.train.rl (layer 5)"]
