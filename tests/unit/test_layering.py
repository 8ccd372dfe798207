"""transports/ and actors/ must be usable without inferflux: they never import it."""

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
