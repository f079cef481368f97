"""The SuperNode's authentication key pair (``fedrad-site keys node``).

``<site-dir>/keys/node_key``      EC P-384 private key, OpenSSH format, no passphrase, 0600:
                                  ``flower-supernode --auth-supernode-private-key``. It
                                  never leaves the site.
``<site-dir>/keys/node_key.pub``  the OpenSSH public key, 0644: the only file the
                                  coordinator receives (``flwr supernode register``).

Flower 1.41 accepts EC keys on a NIST curve only; P-384 is one. The fingerprint is the
one ``ssh-keygen -l`` prints (``SHA256:`` + unpadded base64), so both sides can compare
it over the phone before the coordinator registers the key.
"""
from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.durable import fsync_dir, write_atomic, write_new

NODE_KEY, NODE_PUB = "node_key", "node_key.pub"
COMMENT = b"fedrad-supernode"


class NodeKeyError(Exception):
    """The node key pair cannot be created as asked; the message names the fix."""


@dataclass(frozen=True)
class NodeKey:
    """Where the pair was written and the public key's SHA256 fingerprint."""

    private_key: Path
    public_key: Path
    fingerprint: str


def create_node_key(site_dir: Path, *, force: bool = False) -> NodeKey:
    """Write a new SuperNode key pair into ``<site-dir>/keys/``; refuse to replace one unless ``force``."""
    keys_dir = Path(site_dir) / "keys"
    private_path, public_path = keys_dir / NODE_KEY, keys_dir / NODE_PUB
    existing = [p.name for p in (private_path, public_path) if p.exists()]
    if existing and not force:
        raise NodeKeyError(
            f"{', '.join(existing)} already exist(s) in {keys_dir}; rule: the node key is never replaced by "
            f"accident (the coordinator registered its public key); fix: keep it, or pass --force and have "
            "the coordinator register the new node_key.pub (and unregister the old one)"
        )
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = public + b" " + COMMENT + b"\n"

    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if force:
        write_atomic(private_path, [private])
        write_atomic(public_path, [public_line])
    else:
        try:
            write_new(private_path, private)
            write_new(public_path, public_line)
        except FileExistsError as exc:
            raise NodeKeyError(f"a node key appeared in {keys_dir} while writing (another `keys node`?); "
                               "fix: use the key that is there, or run again with --force") from exc
    os.chmod(public_path, 0o644)  # public: the operator copies it to the coordinator
    fsync_dir(keys_dir)
    return NodeKey(private_key=private_path, public_key=public_path, fingerprint=fingerprint(public))


def fingerprint(public_openssh: bytes) -> str:
    """``SHA256:<base64>`` of an OpenSSH public key line, as ``ssh-keygen -l`` prints it."""
    fields = public_openssh.split()
    if len(fields) < 2:
        raise NodeKeyError("not an OpenSSH public key line; fix: pass the content of node_key.pub")
    digest = hashlib.sha256(base64.b64decode(fields[1], validate=True)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
