"""The privacy ledger: write-ahead, accumulation, tampering, rollback, atomicity."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from client.keys import init_keys, load_keys
from client.privacy import LedgerError, PrivacyLedger, epsilon

from .conftest import DATASET, OTHER, charge

REPO = Path(__file__).resolve().parents[4]
DELTA = 1e-5


def _paths(site_dir: Path) -> tuple[Path, Path]:
    return site_dir / "ledger" / "ledger.json", site_dir / "keys" / "ledger-anchor"


def _reopen_fails(site, kind: str, *words: str) -> LedgerError:
    site_dir, keys = site
    with pytest.raises(LedgerError) as info:
        PrivacyLedger.open(site_dir, keys.site_secret)
    err = info.value
    assert err.kind == kind, str(err)
    for word in ("fix: restore", *words):
        assert word in str(err), str(err)
    return err


def _remac(doc: dict, secret: bytes, label: bytes = b"fedrad/ledger") -> bytes:
    """Re-authenticate a document the way ledger.py documents it (independent code)."""
    doc = {k: v for k, v in doc.items() if k != "mac"}
    key = hmac.new(secret, label, hashlib.sha256).digest()
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"
    doc["mac"] = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    return (json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode()


# --- creation, write-ahead, accumulation --------------------------------------------


def test_fresh_site_gets_an_empty_authenticated_ledger(site, ledger):
    site_dir, keys = site
    path, anchor = _paths(site_dir)
    assert path.is_file() and anchor.is_file()
    for p in (path, anchor):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ledger.entries() == [] and ledger.history(DATASET) == [] and ledger.generation() == 0
    assert ledger.spent(DATASET, DELTA).epsilon == 0.0
    # the documented format verifies with independent code
    doc = json.loads(path.read_bytes())
    assert _remac(doc, keys.site_secret) == path.read_bytes()
    assert doc["format"] == "fedrad-privacy-ledger" and doc["version"] == 1


def test_charge_is_durable_and_settle_never_lowers_the_charge(site, ledger):
    site_dir, keys = site
    seq = charge(ledger, steps=100, run_id=77, server_round=3)
    (entry,) = PrivacyLedger.open(site_dir, keys.site_secret).entries()
    assert entry["seq"] == seq == 1 and entry["status"] == "charged" and entry["steps"] == 100
    assert (entry["run_id"], entry["server_round"], entry["app"]) == (77, 3, "")

    ledger.settle(seq, steps_done=40)  # stopped early: the charge still counts in full
    (entry,) = ledger.entries()
    assert entry["status"] == "completed" and entry["steps_done"] == 40 and entry["steps"] == 100
    ledger.settle(seq, steps_done=40)  # a retried settle is a no-op
    with pytest.raises(LedgerError, match="already settled") as info:
        ledger.settle(seq, steps_done=50)
    assert info.value.kind == "settled"
    with pytest.raises(LedgerError, match="no entry with seq 9"):
        ledger.settle(9)

    over = charge(ledger, steps=100, server_round=4)
    ledger.settle(over, steps_done=130)  # ran more than charged: the extra spend counts
    assert ledger.history(DATASET) == [(1.1, 0.01, 100), (1.1, 0.01, 130)]


def test_write_ahead_charge_survives_kill_9_before_training(site):
    site_dir, _ = site
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from client.keys import load_keys\n"
        "from client.privacy.ledger import PrivacyLedger\n"
        "site = Path(sys.argv[1])\n"
        "ledger = PrivacyLedger.open(site, load_keys(site).site_secret)\n"
        f"ledger.charge(dataset={DATASET!r}, noise_multiplier=1.0, sample_rate=0.02, steps=250,"
        " run_id=5, server_round=1)\n"
        "print('charged', flush=True)\n"
        "time.sleep(120)  # 'training'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, str(site_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert line.strip() == b"charged", proc.stderr.read().decode()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    keys = load_keys(site_dir)
    ledger = PrivacyLedger.open(site_dir, keys.site_secret)
    (entry,) = ledger.entries(DATASET)
    assert entry["status"] == "charged" and entry["steps"] == 250 and entry["run_id"] == 5
    assert ledger.spent(DATASET, DELTA).epsilon == epsilon([(1.0, 0.02, 250)], DELTA).epsilon > 0


def test_runs_accumulate_and_datasets_are_separate(site):
    site_dir, keys = site
    first = PrivacyLedger.open(site_dir, keys.site_secret)
    for rnd in (1, 2):
        charge(first, run_id=1001, server_round=rnd, steps=50)
    second = PrivacyLedger.open(site_dir, keys.site_secret)  # a new run, after a restart
    for rnd in (1, 2, 3):
        charge(second, run_id=1002, server_round=rnd, steps=50)
    charge(second, dataset=OTHER, run_id=1002, server_round=4, steps=999)

    assert [e["seq"] for e in first.entries()] == [1, 2, 3, 4, 5, 6]  # first sees second's writes
    assert first.history(DATASET) == [(1.1, 0.01, 50)] * 5
    assert first.history(OTHER) == [(1.1, 0.01, 999)]
    assert [e["run_id"] for e in first.entries(DATASET)] == [1001, 1001, 1002, 1002, 1002]
    both = first.spent(DATASET, DELTA)
    assert both.steps == 250 and both.entries == 5
    assert both.epsilon == epsilon([(1.1, 0.01, 250)], DELTA).epsilon > epsilon([(1.1, 0.01, 100)], DELTA).epsilon
    assert first.spent(OTHER, DELTA).steps == 999


def test_concurrent_writers_lose_nothing(site):
    site_dir, keys = site
    PrivacyLedger.open(site_dir, keys.site_secret)

    def work(run_id):
        ledger = PrivacyLedger.open(site_dir, keys.site_secret)
        for rnd in range(8):
            charge(ledger, run_id=run_id, server_round=rnd)

    threads = [threading.Thread(target=work, args=(r,)) for r in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = PrivacyLedger.open(site_dir, keys.site_secret).entries()
    assert [e["seq"] for e in entries] == list(range(1, 25))
    assert sorted((e["run_id"], e["server_round"]) for e in entries) == [(r, n) for r in (1, 2, 3) for n in range(8)]


@pytest.mark.parametrize("bad", [dict(dataset="has space"), dict(dataset=""), dict(steps=0),
                                 dict(noise_multiplier=-1.0), dict(sample_rate=0.0), dict(run_id=True),
                                 dict(server_round=-1)])
def test_charge_refuses_bad_arguments_and_records_nothing(ledger, bad):
    args = dict(dataset=DATASET, noise_multiplier=1.0, sample_rate=0.01, steps=10, run_id=1, server_round=1)
    with pytest.raises(ValueError):
        ledger.charge(**{**args, **bad})
    assert ledger.entries() == [] and ledger.generation() == 0


# --- tampering ----------------------------------------------------------------------


def test_every_single_byte_change_is_detected(site, ledger):
    site_dir, keys = site
    charge(ledger)
    charge(ledger, dataset=OTHER)
    path, _ = _paths(site_dir)
    original = path.read_bytes()
    for i in range(len(original)):
        changed = bytearray(original)
        changed[i] ^= 0x01
        path.write_bytes(bytes(changed))
        with pytest.raises(LedgerError) as info:
            PrivacyLedger.open(site_dir, keys.site_secret)
        assert info.value.kind == "modified", (i, str(info.value))
    path.write_bytes(original)
    assert len(PrivacyLedger.open(site_dir, keys.site_secret).entries()) == 2


def test_flipped_byte_message_names_the_problem_and_the_fix(site, ledger):
    site_dir, _ = site
    charge(ledger, sigma=1.25)
    path, _ = _paths(site_dir)
    path.write_bytes(path.read_bytes().replace(b'"noise_multiplier":1.25', b'"noise_multiplier":9.25'))
    err = _reopen_fails(site, "modified", "modified or corrupted", "authentication failed")
    assert "never delete it" in str(err)


@pytest.mark.parametrize("edit", ["delete", "reorder", "truncate"])
def test_deleting_reordering_or_truncating_entries_is_detected(site, ledger, edit):
    site_dir, _ = site
    for rnd in (1, 2, 3):
        charge(ledger, server_round=rnd)
    path, _ = _paths(site_dir)
    raw = path.read_bytes()
    doc = json.loads(raw)
    if edit == "delete":
        del doc["entries"][1]
    elif edit == "reorder":
        doc["entries"].reverse()
    if edit == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        path.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    _reopen_fails(site, "modified", "modified or corrupted")


def test_a_reformatted_ledger_is_refused(site, ledger):
    site_dir, _ = site
    charge(ledger)
    path, _ = _paths(site_dir)
    path.write_text(json.dumps(json.loads(path.read_bytes()), indent=2))  # same content, other bytes
    _reopen_fails(site, "modified", "not in canonical form")


def test_re_authenticated_with_another_key_is_detected(site, ledger):
    site_dir, _ = site
    charge(ledger)
    path, _ = _paths(site_dir)
    doc = json.loads(path.read_bytes())
    doc["entries"] = []
    path.write_bytes(_remac(doc, b"x" * 32))
    _reopen_fails(site, "modified", "not written with this site's secret")


def test_wrong_site_secret_is_refused(tmp_path, site, ledger):
    site_dir, _ = site
    charge(ledger)
    other = init_keys(tmp_path / "other-site")
    with pytest.raises(LedgerError, match="modified or corrupted") as info:
        PrivacyLedger.open(site_dir, other.site_secret)
    assert info.value.kind == "modified"


def test_rollback_to_an_older_copy_is_detected(site, ledger):
    site_dir, _ = site
    charge(ledger, server_round=1)
    path, _ = _paths(site_dir)
    older = path.read_bytes()
    charge(ledger, server_round=2)
    charge(ledger, server_round=3)
    path.write_bytes(older)  # authentic, but older than the anchor
    _reopen_fails(site, "rolled-back", "older copy", "generation 1", "generation 3")


def test_deleting_the_ledger_file_or_directory_is_detected(site, ledger):
    site_dir, _ = site
    charge(ledger)
    path, _ = _paths(site_dir)
    path.unlink()
    _reopen_fails(site, "deleted", "was deleted")
    shutil.rmtree(path.parent)
    _reopen_fails(site, "deleted", "was deleted")


def test_deleting_the_anchor_is_detected(site, ledger):
    site_dir, _ = site
    charge(ledger)
    _, anchor = _paths(site_dir)
    anchor.unlink()
    _reopen_fails(site, "anchor-missing", "ledger-anchor")


def test_tampered_anchor_is_detected(site, ledger):
    site_dir, keys = site
    charge(ledger)
    _, anchor = _paths(site_dir)
    doc = json.loads(anchor.read_bytes())
    assert doc["generation"] == 1
    doc["generation"] = 0  # claims the ledger was never charged
    anchor.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    _reopen_fails(site, "modified", "anchor")


def test_unsupported_format_version_is_refused(site, ledger):
    site_dir, keys = site
    path, _ = _paths(site_dir)
    doc = json.loads(path.read_bytes())
    doc["version"] = 2
    path.write_bytes(_remac(doc, keys.site_secret))
    with pytest.raises(LedgerError, match="version 2") as info:
        PrivacyLedger.open(site_dir, keys.site_secret)
    assert info.value.kind == "unsupported"


def test_residual_risk_rolling_back_both_files_is_not_detectable(site, ledger):
    """Documented limit: an older ledger *with its own older anchor* reads as valid."""
    site_dir, keys = site
    charge(ledger, server_round=1)
    path, anchor = _paths(site_dir)
    saved = path.read_bytes(), anchor.read_bytes()
    charge(ledger, server_round=2)
    path.write_bytes(saved[0])
    anchor.write_bytes(saved[1])
    assert len(PrivacyLedger.open(site_dir, keys.site_secret).entries()) == 1


# --- atomicity ----------------------------------------------------------------------


def _temp_files(site_dir: Path) -> list[Path]:
    return [p for d in ("ledger", "keys") for p in (site_dir / d).iterdir() if ".tmp-" in p.name]


def test_no_temp_files_are_left(site, ledger):
    site_dir, _ = site
    for rnd in range(3):
        ledger.settle(charge(ledger, server_round=rnd), steps_done=100)
    assert _temp_files(site_dir) == []
    assert sorted(p.name for p in (site_dir / "ledger").iterdir()) == [".lock", "ledger.json"]


def test_a_crash_mid_write_leaves_the_previous_ledger(site, ledger, monkeypatch):
    site_dir, keys = site
    charge(ledger, server_round=1)
    path, anchor = _paths(site_dir)
    before = path.read_bytes(), anchor.read_bytes()
    # a write that died after its temp file: a stray temp file with partial content
    (path.parent / ".ledger.json.tmp-deadbeef").write_bytes(before[0][:40])
    (anchor.parent / ".ledger-anchor.tmp-deadbeef").write_bytes(b"{")
    reopened = PrivacyLedger.open(site_dir, keys.site_secret)
    assert len(reopened.entries()) == 1 and _temp_files(site_dir) == []

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)  # the rename never happens
    with pytest.raises(OSError, match="disk full"):
        charge(reopened, server_round=2)
    monkeypatch.undo()
    assert (path.read_bytes(), anchor.read_bytes()) == before and _temp_files(site_dir) == []
    assert len(PrivacyLedger.open(site_dir, keys.site_secret).entries()) == 1


def test_a_crash_between_ledger_and_anchor_writes_rolls_forward(site, ledger):
    site_dir, keys = site
    charge(ledger, server_round=1)
    path, anchor = _paths(site_dir)
    old_anchor = anchor.read_bytes()
    charge(ledger, server_round=2)
    anchor.write_bytes(old_anchor)  # as if killed after the ledger's rename, before the anchor's

    view = PrivacyLedger.open(site_dir, keys.site_secret, create=False)  # read-only: accepts, writes nothing
    assert len(view.entries()) == 2 and anchor.read_bytes() == old_anchor
    PrivacyLedger.open(site_dir, keys.site_secret)  # a writer rolls the anchor forward
    assert anchor.read_bytes() != old_anchor
    assert len(PrivacyLedger.open(site_dir, keys.site_secret).entries()) == 2


def test_read_only_open_of_a_fresh_site_writes_nothing(site):
    site_dir, keys = site
    view = PrivacyLedger.open(site_dir, keys.site_secret, create=False)
    assert view.entries() == [] and not (site_dir / "ledger").exists()
    assert not (site_dir / "keys" / "ledger-anchor").exists()
