from pathlib import Path

import pytest

from common.synth import write_hospital


@pytest.fixture(scope="session")
def small_export(tmp_path_factory) -> Path:
    """A small synthetic hospital export (DICOM folder + labels.csv), written once."""
    out = tmp_path_factory.mktemp("export") / "site"
    write_hospital(out, site_index=1, seed=11, patients=12)
    return out
