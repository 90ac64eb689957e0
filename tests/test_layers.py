"""The package layout is the architecture: a layer imports only the layers below it.

    cli  ->  service  ->  engine  ->  local, remote  ->  core
    (and every layer may use the foundation: errors, config, logs;
    config itself may use the pure core, for message templates)

core is pure (no I/O libraries, no quiltsync module outside core and errors);
only remote/ imports quilt3, boto3, botocore and moto; only local/watcher.py
imports watchdog. docs/design.md draws the same picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "quiltsync"

FOUNDATION = {"errors", "config", "logs"}
ALLOWED: dict[str, set[str]] = {
    "core": {"core", "errors"},
    "local": {"core", "local"} | FOUNDATION,
    "remote": {"core", "remote"} | FOUNDATION,
    "engine": {"core", "local", "remote", "engine"} | FOUNDATION,
    "service": {"core", "local", "remote", "engine", "service"} | FOUNDATION,
    "cli": {"core", "local", "remote", "engine", "service", "cli"} | FOUNDATION,
    "errors": set(),
    "logs": set(),
    "config": {"errors", "core"},
}
BOUNDARY_ONLY = {"quilt3": "remote", "boto3": "remote", "botocore": "remote", "moto": "remote",
                 "s3transfer": "remote"}
CORE_FORBIDDEN = {"sqlite3", "socket", "subprocess", "threading", "shutil", "tempfile", "pathspec",
                  "structlog", "pydantic", "watchdog"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "quiltsync":
                out += [f"quiltsync.{a.name}" for a in node.names]
            else:
                out.append(node.module)
    return out


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        layer = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        out.append((layer, path))
    return out


def test_each_layer_imports_only_the_layers_below_it() -> None:
    """No module reaches up or sideways (e.g. local/ never imports engine/ or remote/)."""
    bad = []
    for layer, path in _modules():
        if layer not in ALLOWED:
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "quiltsync" or len(parts) < 2 or parts[1].startswith("__"):
                continue
            if parts[1] not in ALLOWED[layer] and parts[1] != layer:
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not bad, "\n".join(bad)


def test_only_the_registry_boundary_imports_quilt3_and_boto() -> None:
    """quilt3, boto3, botocore and moto appear in remote/ only; watchdog in local/watcher.py only."""
    bad = []
    for layer, path in _modules():
        for name in _imports(path):
            top = name.split(".")[0]
            if top in BOUNDARY_ONLY and layer != BOUNDARY_ONLY[top]:
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
            if top == "watchdog" and path.relative_to(PACKAGE) != Path("local/watcher.py"):
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_core_does_no_io() -> None:
    """core/ imports no I/O, threading or third-party library: its decisions are pure."""
    bad = [f"{p.relative_to(PACKAGE)} imports {n}" for layer, p in _modules() if layer == "core"
           for n in _imports(p) if n.split(".")[0] in CORE_FORBIDDEN]
    assert not bad, "\n".join(bad)


def test_every_module_belongs_to_a_known_layer() -> None:
    """A new top-level module must be placed in a layer (or added to the foundation here)."""
    known = set(ALLOWED) | {"__init__", "__main__"}
    assert {layer for layer, _ in _modules()} <= known
