"""The Annex E attribute table (generated ``annex_e_2023b.json``), indexed by tag."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TABLE_PATH = Path(__file__).with_name("annex_e_2023b.json")


@dataclass(frozen=True)
class Entry:
    """One Table E.1-1 row: the Basic Profile code and the option codes we use."""

    name: str
    tag: str
    basic: str
    retain_patient_characteristics: str | None
    retain_long_modified_dates: str | None
    clean_descriptors: str | None


@dataclass(frozen=True)
class ProfileTable:
    """Exact-tag entries plus the masked ones such as (50xx,xxxx) and (60xx,3000)."""

    edition: str
    exact: dict[int, Entry]
    masked: tuple[tuple[int, int, Entry], ...]  # (mask, value, entry)

    def lookup(self, tag: int) -> Entry | None:
        """The entry for a public tag, or ``None`` when the table does not list it."""
        entry = self.exact.get(tag)
        if entry is not None:
            return entry
        for mask, value, masked_entry in self.masked:
            if tag & mask == value:
                return masked_entry
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.masked)


def _entry(row: dict) -> Entry:
    return Entry(
        name=row["name"],
        tag=row["tag"],
        basic=row["basic"],
        retain_patient_characteristics=row["retain_patient_characteristics"],
        retain_long_modified_dates=row["retain_long_modified_dates"],
        clean_descriptors=row["clean_descriptors"],
    )


def _mask(pattern: str) -> tuple[int, int]:
    mask = int("".join("0" if c == "x" else "F" for c in pattern), 16)
    value = int(pattern.replace("x", "0"), 16)
    return mask, value


@lru_cache(maxsize=1)
def load_table(path: Path = TABLE_PATH) -> ProfileTable:
    """Load and index the generated table (private rows are handled by the engine)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    exact: dict[int, Entry] = {}
    masked: list[tuple[int, int, Entry]] = []
    for row in document["attributes"]:
        if row["private"]:
            continue
        if "x" in row["pattern"]:
            masked.append((*_mask(row["pattern"]), _entry(row)))
        else:
            exact[int(row["pattern"], 16)] = _entry(row)
    return ProfileTable(edition=document["edition"], exact=exact, masked=tuple(masked))
