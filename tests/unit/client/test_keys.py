"""Site keys: creation, permissions, passphrase derivation, rotation and its recovery."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from client.keys import SiteKeyError, init_keys, key_id_of, load_keys, rotate_kek


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_init_creates_private_files_and_load_round_trips(tmp_path):
    keys = init_keys(tmp_path)
    kdir = tmp_path / "keys"
    assert _mode(kdir) == 0o700
    for name in ("kek", "site-secret", "site-id"):
        assert _mode(kdir / name) == 0o600
    assert (kdir / "kek").read_bytes() == keys.kek and len(keys.kek) == 32
    assert len(keys.site_secret) == 32 and keys.site_secret != keys.kek
    # the site secret is stored wrapped, never in clear
    assert keys.site_secret not in (kdir / "site-secret").read_bytes()
    assert keys.site_secret.hex().encode() not in (kdir / "site-secret").read_bytes()
    assert load_keys(tmp_path) == keys


def test_key_id_is_a_fingerprint_not_the_key(tmp_path):
    keys = init_keys(tmp_path)
    assert len(keys.key_id) == 16 and keys.key_id == key_id_of(keys.kek)
    assert keys.key_id not in keys.kek.hex()
    assert keys.kek.hex() not in repr(keys) and repr(keys.kek) not in repr(keys)
    assert repr(keys.site_secret) not in repr(keys)


def test_two_sites_get_different_keys(tmp_path):
    a, b = init_keys(tmp_path / "a"), init_keys(tmp_path / "b")
    assert a.kek != b.kek and a.site_secret != b.site_secret and a.site_id != b.site_id


def test_init_refuses_to_overwrite(tmp_path):
    keys = init_keys(tmp_path)
    with pytest.raises(SiteKeyError, match="already exist.*rotate"):
        init_keys(tmp_path)
    assert load_keys(tmp_path) == keys


def test_group_readable_kek_is_refused_with_chmod_fix(tmp_path):
    init_keys(tmp_path)
    kek = tmp_path / "keys" / "kek"
    os.chmod(kek, 0o644)
    with pytest.raises(SiteKeyError, match=r"mode 644.*chmod 600"):
        load_keys(tmp_path)
    os.chmod(kek, 0o600)
    load_keys(tmp_path)


def test_group_readable_site_secret_is_refused(tmp_path):
    init_keys(tmp_path)
    os.chmod(tmp_path / "keys" / "site-secret", 0o640)
    with pytest.raises(SiteKeyError, match="chmod 600"):
        load_keys(tmp_path)


def test_missing_keys_name_the_init_command(tmp_path):
    with pytest.raises(SiteKeyError, match=r"fedrad-site keys init --site-dir"):
        load_keys(tmp_path)


def test_kek_from_another_site_is_refused(tmp_path):
    init_keys(tmp_path / "a")
    other = init_keys(tmp_path / "b")
    kek = tmp_path / "a" / "keys" / "kek"
    kek.write_bytes(other.kek)
    with pytest.raises(SiteKeyError, match="site-secret is wrapped under key id"):
        load_keys(tmp_path / "a")


def test_truncated_kek_is_refused(tmp_path):
    init_keys(tmp_path)
    kek = tmp_path / "keys" / "kek"
    kek.write_bytes(kek.read_bytes()[:31])
    with pytest.raises(SiteKeyError, match="31 bytes"):
        load_keys(tmp_path)


def test_passphrase_kek_derives_and_stores_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDRAD_PASS", "correct horse battery staple")
    keys = init_keys(tmp_path, passphrase_env="FEDRAD_PASS")
    kdir = tmp_path / "keys"
    assert not (kdir / "kek").exists()
    params = json.loads((kdir / "kek.scrypt.json").read_text())
    assert (params["kdf"], params["n"], params["r"], params["p"]) == ("scrypt", 2**15, 8, 1)
    for path in kdir.iterdir():
        data = path.read_bytes()
        assert keys.kek not in data and keys.kek.hex().encode() not in data
        assert keys.site_secret not in data and keys.site_secret.hex().encode() not in data
    assert load_keys(tmp_path, passphrase_env="FEDRAD_PASS") == keys


def test_wrong_passphrase_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDRAD_PASS", "correct horse battery staple")
    init_keys(tmp_path, passphrase_env="FEDRAD_PASS")
    monkeypatch.setenv("FEDRAD_PASS", "wrong horse")
    with pytest.raises(SiteKeyError, match=r"passphrase in \$FEDRAD_PASS does not derive") as err:
        load_keys(tmp_path, passphrase_env="FEDRAD_PASS")
    assert "wrong horse" not in str(err.value)


def test_passphrase_mode_needs_its_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDRAD_PASS", raising=False)
    with pytest.raises(SiteKeyError, match="unset or empty"):
        init_keys(tmp_path, passphrase_env="FEDRAD_PASS")
    assert not (tmp_path / "keys").exists()  # nothing created
    monkeypatch.setenv("FEDRAD_PASS", "pw")
    init_keys(tmp_path, passphrase_env="FEDRAD_PASS")
    with pytest.raises(SiteKeyError, match="--passphrase-env"):
        load_keys(tmp_path)
    monkeypatch.setenv("FEDRAD_PASS", "")
    with pytest.raises(SiteKeyError, match="unset or empty"):
        load_keys(tmp_path, passphrase_env="FEDRAD_PASS")


def test_file_kek_refuses_a_passphrase(tmp_path, monkeypatch):
    init_keys(tmp_path)
    monkeypatch.setenv("FEDRAD_PASS", "pw")
    with pytest.raises(SiteKeyError, match="drop --passphrase-env"):
        load_keys(tmp_path, passphrase_env="FEDRAD_PASS")


def test_rotate_replaces_kek_and_keeps_secret(tmp_path):
    old = init_keys(tmp_path)
    seen = []
    new = rotate_kek(tmp_path, rewrap=lambda o, n: seen.append((o, n)))
    assert seen == [(old, new)]
    assert new.kek != old.kek and new.key_id != old.key_id
    assert (new.site_secret, new.site_id) == (old.site_secret, old.site_id)
    assert load_keys(tmp_path) == new
    kdir = tmp_path / "keys"
    assert sorted(p.name for p in kdir.iterdir() if not p.name.startswith(".")) == [
        "kek", "site-id", "site-secret"]
    assert _mode(kdir / "kek") == 0o600 and _mode(kdir / "site-secret") == 0o600
    for path in kdir.iterdir():  # the old kek is gone from the key directory
        assert old.kek not in path.read_bytes()


def test_interrupted_rotation_blocks_load_and_resumes_with_the_same_new_kek(tmp_path):
    old = init_keys(tmp_path)
    seen = []

    def crash(o, n):
        seen.append(n)
        raise RuntimeError("simulated crash during rewrap")

    with pytest.raises(RuntimeError):
        rotate_kek(tmp_path, rewrap=crash)
    with pytest.raises(SiteKeyError, match="rotation was interrupted.*keys rotate"):
        load_keys(tmp_path)
    assert (tmp_path / "keys" / "kek").read_bytes() == old.kek  # old kek still works
    new = rotate_kek(tmp_path, rewrap=lambda o, n: seen.append(n))
    assert seen == [new, new]  # the resumed rotation used the pending kek
    assert load_keys(tmp_path) == new and new.site_secret == old.site_secret


def test_passphrase_rotation_with_new_passphrase(tmp_path, monkeypatch):
    monkeypatch.setenv("OLD_PASS", "old passphrase")
    monkeypatch.setenv("NEW_PASS", "new passphrase")
    old = init_keys(tmp_path, passphrase_env="OLD_PASS")
    new = rotate_kek(tmp_path, passphrase_env="OLD_PASS", new_passphrase_env="NEW_PASS",
                     rewrap=lambda o, n: None)
    assert new.kek != old.kek and new.site_secret == old.site_secret
    assert load_keys(tmp_path, passphrase_env="NEW_PASS") == new
    with pytest.raises(SiteKeyError, match="does not derive"):
        load_keys(tmp_path, passphrase_env="OLD_PASS")
