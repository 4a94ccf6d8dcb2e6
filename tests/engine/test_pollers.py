"""The poller backends used directly, on socketpairs; and the package's imports form a DAG."""

from __future__ import annotations

import ast
import itertools
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fivetuple
from fivetuple._backends import available_backends, make_poller
from fivetuple._poller import ERROR, READ, WRITE, Poller
from fivetuple.errors import SetupError
from helpers import BACKENDS, every_backend

#: Backends that report errors and hang-ups with no interest registered.
ERROR_REPORTING = [name for name in ("epoll", "poll") if name in BACKENDS]


@pytest.fixture
def poller(backend: str) -> Iterator[Poller]:
    """A poller of the test's backend, closed after the test."""
    poller = make_poller(backend)
    yield poller
    poller.close()


def _events(poller: Poller, timeout: float = 1.0) -> dict[int, int]:
    """One poll as {fd: mask}; each fd must appear at most once."""
    ready = poller.poll(timeout)
    fds = [fd for fd, _ in ready]
    assert len(fds) == len(set(fds)), ready
    return dict(ready)


def test_available_backends_best_first() -> None:
    names = available_backends()
    assert names[-1] == "select"
    assert len(names) == len(set(names))
    order = ["epoll", "poll", "select"]
    assert names == sorted(names, key=order.index)
    assert names == BACKENDS


def test_make_poller_default_is_best_backend() -> None:
    poller = make_poller()
    try:
        assert poller.name == available_backends()[0]
    finally:
        poller.close()


@every_backend
def test_make_poller_by_name(backend: str, poller: Poller) -> None:
    assert poller.name == backend


def test_unknown_backend_is_a_one_line_setup_error() -> None:
    with pytest.raises(SetupError) as info:
        make_poller("nope")
    message = str(info.value)
    assert "\n" not in message
    assert "'nope'" in message
    for name in available_backends():
        assert name in message


