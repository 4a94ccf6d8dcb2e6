"""The layers of docs/DESIGN: each module imports only the layers below it.

Read from the source with ``ast`` (every import, those inside functions too;
``if TYPE_CHECKING:`` blocks are left out, as they never run). Importing
``fivetuple.reliable`` at run time also runs ``fivetuple/__init__``, which
loads the engine, so a check of ``sys.modules`` could not tell; the source can.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import ROOT

PACKAGE = ROOT / "src" / "fivetuple"

#: Layers, lowest first; a module may import its own layer and the ones before it.
#: A module not listed fails the test, so a new module has to be placed.
LAYERS: list[tuple[str, set[str]]] = [
    ("errors", {"errors"}),
    (
        "cores: bytes, events and time passed in",
        {"codecs", "reliable", "netsim", "_address", "_stats", "_log"},
    ),
    (
        "reactor: descriptors, deadlines, callbacks",
        {
            "_poller",
            "_poller_epoll",
            "_poller_poll",
            "_poller_select",
            "_backends",
            "_timers",
            "_loop",
            "_limits",
            "_kernel",
        },
    ),
    (
        "transports: one socket each",
        {
            "_protocol",
            "_bind",
            "_ledger",
            "_transport",
            "_listener",
            "_datagram",
            "_connector",
            "_messages",
            "_proxied",
            "_tls",
            "_tls_context",
        },
    ),
    (
        "servers and shells",
        {"_server", "_supervisor", "_reliable_shell", "testing", "_impair", "models"},
    ),
    (
        "apps, observability, load, command line",
        {
            "apps",
            "admin",
            "loadgen",
            "lab",
            "proxy",
            "client",
            "cli",
            "link",
            "__init__",
            "__main__",
        },
    ),
]

#: Standard-library modules that mean I/O or a clock: a sans-IO core imports none.
IO_MODULES = {"socket", "select", "selectors", "threading", "asyncio", "time", "signal"}
SANS_IO = {"codecs", "reliable", "netsim", "errors"}


def unit(path: Path) -> str:
    """The layer unit of a module: its subpackage, or the top-level module's name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every import that runs in the module at ``path``
    (whose text is ``source`` if given)."""
    tree = ast.parse(path.read_text() if source is None else source)
    package = ".".join(("fivetuple", *path.relative_to(PACKAGE).parent.parts))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module == "fivetuple" or (node.level and not node.module):
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def layer_of(name: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        if name in members:
            return index
    raise AssertionError(f"{name} is in no layer of LAYERS: place it")


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_its_layer_and_the_ones_below(path: Path) -> None:
    mine = layer_of(unit(path))
    wrong = []
    for line, module in imports(path):
        parts = module.split(".")
        if parts[0] != "fivetuple" or len(parts) < 2:
            continue
        theirs = layer_of(parts[1])
        if theirs > mine:
            wrong.append(f"line {line}: {module} ({LAYERS[theirs][0]})")
    assert not wrong, f"{path.name} ({LAYERS[mine][0]}) imports from above: {wrong}"


@pytest.mark.parametrize(
    "path",
    [p for p in MODULES if unit(p) in SANS_IO],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_the_sans_io_cores_touch_no_socket_clock_or_thread(path: Path) -> None:
    """fivetuple.reliable, the codecs and netsim import nothing of the engine and no I/O."""
    wrong = []
    for line, module in imports(path):
        parts = module.split(".")
        if parts[0] in IO_MODULES or (
            parts[0] == "fivetuple" and len(parts) > 1 and parts[1] not in SANS_IO
        ):
            wrong.append(f"line {line}: {module}")
    assert not wrong, f"{path.name} is sans-IO but imports {wrong}"


def test_the_check_resolves_relative_imports_and_skips_type_checking() -> None:
    """The checker itself, on a module placed (not written) in fivetuple/reliable/."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from ..errors import RemoteProtocolError\n"
        "from . import _packet\n"
        "if TYPE_CHECKING:\n    from .._loop import Loop\n"
        "def f():\n    import socket\n"
    )
    found = [module for _, module in imports(PACKAGE / "reliable" / "_new.py", source)]
    assert found == ["typing", "fivetuple.errors", "fivetuple.reliable._packet", "socket"]
