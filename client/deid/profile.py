"""The Basic Application Level Confidentiality Profile (PS3.15 Annex E), applied at every depth.

Per element, in this order:

1. Group lengths, curves (50xx), overlays (60xx) and group 0002 in the body: removed.
2. Private elements: removed unless (creator, offset) is in
   ``DeidOptions.retain_safe_private``; a creator is kept while any of its block is.
3. Table E.1-1 attributes: the table's code under the options (see ``actions.py``).
4. Attributes the table does not list are kept, with these safety rules: PN and
   VR-unknown (UN) elements removed; DA/DT/TM removed (shifted/kept under the dates
   option); UI values remapped unless well-known or a class/coding-scheme UID; in a
   sequence the table says to dummy (D), other text values get dummies; in a
   sequence the clean option applies to (C), other text values are cleaned.

Sequences are processed item by item, recursively; a D or C sequence passes its
mode down to nested sequences.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings

import pydicom

from . import burned_in, clean, marking, patient
from .options import DeidConfigError, DeidOptions, PixelCleanRule
from .result import DeidResult, QuarantineReason
from .table import load_table
from .uids import UidMapper
from .walk import Mode, Walk

_log = logging.getLogger(__name__)
MIN_SECRET_BYTES = 16


@contextlib.contextmanager
def quiet_pydicom():
    """Silence pydicom's warnings and log records, which can quote element values."""
    pydicom_log = logging.getLogger("pydicom")
    was_disabled = pydicom_log.disabled
    pydicom_log.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_log.disabled = was_disabled


class Deidentifier:
    """Apply the Basic Profile with the chosen options; quarantine burned-in risks.

    Call it with a dataset; it works on a deep copy and returns a ``DeidResult``
    (``in_place=True``: on the dataset itself, for a caller that no longer needs the
    original, e.g. ingest, which reads each file once; saves the copy's time).
    It never raises for a dataset's content and never logs header values: a
    failure returns ``quarantine="deid-failed"`` and logs only the exception type;
    pydicom's own warnings (which can quote values) are silenced during the call.
    """

    def __init__(
        self,
        *,
        site_secret: bytes,
        options: DeidOptions = DeidOptions(),
        pixel_clean_rules: tuple[PixelCleanRule, ...] = (),
    ) -> None:
        problems = []
        if not isinstance(site_secret, (bytes, bytearray)) or len(site_secret) < MIN_SECRET_BYTES:
            problems.append(
                f"site_secret must be bytes of at least {MIN_SECRET_BYTES} bytes "
                "(create one with `fedrad-site keys init`)"
            )
        if not isinstance(options, DeidOptions):
            problems.append("options must be a DeidOptions")
        if not all(isinstance(rule, PixelCleanRule) for rule in pixel_clean_rules):
            problems.append("pixel_clean_rules must hold PixelCleanRule values")
        if problems:
            raise DeidConfigError("invalid Deidentifier settings: " + "; ".join(problems))
        self._secret = bytes(site_secret)
        self._options = options
        self._rules = tuple(pixel_clean_rules)
        self._table = load_table()
        self._remap = UidMapper(self._secret)
        self._ops: dict = {}  # the walks' operation for each (tag, VR, mode) seen

    @property
    def options(self) -> DeidOptions:
        return self._options

    def map_uid(self, uid: str) -> str:
        """The keyed replacement this site uses for ``uid`` (well-known UIDs unchanged)."""
        return self._remap(uid)

    def __call__(self, ds: pydicom.Dataset, *, in_place: bool = False) -> DeidResult:
        key = ""
        try:
            with quiet_pydicom():
                work = ds if in_place else copy.deepcopy(ds)
                ident = patient.identity(work)
                key = patient.patient_key(self._secret, ident)
                return self._deidentify(work, ident, key)
        except Exception as exc:  # never let a header value escape in a traceback
            _log.warning("de-identification failed (%s); dataset quarantined", type(exc).__name__)
            return DeidResult(None, key, QuarantineReason.DEID_FAILED, None)

    def _deidentify(self, work: pydicom.Dataset, ident: str, key: str) -> DeidResult:
        risk = burned_in.assess(work)
        rule = burned_in.matching_rule(work, self._rules)
        cleaned = False
        if rule is not None and risk is not QuarantineReason.RECOGNIZABLE_FEATURES:
            try:
                burned_in.blank(work, rule)
                cleaned, risk = True, None
            except Exception as exc:
                _log.warning("pixel clean failed (%s); dataset quarantined", type(exc).__name__)
                risk = QuarantineReason.PIXEL_CLEAN_FAILED
        shift = None
        if self._options.retain_longitudinal_modified_dates:
            shift = patient.date_shift_days(self._secret, ident)
        identifying = None
        if self._options.clean_descriptors or self._options.retain_patient_characteristics:
            identifying = clean.collect(work, self._table)
        original_meta = getattr(work, "file_meta", None)
        Walk(self._table, self._options, self._remap, shift, identifying, self._ops).dataset(work, Mode.NORMAL)
        marking.mark(work, self._options, self._table.edition, cleaned)
        work.file_meta = marking.file_meta(work, original_meta, self._remap)
        marking.scrub_container(work)
        if risk is not None:
            _log.info("dataset quarantined: %s", risk.value)
        return DeidResult(work, key, risk, shift)
