"""The package's layers only point down (docs/architecture.md, "Layers"): each rule below
names a package and what it must never import, read from the source with ``ast`` (imports
inside functions included), so a new import against the layers fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vpsd

PACKAGE = Path(vpsd.__file__).parent

DRIVERS_STORES_BROKER = (
    "vpsd.agent",
    "vpsd.runtime",
    "vpsd.hypervisor",
    "vpsd.backups",
    "vpsd.operations.publisher",
    "vpsd.operations.handlers",
    "vpsd.operations.backup_handlers",
    "dramatiq",
)
ABOVE_DRIVERS = (
    *("vpsd.db", "vpsd.services", "vpsd.operations", "vpsd.agent"),
    *("vpsd.api", "vpsd.web", "vpsd.runtime", "sqlalchemy"),
)
RULES: dict[str, tuple[str, ...]] = {
    # what serves requests knows services, never what acts on hosts
    "api": (*DRIVERS_STORES_BROKER, "vpsd.web"),
    "web": (*DRIVERS_STORES_BROKER, "vpsd.api"),
    "services": (*DRIVERS_STORES_BROKER, "vpsd.api", "vpsd.web"),
    # durable work sits below the rules
    "operations": ("vpsd.services", "vpsd.api", "vpsd.web", "vpsd.agent", "vpsd.runtime"),
    # a host's worker is handed its parts; it never serves requests
    "agent": ("vpsd.api", "vpsd.web", "vpsd.runtime"),
    # drivers and stores know files, processes and programs, never the database
    "hypervisor": (*ABOVE_DRIVERS, "vpsd.backups"),
    "backups": (*ABOVE_DRIVERS, "vpsd.hypervisor"),
    # the neutral core imports nothing of vpsd's but itself
    "core": tuple(
        f"vpsd.{path.name.removesuffix('.py')}"
        for path in PACKAGE.iterdir()
        if path.name not in ("core", "__init__.py", "__pycache__", "py.typed")
    ),
    "db": ("vpsd.services", "vpsd.operations", "vpsd.agent", "vpsd.api", "vpsd.web"),
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, absolute, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    """``file:line imports module`` for each import of ``layer`` against its rule."""
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, module in imports_of(path):
            if any(module == f or module.startswith(f.rstrip(".") + ".") for f in forbidden):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_imports_only_what_is_below_it(layer: str) -> None:
    assert (PACKAGE / layer).is_dir(), f"no package vpsd.{layer}"
    assert violations(layer, RULES[layer]) == []


def test_the_rules_see_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself: an import inside a function, and a ``from`` import, both count."""
    module = tmp_path / "m.py"
    module.write_text(
        "from vpsd.hypervisor.registry import make_driver\n"
        "def f():\n    import vpsd.agent.host_agent\n"
    )
    assert [name for _, name in imports_of(module)] == [
        "vpsd.hypervisor.registry.make_driver",
        "vpsd.agent.host_agent",
    ]
