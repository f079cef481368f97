"""The app digest of fedrad itself: `flwr build`'s FAB, Flower's installed app and the checkout agree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.cli.install import install_from_fab

from client.app_digest import app_digest, checkout_digest, fab_digest, installed_app_digest, running_app_root
from common.app_files import stage_app

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _flwr_build(app_dir: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN / "flwr"), "build", "--app", str(app_dir)], cwd=out_dir, check=True,
                   capture_output=True, timeout=120)
    (fab,) = out_dir.glob("*.fab")
    return fab


def _copy_app(dest: Path) -> Path:
    """The app's sources (what fab-include names), without bytecode or anything else."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", ".gitignore", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for package in ("client", "common", "server"):
        shutil.copytree(REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.mark.timeout(180)
def test_fab_installed_app_checkout_and_running_app_agree(tmp_path):
    checkout = _copy_app(tmp_path / "fedrad")
    fab = _flwr_build(checkout, tmp_path / "dist")
    installed = install_from_fab(fab, tmp_path / "flwr-home", skip_prompt=True)  # Flower's own installer
    assert (installed / "client" / "app.py").is_file() and not (installed / ".info").exists()

    digest = fab_digest(fab)
    assert installed_app_digest(installed) == digest
    assert checkout_digest(checkout) == digest
    assert app_digest(installed) == digest  # recognised as an installed app

    # The ClientApp's own view: the digest of the directory `client` is imported from.
    # Importing the app first writes __pycache__/ there, which must not count.
    probe = ("import client.app, client.app_digest as d; "
             "print(d.running_app_root()); print(d.running_app_digest())")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    ran = subprocess.run([sys.executable, "-c", probe], cwd=installed, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    root, running = ran.stdout.split()
    assert Path(root) == installed.resolve() and (installed / "client" / "__pycache__").is_dir()
    assert running == digest

    # What a site operator runs to approve the app: the same digest, either way.
    for option, target in (("--fab", fab), ("--app-dir", installed)):
        printed = subprocess.run([str(BIN / "fedrad-site"), "app", "digest", option, str(target)],
                                 capture_output=True, text=True, timeout=60, check=True).stdout.strip()
        assert printed == digest

    # Any change to the installed code is a different app.
    with (installed / "common" / "model.py").open("a") as f:
        f.write("\n# changed\n")
    assert installed_app_digest(installed) != digest


@pytest.mark.timeout(240)
def test_site_command_in_the_checkout_equals_the_fab_flwr_build_makes(tmp_path):
    assert running_app_root() == REPO

    def printed() -> str:
        return subprocess.run([str(BIN / "fedrad-site"), "app", "digest"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60, check=True).stdout.strip()

    for attempt in range(3):  # a checkout being edited meanwhile is measured again
        before = printed()
        fab = _flwr_build(REPO, tmp_path / f"dist-{attempt}")  # the repository as it is, .venv and all
        staged = _flwr_build(stage_app(REPO, tmp_path / f"staged-{attempt}"), tmp_path / f"staged-dist-{attempt}")
        if printed() == before:
            break
    assert before == fab_digest(fab)
    # What LocalSimulation and LocalFederation hand to `flwr run`: the very same FAB.
    assert staged.name == fab.name and staged.read_bytes() == fab.read_bytes()
    assert not (tmp_path / f"staged-{attempt}" / ".venv").exists()
