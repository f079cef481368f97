"""The `fedrad-site` commands a site operator types, on real synthetic DICOM."""
import json

import pydicom
from typer.testing import CliRunner

from client.cli import app

runner = CliRunner()


def _ok(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_synth_keys_ingest_info_verify_export(tmp_path):
    _ok("synth", "--sites", 2, "--out", tmp_path / "hospitals", "--seed", 5, "--patients", 6)
    export = tmp_path / "hospitals" / "site-000"
    site = tmp_path / "site"
    _ok("keys", "init", "--site-dir", site)
    assert (site / "keys" / "kek").stat().st_mode & 0o777 == 0o600
    output = _ok("ingest", "--site-dir", site, "--dicom", export / "dicom", "--labels", export / "labels.csv")
    images = sum(1 for _ in (export / "dicom").rglob("*.dcm"))
    assert f"ingested {images}" in output
    info = json.loads(_ok("store", "info", "--site-dir", site))
    assert json.dumps(info).count(str(images)) >= 1
    assert "every object authenticates" in _ok("store", "verify", "--site-dir", site)
    _ok("store", "export", "--site-dir", site, "--out", tmp_path / "audit")
    exported = sorted((tmp_path / "audit").rglob("*"))
    assert len([p for p in exported if p.is_file()]) == images
    original_ids = {str(pydicom.dcmread(p).PatientID) for p in (export / "dicom").rglob("*.dcm")}
    for path in (p for p in exported if p.is_file()):
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES" and str(ds.PatientID) not in original_ids


def test_wrong_inputs_give_one_clear_error(tmp_path):
    result = runner.invoke(app, ["ingest", "--site-dir", str(tmp_path / "nosite"), "--dicom", str(tmp_path),
                                 "--labels", str(tmp_path / "labels.csv")])
    assert result.exit_code == 2 and "keys init" in result.output
    _ok("keys", "init", "--site-dir", tmp_path / "site")
    result = runner.invoke(app, ["keys", "init", "--site-dir", str(tmp_path / "site")])
    assert result.exit_code == 2 and "error" in result.output
