"""What one de-identification returns: the dataset, the patient key, a quarantine code."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import pydicom


class QuarantineReason(enum.StrEnum):
    """Why a dataset must not be admitted; short codes safe for reports and logs."""

    BURNED_IN_ANNOTATION = "burned-in-annotation"
    RECOGNIZABLE_FEATURES = "recognizable-features"
    ULTRASOUND = "ultrasound"
    SECONDARY_CAPTURE = "secondary-capture"
    PIXEL_CLEAN_FAILED = "pixel-clean-failed"
    DEID_FAILED = "deid-failed"


@dataclass(frozen=True)
class DeidResult:
    """Outcome of ``Deidentifier.__call__``.

    ``dataset`` is the header-de-identified copy; it is ``None`` only when
    de-identification itself failed (``quarantine == "deid-failed"``). A quarantined
    dataset still carries un-cleaned pixels: admit a result only when
    ``admissible`` is true. ``patient_key`` is an opaque keyed hex digest;
    ``date_shift_days`` is set only when dates were shifted.
    """

    dataset: pydicom.Dataset | None
    patient_key: str
    quarantine: QuarantineReason | None
    date_shift_days: int | None

    @property
    def admissible(self) -> bool:
        """True when the dataset may enter the site store."""
        return self.dataset is not None and self.quarantine is None
