"""The site's labels CSV: original SOPInstanceUID -> finding (0 or 1).

Errors name the row number and the rule, never the identifier in that row.
"""
from __future__ import annotations

import csv
from pathlib import Path

UID_COLUMN = "SOPInstanceUID"
LABEL_COLUMN = "finding"


class LabelsError(ValueError):
    """The labels CSV cannot be used; the message says what to fix."""


def read_labels(path: Path) -> dict[str, int]:
    """Map each original SOPInstanceUID to its finding label."""
    if not path.is_file():
        raise LabelsError("labels file not found: pass --labels with the path of the site's labels CSV")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {UID_COLUMN, LABEL_COLUMN} - set(reader.fieldnames or ())
        if missing:
            raise LabelsError(
                f"the labels CSV lacks the column(s) {', '.join(sorted(missing))}: its header must be "
                f"'{UID_COLUMN},{LABEL_COLUMN}'"
            )
        labels: dict[str, int] = {}
        for row_number, row in enumerate(reader, start=2):
            uid, value = (row[UID_COLUMN] or "").strip(), (row[LABEL_COLUMN] or "").strip()
            if not uid:
                raise LabelsError(f"row {row_number} of the labels CSV has an empty {UID_COLUMN}: fill it or drop the row")
            if value not in ("0", "1"):
                raise LabelsError(f"row {row_number} of the labels CSV has a {LABEL_COLUMN} that is not 0 or 1: use 1 for a finding, 0 for none")
            if uid in labels and labels[uid] != int(value):
                raise LabelsError(f"row {row_number} of the labels CSV repeats an image with a different label: keep one row per image")
            labels[uid] = int(value)
    if not labels:
        raise LabelsError("the labels CSV has no rows: add one row per image")
    return labels
