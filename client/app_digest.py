"""The app digest: what a site lists in its policy's ``[apps] allowed-hashes``.

Flower 1.41 does not tell a ClientApp the hash of the FAB it was installed from, and a
``.fab`` file's own sha256 depends on how its zip was packed. The app digest depends on
the app's files only::

    sha256( "fedrad-app-digest/v1\\n" + for each file, sorted by path:
            "<relative posix path>\\t<sha256 of its content>\\n" )

``pyproject.toml`` at the app's root counts by its parsed content (canonical JSON), so
TOML formatting does not change the digest. The digest is the same computed from:

- a ``.fab`` file (every entry but Flower's ``.info/`` metadata): :func:`fab_digest`;
- the app as Flower installs it (``$FLWR_HOME/apps/<publisher>.<name>.<version>.<hash>``,
  every file but ``.info/`` and Python's ``__pycache__/``): :func:`installed_app_digest`;
- a checkout, packaged in memory by Flower's own FAB builder (``.gitignore`` and
  ``[tool.flwr.app] fab-include``), as ``flwr build`` would: :func:`checkout_digest`.

:func:`running_app_digest` is the digest of the app this process runs: the directory
the imported ``client`` package lives in, once per directory and process.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import tomllib
import zipfile
from pathlib import Path
from typing import Iterable

from common.app_files import BYTECODE_DIR, checkout_files

DIGEST_VERSION = b"fedrad-app-digest/v1\n"
CONFIG_FILE = "pyproject.toml"
FLOWER_METADATA_DIR = ".info"
# Flower installs a FAB into $FLWR_HOME/apps/<publisher>.<name>.<version>.<fab-hash[:8]>.
INSTALLED_APP_NAME = re.compile(r"[^/]+\.[^/]+\.[^/]+\.[0-9a-f]{8}")


class AppDigestError(ValueError):
    """The app's files cannot be digested (not a FAB, not an app directory)."""


def _content_hash(path: str, content: bytes) -> str:
    if path == CONFIG_FILE:
        try:
            parsed = tomllib.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            pass  # not valid TOML: Flower cannot run it either; its bytes count as they are
        else:
            canonical = json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
            content = b"toml-as-json\0" + canonical.encode("utf-8")
    return hashlib.sha256(content).hexdigest()


def _combine(entries: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256(DIGEST_VERSION)
    seen: set[str] = set()
    for path, file_hash in sorted(entries):
        if path in seen:
            raise AppDigestError(f"the app lists the file {path!r} twice; rule: one entry per path; "
                                 "fix: rebuild the FAB with `flwr build`")
        seen.add(path)
        digest.update(f"{path}\t{file_hash}\n".encode("utf-8"))
    if not seen:
        raise AppDigestError("the app has no files; fix: point at a FAB or an app directory")
    return digest.hexdigest()


def fab_digest(fab: Path | bytes) -> str:
    """The app digest of a ``.fab`` file (a path or its bytes)."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab) if isinstance(fab, bytes) else Path(fab)) as archive:
            entries = [(info.filename, _content_hash(info.filename, archive.read(info)))
                       for info in archive.infolist()
                       if not info.is_dir() and info.filename.split("/", 1)[0] != FLOWER_METADATA_DIR]
    except (zipfile.BadZipFile, OSError) as exc:
        raise AppDigestError(f"not a readable FAB ({type(exc).__name__}); fix: pass a file made by "
                             "`flwr build`") from None
    return _combine(entries)


def installed_app_digest(app_dir: Path) -> str:
    """The app digest of an app directory as Flower installs it: every file counts.

    Skipped: ``.info/`` at the root (Flower's FAB metadata) and ``__pycache__/``
    directories (bytecode Python writes when it imports the app). A symbolic link counts
    by its target's name (a FAB cannot carry one).
    """
    root = Path(app_dir)
    if not root.is_dir():
        raise AppDigestError("the app directory does not exist; fix: pass the installed app's directory, "
                             "e.g. $FLWR_HOME/apps/<publisher>.<name>.<version>.<hash>")
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        keep = []
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                entries.append(_link_entry(here / name, rel_dir / name))
            elif name != BYTECODE_DIR and not (rel_dir == Path(".") and name == FLOWER_METADATA_DIR):
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            path, rel = here / name, (rel_dir / name).as_posix()
            entries.append(_link_entry(path, rel_dir / name) if path.is_symlink()
                           else (rel, _content_hash(rel, path.read_bytes())))
    return _combine(entries)


def _link_entry(path: Path, rel: Path) -> tuple[str, str]:
    return rel.as_posix(), hashlib.sha256(b"symlink\0" + os.fsencode(os.readlink(path))).hexdigest()


def checkout_digest(root: Path) -> str:
    """The app digest of the FAB that ``flwr build`` would make from the checkout ``root``."""
    from flwr.cli.build import build_fab_from_files

    root = Path(root)
    if not (root / CONFIG_FILE).is_file():
        raise AppDigestError(f"no {CONFIG_FILE} in the app's directory, so it is not a Flower app checkout; "
                             "fix: run from the checkout, or pass --fab FILE or --app-dir DIR")
    try:
        fab, _ = build_fab_from_files(checkout_files(root))
    except ValueError as exc:  # Flower's build rules (patterns, depth, size)
        raise AppDigestError(f"Flower cannot package the checkout: {exc}") from None
    return fab_digest(fab)


def is_installed_app(app_dir: Path) -> bool:
    """Whether ``app_dir`` is where Flower installs a FAB (``.../apps/<publisher>.<name>.<version>.<hash>``)."""
    from flwr.common.constant import APP_DIR

    app_dir = Path(app_dir)
    return app_dir.parent.name == APP_DIR and INSTALLED_APP_NAME.fullmatch(app_dir.name) is not None


@functools.lru_cache(maxsize=8)
def app_digest(app_dir: Path) -> str:
    """The digest of the app in ``app_dir``: an installed app's files, or a checkout as Flower packages it."""
    return installed_app_digest(app_dir) if is_installed_app(app_dir) else checkout_digest(app_dir)


def running_app_root() -> Path:
    """The directory this process's ``client`` package was imported from (the app's root)."""
    import client

    return Path(client.__file__).resolve().parent.parent


def running_app_digest() -> str:
    """The app digest of the app this process runs (computed once per app directory)."""
    return app_digest(running_app_root())
