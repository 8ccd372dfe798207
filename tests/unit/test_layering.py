"""transports/ and actors/ must be usable without inferflux: they never import it. And no
module of the three packages imports itself back through others: no import cycles."""

import ast
import pathlib

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("package", ["transports", "actors"])
def test_lower_layers_do_not_import_inferflux(package: str) -> None:
    offenders = []
    for path in pathlib.Path(REPO, package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "inferflux"]
    assert offenders == []
    if package == "transports":  # and transports knows nothing of actors either
        text = "".join(p.read_text() for p in pathlib.Path(REPO, "transports").rglob("*.py"))
        assert "import actors" not in text and "from actors" not in text


PACKAGES = ("inferflux", "actors", "transports")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of PACKAGES it imports, wherever the import statement is:
    top level, inside a function, under TYPE_CHECKING (a cycle there still couples the two
    modules, and turns into an ImportError the day the import moves)."""
    paths = [p for package in PACKAGES for p in pathlib.Path(REPO, package).rglob("*.py")]
    modules = {module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        # A package's relative imports start from the package itself, a module's from its
        # parent package.
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from pkg import sub` imports the module pkg.sub when there is one.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted:
    every import cycle lies inside one of them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_cycle_finder_sees_relative_and_nested_imports() -> None:
    graph = import_graph()
    assert "inferflux.policy.ops" in graph["inferflux.policy.admin_ops"]  # from . import ops
    assert "actors._errors" in graph["actors._actor"]  # from ._errors import ...
    assert "actors" in graph["inferflux.scheduler.actor"]  # from actors import ...
    assert "transports" in graph["actors._process"]
    assert "inferflux.top_app" in graph["inferflux.top"]  # inside main()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []
