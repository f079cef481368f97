"""DICOM PS3.15 Annex E de-identification (Basic Profile, edition 2023b).

Front door: ``Deidentifier``; configuration: ``DeidOptions`` and ``PixelCleanRule``.
The attribute table is generated from the standard by ``python -m client.deid.build_table``.
"""
from .options import DeidConfigError, DeidOptions, PixelCleanRule
from .profile import Deidentifier
from .result import DeidResult, QuarantineReason

__all__ = [
    "DeidConfigError",
    "DeidOptions",
    "DeidResult",
    "Deidentifier",
    "PixelCleanRule",
    "QuarantineReason",
]
