"""The app digest: one value from a FAB, from the installed app and from its checkout."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from client.app_digest import AppDigestError, app_digest, fab_digest, installed_app_digest, is_installed_app
from client.cli import app as site_cli

PYPROJECT = b'[project]\nname = "demo"\nversion = "1.0.0"\n\n[tool.flwr.app]\npublisher = "me"\n'
FILES = {
    "pyproject.toml": PYPROJECT,
    "client/__init__.py": b"",
    "client/app.py": b"print('site')\n",
    "common/model.py": b"WIDTH = 3\n",
    "README.md": b"# demo\n",
}


def _fab(path: Path, files: dict[str, bytes], *, reverse: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("client/", b"")  # a directory entry is not a file
        for name in sorted(files, reverse=reverse):
            archive.writestr(name, files[name])
        manifest = "\n".join(f"{n},{hashlib.sha256(c).hexdigest()},{8 * len(c)}" for n, c in files.items())
        archive.writestr(".info/CONTENT", manifest)
    return path


def _installed(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def test_fab_and_installed_directory_give_the_same_digest(tmp_path):
    digest = fab_digest(_fab(tmp_path / "app.fab", FILES))
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert fab_digest((tmp_path / "app.fab").read_bytes()) == digest
    assert fab_digest(_fab(tmp_path / "other-order.fab", FILES, reverse=True)) == digest
    installed = _installed(tmp_path / "apps" / "me.demo.1.0.0.0123abcd", FILES)
    (installed / ".info").mkdir()
    (installed / ".info" / "CONTENT").write_text("Flower's metadata")
    (installed / "client" / "__pycache__").mkdir()
    (installed / "client" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"bytecode Python wrote")
    assert installed_app_digest(installed) == digest
    assert is_installed_app(installed) and app_digest(installed) == digest


@pytest.mark.parametrize("change", ["content", "added", "renamed", "sourceless-bytecode", "nested-info"])
def test_any_change_to_the_code_changes_the_digest(tmp_path, change):
    files = dict(FILES)
    if change == "content":
        files["common/model.py"] = b"WIDTH = 4\n"
    elif change == "added":
        files["client/extra.py"] = b""
    elif change == "renamed":
        files["client/main.py"] = files.pop("client/app.py")
    elif change == "sourceless-bytecode":
        files["client/evil.pyc"] = b"importable without a source file"
    else:
        files["client/.info/CONTENT"] = b"only the root .info is Flower's"
    original = fab_digest(_fab(tmp_path / "a.fab", FILES))
    changed = fab_digest(_fab(tmp_path / "b.fab", files))
    assert changed != original
    assert installed_app_digest(_installed(tmp_path / "installed", files)) == changed


def test_pyproject_counts_by_content_not_formatting(tmp_path):
    reformatted = dict(FILES, **{"pyproject.toml": b"[tool.flwr.app]\npublisher='me'\n[project]\nversion='1.0.0'\n"
                                                   b"name='demo'\n"})
    retuned = dict(FILES, **{"pyproject.toml": PYPROJECT.replace(b"1.0.0", b"1.0.1")})
    digest = fab_digest(_fab(tmp_path / "a.fab", FILES))
    assert fab_digest(_fab(tmp_path / "b.fab", reformatted)) == digest
    assert fab_digest(_fab(tmp_path / "c.fab", retuned)) != digest


def test_malformed_inputs_are_app_digest_errors(tmp_path):
    (tmp_path / "not.fab").write_text("not a zip")
    with pytest.raises(AppDigestError, match="not a readable FAB"):
        fab_digest(tmp_path / "not.fab")
    with zipfile.ZipFile(tmp_path / "twice.fab", "w") as archive:
        archive.writestr("client/app.py", b"a")
        with pytest.warns(UserWarning):  # zipfile warns about the duplicate name
            archive.writestr("client/app.py", b"b")
    with pytest.raises(AppDigestError, match="twice"):
        fab_digest(tmp_path / "twice.fab")
    with pytest.raises(AppDigestError, match="does not exist"):
        installed_app_digest(tmp_path / "missing")


def test_installed_app_location():
    assert is_installed_app(Path("/home/x/.flwr/apps/fedrad.fedrad.0.1.0.ce4138b1"))
    assert not is_installed_app(Path("/work/fedrad"))
    assert not is_installed_app(Path("/home/x/.flwr/apps/fedrad.fedrad.0.1.0.nothex00"))


def test_cli_prints_the_digest_of_a_fab_or_an_installed_app(tmp_path):
    runner = CliRunner()
    digest = fab_digest(_fab(tmp_path / "app.fab", FILES))
    result = runner.invoke(site_cli, ["app", "digest", "--fab", str(tmp_path / "app.fab")])
    assert result.exit_code == 0 and result.stdout.strip() == digest
    installed = _installed(tmp_path / "installed", FILES)
    result = runner.invoke(site_cli, ["app", "digest", "--app-dir", str(installed)])
    assert result.exit_code == 0 and result.stdout.strip() == digest
    both = runner.invoke(site_cli, ["app", "digest", "--fab", str(tmp_path / "app.fab"), "--app-dir", str(installed)])
    assert both.exit_code == 2 and "not both" in both.output
    bad = runner.invoke(site_cli, ["app", "digest", "--fab", str(tmp_path / "missing.fab")])
    assert bad.exit_code == 2 and "not a readable FAB" in bad.output
