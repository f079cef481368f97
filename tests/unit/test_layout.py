"""DESIGN.md's layering: top-level packages resolve inside this repository, and
`common` imports neither side while `client` and `server` never import each other."""
import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {"common": {"client", "server"}, "client": {"server"}, "server": {"client"}}


@pytest.mark.parametrize("package", ["common", "client", "server"])
def test_package_resolves_inside_this_repository(package):
    module = importlib.import_module(package)
    assert Path(module.__file__).resolve().parent == REPO / package


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package):
    offenders = []
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN[package]]
    assert offenders == []
