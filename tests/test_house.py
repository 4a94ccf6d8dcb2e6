"""House rules for the tests themselves (issue 13): one place for each helper.

A helper that two test files need lives in ``helpers.py``; a test file that
defines its own copy drifts from the other one (a fix lands in one, a sharper
assertion in the other). This test compares every top-level function and class
of every ``.py`` file under ``tests/`` with every other one, across files, after
normalising away what a copy would change:

- the definition's own name, docstrings and type annotations;
- the names it binds itself (parameters, local variables, nested functions,
  loop and comprehension targets), renamed in order of first appearance.

What stays is what makes two helpers different: the statements, the constants,
the attributes and the global names they use. Two definitions that normalise to
the same tree are a copy, wherever they stand. A deliberate exception goes in
``ALLOWED`` with its reason.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent

#: Definitions too small to be worth sharing (``pass``, a no-op, a one-call
#: forwarder such as ``def _abort(t): t.abort()``): below this many AST nodes
#: after normalisation, two alike are a coincidence, not a copy.
MIN_NODES = 10

#: Deliberate copies: frozenset of "path:name" (path relative to tests/) -> why.
ALLOWED: dict[frozenset[str], str] = {}

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _drop_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, _SCOPES[:3]) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = node.body[1:] or [ast.Pass()]


def _drop_annotations(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            node.annotation = None
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
        elif isinstance(node, ast.AnnAssign):
            node.annotation = ast.Constant(None)


class _Renamer(ast.NodeTransformer):
    """Renames the names a definition binds to ``_0``, ``_1``, ... by first binding.

    Names only read (globals, builtins, imports) and attribute names are kept:
    they are what the definition depends on. Method names of a class are kept
    too (they are its interface), but the locals inside each method are renamed.
    """

    def __init__(self, bound: set[str]) -> None:
        self.bound = bound
        self.names: dict[str, str] = {}

    def _new(self, name: str) -> str:
        if name not in self.bound:
            return name
        return self.names.setdefault(name, f"_{len(self.names)}")

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self._new(node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self._new(node.arg)
        return node


def _bound_names(definition: ast.AST) -> set[str]:
    """The names that scopes inside ``definition`` bind (not its class attributes)."""
    bound: set[str] = set()
    for scope in ast.walk(definition):
        if not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        arguments = scope.args
        for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
            bound.add(arg.arg)
        for extra in (arguments.vararg, arguments.kwarg):
            if extra is not None:
                bound.add(extra.arg)
        for node in ast.walk(scope):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                bound.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node is not scope:
                bound.add(node.name)
    return bound


def normalised(definition: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> ast.AST:
    """A copy of ``definition`` with what a copy would change taken out."""
    tree = ast.parse(ast.unparse(definition)).body[0]
    assert isinstance(tree, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    tree.name = "_"
    _drop_docstrings(tree)
    _drop_annotations(tree)
    bound = _bound_names(tree)
    if isinstance(tree, ast.ClassDef):  # keep method names: only their insides are renamed
        bound -= {
            n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
    renamed: ast.AST = _Renamer(bound).visit(tree)
    return renamed


def definitions(root: Path = TESTS) -> Iterator[tuple[str, str, str]]:
    """(path relative to ``root``, name, normalised dump) of each top-level definition."""
    for path in sorted(root.rglob("*.py")):
        module = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in module.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                tree = normalised(node)
                if sum(1 for _ in ast.walk(tree)) >= MIN_NODES:
                    dump = ast.dump(tree, annotate_fields=False)
                    yield path.relative_to(root).as_posix(), node.name, dump


def copies(root: Path = TESTS) -> list[list[str]]:
    """Groups of "path:name" whose definitions are the same in two or more files."""
    by_dump: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for path, name, dump in definitions(root):
        by_dump[dump].append((path, name))
    groups = []
    for places in by_dump.values():
        if len({path for path, _ in places}) > 1:
            group = sorted(f"{path}:{name}" for path, name in places)
            if frozenset(group) not in ALLOWED:
                groups.append(group)
    return sorted(groups)


def test_no_test_file_copies_a_helper_another_holds() -> None:
    found = copies()
    assert not found, (
        "copied definitions (move one into tests/helpers.py and import it, or add the "
        "group to ALLOWED with a reason):\n" + "\n".join("  " + " = ".join(g) for g in found)
    )


def test_no_test_module_imports_another() -> None:
    """Shared code is in helpers.py: a test module imported by another runs its
    module-level code twice and ties the two files' private helpers together."""
    modules = {path.stem for path in TESTS.rglob("test_*.py")}
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [f"{path.relative_to(TESTS)}: {n}" for n in names if n in modules]
    assert not found, f"test modules imported by others: {found}"


def test_every_allowed_copy_still_exists() -> None:
    """An allow-list entry whose copies are gone is stale: remove it."""
    by_dump: dict[str, set[str]] = defaultdict(set)
    for path, name, dump in definitions():
        by_dump[dump].add(f"{path}:{name}")
    present = [frozenset(group) for group in by_dump.values()]
    stale = [sorted(entry) for entry in ALLOWED if entry not in present]
    assert not stale, f"stale ALLOWED entries: {stale}"


# -- the checker catches what it should, and only that ----------------------------


def _write(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


ECHOES = '''
def echoes(sock: socket.socket, message: bytes) -> None:
    """Send, and check the echo."""
    sock.sendall(message)
    assert recv_exactly(sock, len(message)) == message
'''


def test_a_renamed_copy_without_its_docstring_and_types_is_found(tmp_path: Path) -> None:
    renamed = """
def _round_trip(client, data):
    client.sendall(data)
    assert recv_exactly(client, len(data)) == data
"""
    root = _write(tmp_path, {"helpers.py": ECHOES, "engine/test_x.py": renamed})
    assert copies(root) == [["engine/test_x.py:_round_trip", "helpers.py:echoes"]]


def test_a_different_constant_or_attribute_is_not_a_copy(tmp_path: Path) -> None:
    other_bit = ECHOES.replace("len(message)", "len(message) + 1")
    other_call = ECHOES.replace("sendall", "send")
    root = _write(
        tmp_path,
        {"helpers.py": ECHOES, "test_a.py": other_bit, "test_b.py": other_call},
    )
    assert copies(root) == []


def test_copies_within_one_file_are_not_this_tests_business(tmp_path: Path) -> None:
    twice = ECHOES + ECHOES.replace("def echoes", "def echoes_again")
    assert copies(_write(tmp_path, {"test_a.py": twice})) == []


def test_classes_compare_their_methods_bodies_but_keep_method_names(tmp_path: Path) -> None:
    recorder = """
class Recorder:
    def __init__(self):
        self.seen = []

    def data_received(self, data):
        self.seen.append(data)
"""
    renamed_locals = recorder.replace("data)", "chunk)").replace("(data", "(chunk")
    other_method = recorder.replace("def data_received", "def datagram_received")
    root = _write(
        tmp_path,
        {"test_a.py": recorder, "test_b.py": renamed_locals, "test_c.py": other_method},
    )
    assert copies(root) == [["test_a.py:Recorder", "test_b.py:Recorder"]]
