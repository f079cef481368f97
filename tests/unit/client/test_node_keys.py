"""The SuperNode's authentication key pair: formats Flower 1.41 loads, modes, no overwrite."""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes
from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication
from typer.testing import CliRunner

from client.cli import app
from client.node_keys import NodeKeyError, create_node_key


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_a_private_p384_openssh_key_and_its_public_key(tmp_path):
    pair = create_node_key(tmp_path)
    assert pair.private_key == tmp_path / "keys" / "node_key"
    assert pair.public_key == tmp_path / "keys" / "node_key.pub"
    assert _mode(pair.private_key) == 0o600 and _mode(pair.public_key) == 0o644
    assert _mode(tmp_path / "keys") == 0o700
    assert pair.private_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    private = load_ssh_private_key(pair.private_key.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
    public = load_ssh_public_key(pair.public_key.read_bytes())
    assert public == private.public_key()
    assert b"PRIVATE" not in pair.public_key.read_bytes()


def test_flowers_own_loaders_accept_the_pair(tmp_path):
    pair = create_node_key(tmp_path)
    # `flwr supernode register` (coordinator) ...
    registered = try_load_public_key(pair.public_key)
    # ... and `flower-supernode --auth-supernode-private-key` (site) agree on the key
    args = argparse.Namespace(auth_supernode_private_key=str(pair.private_key), auth_supernode_public_key=None)
    private, public = _try_setup_client_authentication(args)
    assert public_key_to_bytes(public) == registered
    assert isinstance(private.curve, ec.SECP384R1)


def test_fingerprint_is_ssh_keygens_sha256(tmp_path):
    pair = create_node_key(tmp_path)
    blob = base64.b64decode(pair.public_key.read_text().split()[1])
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert pair.fingerprint == expected and len(pair.fingerprint) == 7 + 43


def test_refuses_to_overwrite_without_force(tmp_path):
    first = create_node_key(tmp_path)
    before = first.private_key.read_bytes(), first.public_key.read_bytes()
    with pytest.raises(NodeKeyError, match=r"already exist.*--force.*register"):
        create_node_key(tmp_path)
    assert (first.private_key.read_bytes(), first.public_key.read_bytes()) == before
    first.private_key.unlink()  # a lone public key is not replaced either
    with pytest.raises(NodeKeyError, match="node_key.pub"):
        create_node_key(tmp_path)
    second = create_node_key(tmp_path, force=True)
    assert second.public_key.read_bytes() != before[1] and second.fingerprint != first.fingerprint
    assert _mode(second.private_key) == 0o600 and _mode(second.public_key) == 0o644
    assert load_ssh_public_key(second.public_key.read_bytes()) == \
        load_ssh_private_key(second.private_key.read_bytes(), password=None).public_key()


def test_two_sites_get_different_keys(tmp_path):
    assert create_node_key(tmp_path / "a").fingerprint != create_node_key(tmp_path / "b").fingerprint


def test_cli_prints_the_public_path_and_fingerprint(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["keys", "node", "--site-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    blob = base64.b64decode((tmp_path / "keys" / "node_key.pub").read_text().split()[1])
    assert f"fingerprint: SHA256:{base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip('=')}" \
        in result.output
    assert str(tmp_path / "keys" / "node_key.pub") in result.output
    assert "send only node_key.pub" in result.output
    again = runner.invoke(app, ["keys", "node", "--site-dir", str(tmp_path)])
    assert again.exit_code == 2 and "--force" in again.output
    forced = runner.invoke(app, ["keys", "node", "--site-dir", str(tmp_path), "--force"])
    assert forced.exit_code == 0, forced.output