@every_backend
def test_read_readiness_when_data_arrives(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    poller.register(a.fileno(), READ)
    assert poller.poll(0) == []
    b.send(b"x")
    ready = _events(poller)
    assert set(ready) == {a.fileno()}
    assert ready[a.fileno()] & READ
    assert not ready[a.fileno()] & WRITE
    # Level-triggered: still ready until the byte is read.
    assert _events(poller, 0).get(a.fileno(), 0) & READ
    assert a.recv(10) == b"x"
    assert poller.poll(0) == []


@every_backend
def test_write_readiness(poller: Poller, pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    poller.register(a.fileno(), WRITE)
    ready = _events(poller)
    assert ready[a.fileno()] & WRITE
    assert not ready[a.fileno()] & READ


@every_backend
def test_write_readiness_stops_while_buffer_is_full(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    poller.register(a.fileno(), WRITE)
    chunk = b"\0" * 65536
    with pytest.raises(BlockingIOError):
        while True:
            a.send(chunk)
    assert poller.poll(0) == []
    while True:  # drain the peer so a has room again
        try:
            b.recv(1 << 20)
        except BlockingIOError:
            break
    assert _events(poller)[a.fileno()] & WRITE


@every_backend
def test_modify_changes_interest(poller: Poller, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    fd = a.fileno()
    b.send(b"x")  # a is both readable and writable from here on
    poller.register(fd, READ)
    assert _events(poller)[fd] & (READ | WRITE) == READ
    poller.modify(fd, WRITE)
    assert _events(poller)[fd] & (READ | WRITE) == WRITE
    poller.modify(fd, READ | WRITE)
    assert _events(poller)[fd] & (READ | WRITE) == READ | WRITE
    poller.modify(fd, 0)
    assert poller.poll(0) == []


@every_backend
def test_unregister_stops_reports(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    b.send(b"x")
    poller.register(a.fileno(), READ | WRITE)
    assert a.fileno() in _events(poller)
    poller.unregister(a.fileno())
    assert poller.poll(0) == []
    # Registered again after unregister: allowed, and reported again.
    poller.register(a.fileno(), READ)
    assert _events(poller)[a.fileno()] & READ


@every_backend
def test_registering_twice_raises(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    poller.register(a.fileno(), READ)
    with pytest.raises(FileExistsError):
        poller.register(a.fileno(), WRITE)
    # The failed second register did not change the first one's interest.
    b.send(b"x")
    assert _events(poller)[a.fileno()] & (READ | WRITE) == READ


@every_backend
def test_modify_unregistered_raises(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    with pytest.raises(FileNotFoundError):
        poller.modify(a.fileno(), READ)


@every_backend
def test_several_fds_reported_together(backend: str) -> None:
    pairs = [socket.socketpair() for _ in range(5)]
    poller = make_poller(backend)
    try:
        for a, _ in pairs:
            poller.register(a.fileno(), READ)
        for _, b in pairs[1::2]:
            b.send(b"x")
        ready = _events(poller)
        assert set(ready) == {a.fileno() for a, _ in pairs[1::2]}
    finally:
        poller.close()
        for a, b in pairs:
            a.close()
            b.close()


@every_backend
def test_poll_timeout_waits_when_nothing_is_ready(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    poller.register(a.fileno(), READ)
    start = time.monotonic()
    assert poller.poll(0.1) == []
    elapsed = time.monotonic() - start
    assert 0.095 <= elapsed < 1.0
    # Sub-millisecond timeouts are rounded up, never down to a busy zero.
    start = time.monotonic()
    assert poller.poll(0.0004) == []
    assert time.monotonic() - start >= 0.0003


@pytest.mark.parametrize("backend", ERROR_REPORTING)
def test_hangup_reported_with_no_interest(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    poller.register(a.fileno(), 0)
    assert poller.poll(0) == []
    b.close()
    ready = _events(poller)
    assert set(ready) == {a.fileno()}
    assert ready[a.fileno()] & ERROR
    assert not ready[a.fileno()] & (READ | WRITE)


@pytest.mark.parametrize("backend", ERROR_REPORTING)
def test_error_reported_with_no_interest(backend: str) -> None:
    # A TCP connection reset by the peer: POLLERR (and HUP) with no interest set.
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=5)
    server, _ = listener.accept()
    poller = make_poller(backend)
    try:
        poller.register(client.fileno(), 0)
        assert poller.poll(0) == []
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()  # linger 0: sends RST
        ready = _events(poller)
        assert ready[client.fileno()] & ERROR
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
    finally:
        poller.close()
        client.close()
        listener.close()


def test_select_surfaces_hangup_as_readable(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    poller = make_poller("select")
    try:
        poller.register(a.fileno(), READ)
        assert poller.poll(0) == []
        b.close()
        assert _events(poller)[a.fileno()] & READ
        assert a.recv(10) == b""
    finally:
        poller.close()


def test_select_fd_ceiling_is_fd_setsize() -> None:
    poller = make_poller("select")
    try:
        assert poller.fd_ceiling == 1024
    finally:
        poller.close()


@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "select"])
def test_other_backends_have_no_fd_ceiling(poller: Poller) -> None:
    assert poller.fd_ceiling is None


@pytest.mark.parametrize("high_fd", [1024, 1500])
def test_select_refuses_fd_at_or_above_ceiling(
    high_fd: int, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    fd = os.dup2(a.fileno(), high_fd)
    poller = make_poller("select")
    try:
        assert fd == high_fd
        with pytest.raises(ValueError, match=str(high_fd)):
            poller.register(fd, READ)
        # The refused fd was not half-registered.
        with pytest.raises(FileNotFoundError):
            poller.modify(fd, READ)
        assert poller.poll(0) == []
    finally:
        poller.close()
        os.close(fd)


def test_select_accepts_fd_just_below_ceiling(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    fd = os.dup2(a.fileno(), 1023)
    poller = make_poller("select")
    try:
        poller.register(fd, READ)
        b.send(b"x")
        assert _events(poller)[fd] & READ
    finally:
        poller.close()
        os.close(fd)


@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "select"])
def test_other_backends_watch_high_fds(
    backend: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    fd = os.dup2(a.fileno(), 1500)
    poller = make_poller(backend)
    try:
        poller.register(fd, READ)
        b.send(b"x")
        assert _events(poller)[fd] & READ
    finally:
        poller.close()
        os.close(fd)


def test_epoll_close_releases_its_fd() -> None:
    if "epoll" not in BACKENDS:
        pytest.skip("no epoll here")
    before = set(os.listdir("/proc/self/fd"))
    poller = make_poller("epoll")
    during = set(os.listdir("/proc/self/fd"))
    assert len(during - before) == 1
    poller.close()
    assert set(os.listdir("/proc/self/fd")) == before


# -- the imports form a DAG (issue 13) ------------------------------------------

PACKAGE_DIR = Path(fivetuple.__file__).parent


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``: a block that never runs."""
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run: ast.walk, less the bodies of ``if TYPE_CHECKING:``."""
    yield node
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children: list[ast.AST] = list(node.orelse)
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _runtime_nodes(child)


def _modules(package_dir: Path) -> dict[str, Path]:
    """Every module of the package under ``package_dir``, by dotted name."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _import_graph(package_dir: Path) -> dict[str, dict[str, int]]:
    """{module: {module of the package it imports: line}}, imports in functions included.

    ``from .pkg import name`` is an edge to ``pkg.name`` when that is a module,
    else to ``pkg``. Importing ``a.b`` runs ``a/__init__`` too, but that edge is
    left out: every module would otherwise be in a cycle with a package
    ``__init__`` that re-exports it.
    """
    modules = _modules(package_dir)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph[module] = {}
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:  # 1: this package, 2: its parent, ...
                    base = package.rsplit(".", node.level - 1)[0]
                    source = f"{base}.{source}" if source else base
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                    for alias in node.names
                ]
            else:
                continue
            for target in targets:
                if target in modules and target != module:
                    edges.setdefault(target, node.lineno)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module."""
    reach = {}
    for start in graph:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for target in graph[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        reach[start] = seen
    return {frozenset({a, *(b for b in reach[a] if a in reach[b])}) for a in graph if a in reach[a]}


def _describe(cycles: set[frozenset[str]], graph: dict[str, dict[str, int]]) -> str:
    """Each cycle's imports as ``module:line -> module``, one a line."""
    return "\n".join(
        f"{a}:{line} -> {b}"
        for cycle in sorted(cycles, key=sorted)
        for a in sorted(cycle)
        for b, line in sorted(graph[a].items())
        if b in cycle
    )


def test_cycle_check_sees_imports_in_functions_and_skips_type_checking(
    tmp_path: Path,
) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import A\n")
    (package / "a.py").write_text("from . import b\nA = 1\n")
    (package / "b.py").write_text("def f():\n    from .a import A\n")
    (package / "c.py").write_text(
        "import typing\nif typing.TYPE_CHECKING:\n    from .d import D\nelse:\n    import pkg.e\n"
    )
    (package / "d.py").write_text("from .c import C\n")
    (package / "e.py").write_text("from .sub.f import F\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "f.py").write_text("from ..c import C\n")
    graph = _import_graph(package)
    assert graph["pkg.b"] == {"pkg.a": 2}
    assert graph["pkg.c"] == {"pkg.e": 5}
    assert _cycles(graph) == {
        frozenset({"pkg.a", "pkg.b"}),
        frozenset({"pkg.c", "pkg.e", "pkg.sub.f"}),
    }


def test_package_imports_form_a_dag() -> None:
    graph = _import_graph(PACKAGE_DIR)
    assert "fivetuple._poller" in graph
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + _describe(cycles, graph)


#: Run in a fresh interpreter: import the modules named on the command line in
#: that order into a bare ``fivetuple`` package (its ``__init__``, which would
#: import them in its own order first, is not run), then make every backend.
#: Prints the package's modules that the imports loaded.
_IMPORT_IN_ORDER = """
import importlib, sys, types
package = types.ModuleType("fivetuple")
package.__path__ = [sys.argv[1]]
sys.modules["fivetuple"] = package
for name in sys.argv[2:]:
    importlib.import_module(name)
print(" ".join(sorted(name for name in sys.modules if name.startswith("fivetuple."))))
from fivetuple._backends import available_backends, make_poller
for backend in available_backends():
    make_poller(backend).close()
"""


def test_poller_modules_import_in_every_order() -> None:
    names = sorted(f"fivetuple.{path.stem}" for path in PACKAGE_DIR.glob("_poller*.py"))
    assert len(names) >= 4
    # Every order of the interface and the backends, each followed by the module
    # that chooses (it imports them all, so later imports would be no-ops), and
    # that module first and alone.
    orders = [(*order, "fivetuple._backends") for order in itertools.permutations(names)]
    orders.append(("fivetuple._backends",))
    # The reactor's bottom layer: they import nothing else of the package.
    expected = {*names, "fivetuple._backends", "fivetuple.errors"}
    for order in orders:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _IMPORT_IN_ORDER, str(PACKAGE_DIR), *order],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert done.returncode == 0, f"import order {order}:\n{done.stderr}"
        assert set(done.stdout.split()) == expected, order
