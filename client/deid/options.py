"""Typed configuration for de-identification: profile options and pixel-clean rules."""
from __future__ import annotations

from dataclasses import dataclass


class DeidConfigError(ValueError):
    """A de-identification setting breaks a rule; the message names the setting and the fix."""


@dataclass(frozen=True)
class DeidOptions:
    """PS3.15 Annex E options on top of the Basic Application Confidentiality Profile.

    - ``retain_longitudinal_modified_dates``: DA and DT values (and the date part of
      DT) are shifted by one keyed whole-day offset per patient; TM values are kept
      (a whole-day shift leaves the time of day unchanged).
    - ``retain_patient_characteristics``: the option column's K attributes are kept,
      its C attributes are cleaned like descriptors.
    - ``clean_descriptors``: the option column's C attributes are kept only when the
      conservative check in ``clean.py`` finds no identifying token; otherwise the
      Basic Profile action applies.
    - ``retain_safe_private``: allowlist of (private creator, element offset 0x00-0xFF);
      every other private element is removed.
    """

    retain_longitudinal_modified_dates: bool = False
    retain_patient_characteristics: bool = False
    clean_descriptors: bool = False
    retain_safe_private: frozenset[tuple[str, int]] = frozenset()

    def __post_init__(self) -> None:
        problems = []
        for flag in ("retain_longitudinal_modified_dates", "retain_patient_characteristics", "clean_descriptors"):
            if not isinstance(getattr(self, flag), bool):
                problems.append(f"{flag} must be a bool")
        if not isinstance(self.retain_safe_private, frozenset):
            problems.append("retain_safe_private must be a frozenset of (creator, offset) pairs")
        else:
            for item in self.retain_safe_private:
                ok = (
                    isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                    and item[0].strip() and isinstance(item[1], int) and 0 <= item[1] <= 0xFF
                )
                if not ok:
                    problems.append(
                        "retain_safe_private entries must be (non-empty creator str, offset int 0x00-0xFF)"
                    )
                    break
        if problems:
            raise DeidConfigError("invalid DeidOptions: " + "; ".join(problems))


@dataclass(frozen=True)
class PixelCleanRule:
    """Blank fixed regions for one device and image size.

    ``regions`` are ``(row0, col0, row1, col1)`` rectangles, end-exclusive like numpy
    slices, applied to every frame and every sample. Manufacturer and model match
    the header values exactly after stripping surrounding spaces.
    """

    manufacturer: str
    model: str
    rows: int
    columns: int
    regions: tuple[tuple[int, int, int, int], ...]

    def __post_init__(self) -> None:
        problems = []
        if not self.manufacturer.strip() or not self.model.strip():
            problems.append("manufacturer and model must be non-empty")
        if self.rows <= 0 or self.columns <= 0:
            problems.append("rows and columns must be positive")
        if not self.regions:
            problems.append("regions must list at least one rectangle")
        for region in self.regions:
            if len(region) != 4:
                problems.append("each region must be (row0, col0, row1, col1)")
                continue
            r0, c0, r1, c1 = region
            if not (0 <= r0 < r1 <= self.rows and 0 <= c0 < c1 <= self.columns):
                problems.append(
                    "each region needs 0 <= row0 < row1 <= rows and 0 <= col0 < col1 <= columns"
                )
        if problems:
            raise DeidConfigError("invalid PixelCleanRule: " + "; ".join(sorted(set(problems))))
