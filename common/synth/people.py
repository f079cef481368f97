"""Fake but realistic-looking identities: patients, staff, institutions, IDs and dates.

Names are random combinations of common given names and surnames; institutions and
addresses are made up. Dates count back from a fixed base date, never from the clock.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from common.synth.seeding import rng_for

BASE_DATE = dt.date(2024, 6, 28)
HISTORY_DAYS = 3 * 365

FEMALE_NAMES = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
    "Karen", "Nancy", "Lisa", "Margaret", "Sandra", "Ashley", "Emily", "Donna", "Michelle", "Carol",
    "Amanda", "Melissa", "Deborah", "Laura", "Rebecca", "Sharon", "Cynthia", "Kathleen", "Helen",
    "Anna", "Ingrid", "Sofia", "Maria", "Aisha", "Mei", "Priya", "Fatima", "Elena", "Hannah",
)
MALE_NAMES = (
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
    "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul", "Andrew",
    "Joshua", "Kenneth", "Kevin", "Brian", "George", "Edward", "Ronald", "Timothy", "Jason",
    "Lars", "Pieter", "Luca", "Ahmed", "Wei", "Rahul", "Omar", "Mateo", "Jonas", "Henrik",
)
SURNAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Wilson", "Anderson", "Taylor", "Moore", "Jackson", "Martin",
    "Lee", "Thompson", "White", "Harris", "Clark", "Lewis", "Robinson", "Walker", "Young", "Allen",
    "King", "Wright", "Scott", "Green", "Baker", "Adams", "Nelson", "Hill", "Campbell", "Mitchell",
    "Carter", "Roberts", "Jansen", "de Vries", "Bakker", "Schmidt", "Muller", "Rossi", "Bianchi",
    "Novak", "Kowalski", "Nielsen", "Larsen", "Okafor", "Haddad", "Chen", "Wang", "Patel", "Singh",
    "Kim", "Nguyen", "Tanaka", "Sato", "O'Brien", "MacLeod", "Fischer", "Weber", "Silva", "Costa",
)
PLACES = (
    "Ashford", "Brookvale", "Cedar Falls", "Dunmore", "Eastbridge", "Fairhaven", "Glenwood",
    "Harrowgate", "Ironbridge", "Juniper Hill", "Kingsmere", "Lakeview", "Millbrook", "Northfield",
    "Oakridge", "Pinecrest", "Queensbury", "Riverside", "Stonehaven", "Thornbury", "Upton Vale",
    "Westmoor", "Willowdale", "Yarrow Bay",
)
INSTITUTION_KINDS = (
    "General Hospital", "Medical Center", "University Hospital", "Regional Hospital",
    "Community Hospital", "Memorial Hospital", "Clinic", "Teaching Hospital",
)
STREETS = ("Elm", "Maple", "Oak", "Church", "Station", "Mill", "High", "Park", "Hospital", "Victoria", "Lake")
STREET_KINDS = ("Street", "Road", "Avenue", "Lane", "Boulevard", "Way")
DEPARTMENTS = ("Radiology", "Diagnostic Imaging", "Medical Imaging", "Radiology Dept")


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def person_name(rng: np.random.Generator, *, female: bool, prefix: str = "") -> str:
    """A DICOM PN value `Family^Given^Middle^Prefix`."""
    given = _pick(rng, FEMALE_NAMES if female else MALE_NAMES)
    middle = chr(ord("A") + int(rng.integers(26))) if rng.random() < 0.5 else ""
    parts = [_pick(rng, SURNAMES), given, middle, prefix]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts)


@dataclass(frozen=True)
class SiteIdentity:
    """A hospital's identifying constants: names, places, devices, ID formats."""

    code: str
    institution: str
    address: str
    department: str
    station: str
    device_serial: str
    patient_id_prefix: str
    issuer: str
    other_issuer: str
    id_offset: int
    referring_physicians: tuple[str, ...]
    operators: tuple[str, ...]


def sample_identity(*, seed: int, site_index: int) -> SiteIdentity:
    rng = rng_for(seed, site_index, "identity")
    place = _pick(rng, PLACES)
    institution = f"{place} {_pick(rng, INSTITUTION_KINDS)}"
    code = "".join(word[0] for word in institution.split()).upper() + f"{int(rng.integers(10, 100))}"
    postcode = f"{int(rng.integers(10000, 99999))}"
    address = f"{int(rng.integers(1, 900))} {_pick(rng, STREETS)} {_pick(rng, STREET_KINDS)}, {place}, {postcode}"
    return SiteIdentity(
        code=code,
        institution=institution,
        address=address,
        department=_pick(rng, DEPARTMENTS),
        station=f"{code[:3]}XR{int(rng.integers(1, 9))}",
        device_serial=f"{int(rng.integers(10**6, 10**7))}",
        patient_id_prefix=_pick(rng, ("MRN", "P", "H", "")),
        issuer=f"{code[:3]}_MRN",
        other_issuer=f"REGION{int(rng.integers(1, 20))}_EPI",
        id_offset=int(rng.integers(9_000_000)),
        referring_physicians=tuple(
            person_name(rng, female=rng.random() < 0.5, prefix="Dr") for _ in range(6)
        ),
        operators=tuple(person_name(rng, female=rng.random() < 0.6) for _ in range(5)),
    )


@dataclass(frozen=True)
class Patient:
    """A fake patient of one site."""

    index: int
    name: str
    patient_id: str
    other_id: str
    birth_date: dt.date
    sex: str
    study_dates: tuple[dt.date, ...]

    @property
    def female(self) -> bool:
        return self.sex == "F"


def sample_patient(
    rng: np.random.Generator,
    identity: SiteIdentity,
    *,
    index: int,
    female: bool,
    age: float,
    studies: int,
) -> Patient:
    """A patient of age `age` at their first of `studies` study dates."""
    gaps = [int(rng.integers(14, 300)) for _ in range(studies - 1)]
    offset = int(rng.integers(sum(gaps) + 1, HISTORY_DAYS))
    dates = [BASE_DATE - dt.timedelta(days=offset)]
    for gap in gaps:
        dates.append(dates[-1] + dt.timedelta(days=gap))
    birth = dates[0] - dt.timedelta(days=int(age * 365.25) + int(rng.integers(0, 365)))
    number = 1_000_000 + (identity.id_offset + index * 104_729) % 9_000_000  # unique per index
    return Patient(
        index=index,
        name=person_name(rng, female=female),
        patient_id=f"{identity.patient_id_prefix}{number:07d}",
        other_id=f"{int(rng.integers(10**8, 10**9))}",
        birth_date=birth,
        sex="F" if female else "M",
        study_dates=tuple(dates),
    )


def age_string(birth: dt.date, on: dt.date) -> str:
    """DICOM AS value (e.g. '054Y') of someone born on `birth`, on date `on`."""
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{max(years, 0):03d}Y"


def dicom_date(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def dicom_time(seconds: float) -> str:
    """A DICOM TM value for `seconds` after midnight."""
    whole = int(seconds)
    return f"{whole // 3600:02d}{whole % 3600 // 60:02d}{whole % 60:02d}.{int((seconds - whole) * 1e6):06d}"
