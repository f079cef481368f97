"""No identifying value leaves the original files: the whole site, end to end.

Real files (a synthetic hospital, a few derived images that make multi-file studies with
references, and every readable file of pydicom's test corpus, pydicom-data included) go
through the site operator's commands (`fedrad-site keys init`, `ingest`, `store verify`,
`store info`, `store export`, run with typer's CliRunner and every logger captured at
DEBUG). Then no identifying value of any original file may appear in any byte of any
file under the site directory, in any decrypted store object (manifest included), in
the exported DICOM, in the logs, stdout or stderr, or in any file or directory name.

Identifying values (:func:`collect_values`) are read from the original bytes at every
depth (file meta, sequences, private blocks): person names (whole and per component),
the text of Table E.1-1 attributes the profile removes or replaces and no option keeps
(PatientID, OtherPatientIDs, AccessionNumber, StudyID, InstitutionName, StationName,
DeviceSerialNumber, ...), every DA/DT/TM, every UID except DICOM's own (1.2.840.10008.)
and class / coding-scheme UIDs, file meta text (implementation version, AE titles), and
every private value (text; binary when >= 16 bytes of more than one byte value).

Only values of at least MIN_VALUE_LEN = 6 bytes that occur verbatim in the original
file's bytes are kept: a value absent from the original bytes (deflated, or re-encoded
by pydicom) could never be found, so searching for it proves nothing; and a short value
("1", "20", "CHEST", "0.5") occurs by chance in other attributes, in pixel data and in
ciphertext, so searching for it fails for the wrong reason. Six bytes is the shortest
length that keeps every full date (8), time with seconds (6), UID, name and ID of the
test data while the chance that one value matches one position of random bytes is
2**-48. A value made of digits only is searched as a whole number (no hex digit right
before or after it): fedrad writes random 2.25 UIDs (39 decimal digits) and random hex
ids, which contain any given 6-digit string by chance. (So a number that the original
stores right before a tag of group 0x0030-0x0039 is not searched: its next byte is a digit.)

Exempt (counted, not searched): values the profile keeps on purpose anywhere in the
data (attributes Table E.1-1 does not list, class UIDs, allowlisted private elements)
and fedrad's dummies, since they are not identifying; and values that fedrad's own
site code contains (``client/``: "patient", "operator", ...), since fedrad writes those
words whatever the input.

Also here, on the same kind of real files: remapped UIDs keep multi-file studies, series
and references together; the dates option (set in policy.toml) shifts each patient's
dates by one constant and keeps intervals; originals are never modified; a wrong key is
one clear error that changes nothing; an invalid [deid] policy is one error naming each
setting; an ingest killed with SIGKILL resumes without duplicates and collects orphans.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from typer.testing import CliRunner

from client.cli import app
from client.deid import Deidentifier
from client.deid.actions import DUMMY_BY_VR
from client.deid.table import load_table
from client.deid.uids import CLASS_UID_TAGS, WELL_KNOWN_ROOT
from client.ingest import COMMIT_EVERY, ingest
from client.keys import init_keys, load_keys
from client.store import SiteStore, StoreError
from client.store import envelope
from client.store.files import TEMP_PREFIX
from common.pixels import ImageRefused, load_dataset
from common.synth import write_hospital
from common.synth.profiles import sample_profile

REPO = Path(__file__).resolve().parents[2]
MIN_VALUE_LEN = 6  # see the module docstring
MIN_BINARY_LEN = 16  # shorter private binaries (counts, flags, small arrays) recur by chance
TEXT_VRS = frozenset({"AE", "AS", "CS", "DS", "IS", "LO", "LT", "SH", "ST", "UC", "UT", "UR"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "US", "SS", "UL", "SL", "FL", "FD",
                        "AT", "UV", "SV", "US or SS", "US or OW", "US or SS or OW", "OB or OW"})
_TABLE = load_table()


def _identifying_tags() -> frozenset[int]:
    """Text attributes of Table E.1-1 that the profile removes or replaces and that no
    option keeps (no code in the patient-characteristics or clean-descriptors columns)."""
    tags = set()
    for tag, entry in _TABLE.exact.items():
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr in TEXT_VRS and entry.basic != "K" and not entry.retain_patient_characteristics \
                and not entry.clean_descriptors:
            tags.add(tag)
    return frozenset(tags)


IDENTIFYING_TAGS = _identifying_tags()
SYNTH_SEED, SYNTH_SITE, SYNTH_PATIENTS = 1, 0, 15
PASSPHRASE = "correct horse battery staple"


# --- the collector ----------------------------------------------------------------------


@dataclass
class Collected:
    """Identifying values of a set of files, and the values the profile keeps on purpose."""

    values: set[bytes] = field(default_factory=set)
    kept: set[bytes] = field(default_factory=set)
    per_file: dict[Path, set[bytes]] = field(default_factory=dict)
    dates: dict[Path, set[bytes]] = field(default_factory=dict)  # DA/DT/TM values, per file
    unreadable: list[Path] = field(default_factory=list)

    def exempt(self) -> set[bytes]:
        """Collected values that are fedrad's dummies or vocabulary, or sit inside a kept value."""
        kept = b"\x00".join(self.kept)
        dummies = b"\x00".join(str(v).encode() for v in DUMMY_BY_VR.values())
        return {v for v in self.values if v in kept or v in dummies or v in fedrad_vocabulary()}

    def searchable(self) -> set[bytes]:
        return self.values - self.exempt()


@functools.lru_cache(maxsize=1)
def fedrad_vocabulary() -> bytes:
    """The text of fedrad's site code (client/): words fedrad writes whatever the input."""
    return b"\x00".join(p.read_bytes() for p in sorted((REPO / "client").rglob("*"))
                        if p.suffix in (".py", ".json", ".md"))


def _vr_of(raw, tag: int) -> str:
    if getattr(raw, "VR", None):
        return raw.VR
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _raw_value(raw) -> bytes | None:
    value = raw.value
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (list, tuple, MultiValue)):
        return b"\\".join(str(v).encode("utf-8", "replace") for v in value)
    return str(value).encode("utf-8", "replace")


def _texty(value: bytes) -> bool:
    body = value.rstrip(b"\x00 ")
    return bool(body) and all(32 <= c < 127 for c in body)


def _parts(value: bytes, *, person: bool = False) -> set[bytes]:
    out = set()
    for part in value.split(b"\\"):
        part = part.strip(b" \x00")
        out.add(part)
        if person:
            out.update(c.strip(b" \x00") for c in part.replace(b"=", b"^").split(b"^"))
    return {p for p in out if len(p) >= MIN_VALUE_LEN}


def _binary(value: bytes) -> set[bytes]:
    return {value} if len(value) >= MIN_BINARY_LEN and len(set(value)) > 1 else set()


def _private_keep(ds: Dataset, allow: frozenset[tuple[str, int]]) -> set[int]:
    """Private tags (creators included) that an allowlist keeps, as client.deid does."""
    if not allow:
        return set()
    creators = {}
    for tag in ds.keys():
        t = int(tag)
        if t >> 16 & 1 and 0x0010 <= t & 0xFFFF <= 0x00FF:
            try:
                creators[t] = str(ds[tag].value or "").strip()
            except Exception:  # noqa: BLE001 - an undecodable creator keeps nothing
                continue
    keep = set()
    for tag in ds.keys():
        t = int(tag)
        if t >> 16 & 1 and t & 0xFFFF >= 0x1000:
            creator = (t & 0xFFFF0000) | (t & 0xFF00) >> 8
            if (creators.get(creator), t & 0xFF) in allow:
                keep.update((t, creator))
    return keep


def _walk(ds: Dataset, found: set[bytes], kept: set[bytes], dates: set[bytes], *, private: bool,
          allow: frozenset[tuple[str, int]], meta: bool = False) -> None:
    keep_private = _private_keep(ds, allow)
    for tag in list(ds.keys()):
        t = int(tag)
        raw = ds.get_item(tag)
        vr = _vr_of(raw, t)
        is_private = private or bool(t >> 16 & 1)
        allowed = t in keep_private
        try:
            elem = ds[tag]
        except Exception:  # noqa: BLE001 - pydicom cannot decode it: use the raw bytes
            elem = None
        if elem is not None and elem.VR == "SQ":
            for item in elem.value or ():
                _walk(item, found, kept, dates, private=is_private, allow=allow)
            continue
        value = _raw_value(raw) if isinstance(raw, RawDataElement) else _raw_value(elem or raw)
        if not value:
            continue
        if allowed:
            kept.update(_parts(value))
            continue
        if is_private:
            found.update(_parts(value) if vr in TEXT_VRS or vr in ("PN", "DA", "DT", "TM", "UI")
                         or _texty(value) else _binary(value))
        elif vr == "PN":
            found.update(_parts(value, person=True))
        elif vr in ("DA", "DT", "TM"):
            found.update(_parts(value))
            dates.update(_parts(value))
        elif vr == "UI":
            uids = _parts(value)
            if t in CLASS_UID_TAGS:
                kept.update(uids)
            else:
                found.update(u for u in uids if not u.startswith(WELL_KNOWN_ROOT.encode()))
        elif meta:
            if vr in TEXT_VRS:
                found.update(_parts(value))
        elif vr in TEXT_VRS:
            if t in IDENTIFYING_TAGS:
                found.update(_parts(value))
            elif _TABLE.lookup(t) is None:
                kept.update(_parts(value))


def collect_values(paths: Iterable[Path], *,
                   retain_safe_private: frozenset[tuple[str, int]] = frozenset()) -> Collected:
    """Identifying values of each readable file that occur in its bytes (>= MIN_VALUE_LEN)."""
    out = Collected()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            data = Path(path).read_bytes()
            try:
                ds = pydicom.dcmread(io.BytesIO(data), force=True)
                found: set[bytes] = set()
                dates: set[bytes] = set()
                _walk(ds.file_meta, found, out.kept, dates, private=False, allow=frozenset(), meta=True)
                _walk(ds, found, out.kept, dates, private=False, allow=retain_safe_private)
            except Exception:  # noqa: BLE001 - not readable even with force: nothing to collect
                out.unreadable.append(Path(path))
                continue
            found = ValueSearch(found).find(data)  # what the search can find in the original
            out.per_file[Path(path)] = found
            out.dates[Path(path)] = {v for v in dates if v in found}
            out.values |= found
    return out


# --- the search -------------------------------------------------------------------------


_HEX = frozenset(bytes([c]) for c in b"0123456789abcdefABCDEF")


class ValueSearch:
    """Find any of many byte strings in large blobs. Each value is indexed by its 6-byte
    window with the most distinct bytes (never a run of zeros or spaces); the first 4
    bytes of every position of a blob go through a 2**24-bit filter at once (numpy, as
    four aligned uint32 views), and the few candidates are verified in full."""

    WINDOW = MIN_VALUE_LEN
    CHUNK = 1 << 24

    def __init__(self, values: Iterable[bytes]) -> None:
        self.values = {v for v in values if len(v) >= self.WINDOW}
        self._numbers = {v for v in self.values if v.isdigit()}
        self._by_key: dict[bytes, list[tuple[int, bytes]]] = defaultdict(list)
        for value in self.values:
            offset = max(range(len(value) - self.WINDOW + 1),
                         key=lambda i: (len(set(value[i:i + self.WINDOW])), -i))
            self._by_key[value[offset:offset + self.WINDOW]].append((offset, value))
        self._filter = np.zeros(1 << 24, dtype=bool)
        if self._by_key:
            heads = np.frombuffer(b"".join(k[:4] for k in self._by_key), dtype="<u4")
            self._filter[self._hash(heads)] = True

    @staticmethod
    def _hash(words: np.ndarray) -> np.ndarray:
        return (words * np.uint32(0x9E3779B1)) >> np.uint32(8)

    def find(self, data: bytes) -> set[bytes]:
        """The values that occur in ``data``."""
        found: set[bytes] = set()
        if len(data) < self.WINDOW or not self.values:
            return found
        for start in range(0, len(data) - self.WINDOW + 1, self.CHUNK):
            stop = min(len(data), start + self.CHUNK + self.WINDOW - 1)
            for align in range(4):
                count = (stop - start - align - self.WINDOW) // 4 + 1
                if count <= 0:
                    continue
                words = np.frombuffer(data, dtype="<u4", count=count, offset=start + align)
                for index in np.flatnonzero(self._filter[self._hash(words)]):
                    pos = start + align + 4 * int(index)
                    for offset, value in self._by_key.get(data[pos:pos + self.WINDOW], ()):
                        begin, end = pos - offset, pos - offset + len(value)
                        if begin < 0 or data[begin:end] != value:
                            continue
                        if value in self._numbers and (data[begin - 1:begin] in _HEX or data[end:end + 1] in _HEX):
                            continue  # part of a longer number or hex id, not this number
                        found.add(value)
        return found


def leaks_in(search: ValueSearch, blobs: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """(where, value) for every value found in every (where, blob)."""
    return [(where, value) for where, data in blobs for value in sorted(search.find(data))]


def tree_blobs(root: Path, label: str) -> Iterator[tuple[str, bytes]]:
    """Every file's bytes under ``root`` and every file and directory name (relative)."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        yield f"{label} name {rel}", str(rel).encode()
        if path.is_file():
            yield f"{label} file {rel}", path.read_bytes()


def decrypted_blobs(site: Path, keys) -> Iterator[tuple[str, bytes]]:
    """The manifest and every store object, decrypted; then the records' fields."""
    store_dir = site / "store"
    yield "decrypted manifest", bytes(envelope.unseal(
        (store_dir / "manifest").read_bytes(), kek=keys.kek, key_id=keys.key_id, site_id=keys.site_id,
        object_id="manifest"))
    for path in sorted((store_dir / "objects").iterdir()):
        yield f"decrypted object {path.name}", bytes(envelope.unseal(
            path.read_bytes(), kek=keys.kek, key_id=keys.key_id, site_id=keys.site_id, object_id=path.name))
    store = SiteStore.open(site, keys)
    for record in store.records():
        fields = [record.image_id, record.patient_key, str(record.split)] + [str(v) for v in record.meta.values()]
        yield f"record {record.image_id}", "\x00".join(fields).encode()
        yield f"tensor {record.image_id}", store.read_tensor(record.image_id).tobytes()


# --- running the site -------------------------------------------------------------------


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Every logger at DEBUG, and every warning, into one buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s %(args)s"))
    root = logging.getLogger()
    loggers = [root] + [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        if lg is not root and not lg.propagate:
            lg.addHandler(handler)
    root.addHandler(handler)
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            yield stream
    finally:
        logging.captureWarnings(False)
        for lg, level in saved:
            lg.setLevel(level)
            lg.removeHandler(handler)


class Site:
    """`fedrad-site` through typer's CliRunner; every output kept for the leak search."""

    def __init__(self, site_dir: Path, env: dict[str, str] | None = None) -> None:
        self.dir, self.env, self.outputs = site_dir, env or {}, []
        self.runner = CliRunner()

    def run(self, *args, ok: bool = True, env: dict[str, str] | None = None):
        result = self.runner.invoke(app, [str(a) for a in args], env={**self.env, **(env or {})})
        self.outputs.append((f"output of {args[0]} {args[1] if len(args) > 1 else ''}",
                             (result.output + result.stdout + result.stderr).encode()))
        if ok:
            assert result.exit_code == 0, result.output + repr(result.exception)
        return result


def write_labels(paths: Iterable[Path], out: Path) -> int:
    """labels.csv for every file ingest can read that has a SOPInstanceUID; returns the rows."""
    seen: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            try:
                uid = str(load_dataset(Path(path).read_bytes()).get("SOPInstanceUID", "") or "")
            except (ImageRefused, Exception):  # noqa: BLE001 - ingest rejects it, no label needed
                continue
            if uid and uid not in seen:
                seen[uid] = len(seen) % 2
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["SOPInstanceUID", "finding"])
        writer.writerows(seen.items())
    return len(seen)


def derive_images(source: Path, out: Path, extra_per_study: int = 2) -> list[Path]:
    """Make multi-file studies from a synthetic hospital: for its first studies, more
    images of the same study (one in the same series, one in a new series) that
    reference the first image; returns the new files."""
    written = []
    studies = sorted((source / "dicom").iterdir())[:4]
    for n, study in enumerate(studies):
        first = pydicom.dcmread(study / "IMG00001.dcm")
        for k in range(extra_per_study):
            ds = pydicom.dcmread(study / "IMG00001.dcm")
            base = f"2.25.{int.from_bytes(hashlib.sha256(f'derived|{n}|{k}'.encode()).digest()[:15], 'big')}"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = base + ".1"
            ds.InstanceNumber = str(2 + k)
            if k == 1:
                ds.SeriesInstanceUID = base + ".2"
                ds.SeriesNumber = "2"
            ref = Dataset()
            ref.ReferencedSOPClassUID = first.SOPClassUID
            ref.ReferencedSOPInstanceUID = first.SOPInstanceUID
            ds.ReferencedImageSequence = Sequence([ref])
            src = Dataset()
            src.ReferencedSOPClassUID = first.SOPClassUID
            src.ReferencedSOPInstanceUID = first.SOPInstanceUID
            ds.SourceImageSequence = Sequence([src])
            path = out / study.name / f"IMG{k + 2:05d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    return written


def corpus_files() -> list[Path]:
    files = [Path(p) for p in get_testdata_files() if Path(p).is_file()]
    assert len(files) > 200, "install the pydicom-data package for the full corpus"
    return files


def digests(root: Path) -> dict[str, str]:
    """Content hash of every file and the set of names under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hospital") / "site"
    write_hospital(out, site_index=SYNTH_SITE, seed=SYNTH_SEED, patients=SYNTH_PATIENTS)
    return out


@pytest.fixture(scope="module")
def incoming(tmp_path_factory, hospital) -> Path:
    """One export folder: the synthetic hospital, derived images and the whole corpus."""
    root = tmp_path_factory.mktemp("incoming")
    shutil.copytree(hospital / "dicom", root / "dicom" / "synthetic")
    derive_images(hospital, root / "dicom" / "derived")
    for index, path in enumerate(corpus_files()):
        target = root / "dicom" / "corpus" / f"{index:03d}" / path.name
        target.parent.mkdir(parents=True)
        shutil.copy(path, target)
    write_labels(files_under(root / "dicom"), root / "labels.csv")
    return root


POLICIES = {
    "defaults": None,
    # every option that keeps more than the Basic Profile, except dates (see test_dates_...)
    "retain": "\n".join([
        "[deid]",
        "retain-patient-characteristics = true",
        "clean-descriptors = true",
        'retain-safe-private = [["{creator}", 0x20]]',
        "[[deid.pixel-clean]]",
        'manufacturer = "{manufacturer}"',
        'model = "{model}"',
        "rows = {rows}",
        "columns = {columns}",
        "regions = [[0, 0, 24, 120]]",
    ]),
}


def _write_policy(site: Path, name: str) -> frozenset[tuple[str, int]]:
    template = POLICIES[name]
    if template is None:
        return frozenset()
    p = sample_profile(seed=SYNTH_SEED, site_index=SYNTH_SITE)
    site.mkdir(parents=True, exist_ok=True)
    (site / "policy.toml").write_text(template.format(
        creator=p.private_creator, manufacturer=p.manufacturer, model=p.model, rows=p.rows, columns=p.columns))
    return frozenset({(p.private_creator, 0x20)})


# --- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_no_identifying_value_leaves_the_originals(tmp_path, incoming, policy):
    site_dir, export = tmp_path / "site", tmp_path / "export"
    allow = _write_policy(site_dir, policy)
    originals = files_under(incoming / "dicom")
    collected = collect_values(originals, retain_safe_private=allow)
    values = collected.searchable()
    search = ValueSearch(values)
    before = digests(incoming)

    site = Site(site_dir)
    with captured_logs() as logs:
        site.run("keys", "init", "--site-dir", site_dir)
        ingested = site.run("ingest", "--site-dir", site_dir, "--dicom", incoming / "dicom",
                            "--labels", incoming / "labels.csv", "--tensor-size", 32)
        site.run("store", "verify", "--site-dir", site_dir)
        site.run("store", "info", "--site-dir", site_dir)
        site.run("store", "export", "--site-dir", site_dir, "--out", export)
    said = " ".join(ingested.output.split())  # the console wraps long lines
    assert "de-identification: Basic Profile" in said
    if policy == "retain":
        assert "retain-patient-characteristics, clean-descriptors, retain-safe-private (1 private element(s)), " \
               "pixel-clean (1 rule(s))" in said

    # the check can fail: every value searched for is in the original bytes, and found there
    assert len(values) >= 1000, f"only {len(values)} identifying values collected"
    found_in_originals = set().union(*(search.find(p.read_bytes()) for p in originals))
    assert found_in_originals == values
    keys = load_keys(site_dir)
    records = SiteStore.open(site_dir, keys).records()
    assert len(records) > 60 and len(files_under(export)) == len(records)

    blobs = [
        *tree_blobs(site_dir, "site"),
        *tree_blobs(export, "export"),
        *decrypted_blobs(site_dir, keys),
        ("logs", logs.getvalue().encode()),
        *site.outputs,
    ]
    leaks = leaks_in(search, blobs)
    print(f"\nsite leak test ({policy}): {len(originals)} files, {len(collected.per_file)} read, "
          f"{len(collected.unreadable)} unreadable; {len(values)} identifying values searched "
          f"({len(collected.exempt())} exempt as kept on purpose); {len(blobs)} blobs, "
          f"{sum(len(b) for _, b in blobs) / 1e6:.1f} MB; {len(records)} images stored")
    assert not leaks, f"{len(leaks)} leaked value(s), first: {leaks[:5]}"
    assert digests(incoming) == before, "ingest modified an original file"
    if policy == "retain":  # the pixel-clean rule matched the synthetic device's images
        cleaned = sum("113101" in {item.CodeValue for item in pydicom.dcmread(p).DeidentificationMethodCodeSequence}
                      for p in files_under(export))
        assert cleaned >= len(files_under(incoming / "dicom" / "synthetic"))
    for report in (site_dir / "reports").glob("ingest-*.json"):  # counts and reason codes only
        summary = json.loads(report.read_text())
        reasons = {**summary["quarantined"], **summary["rejected"]}
        assert all(isinstance(v, (int, float)) for k, v in summary.items() if k not in ("quarantined", "rejected"))
        assert all(k.replace("-", "").isalpha() and isinstance(v, int) for k, v in reasons.items())


def _export_by_original(export: Path, originals: Iterable[Path], deid: Deidentifier):
    """Pairs (original dataset, exported dataset) matched by the keyed SOP Instance UID."""
    exported = {}
    for path in files_under(export):
        ds = pydicom.dcmread(path)
        exported.setdefault(str(ds.SOPInstanceUID), []).append(ds)
    pairs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in originals:
            try:
                ds = pydicom.dcmread(path, force=True)
                uid = str(ds.get("SOPInstanceUID", "") or "")
            except Exception:  # noqa: BLE001
                continue
            for out in exported.get(deid.map_uid(uid), []) if uid else ():
                pairs.append((path, ds, out))
    return exported, pairs


def _uids(ds: Dataset, where: tuple = ()) -> Iterator[tuple[tuple, int, list[str]]]:
    for elem in ds:
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or ()):
                yield from _uids(item, where + (int(elem.tag), i))
        elif elem.VR == "UI" and elem.value:
            values = list(elem.value) if isinstance(elem.value, (list, MultiValue)) else [elem.value]
            yield where + (int(elem.tag),), int(elem.tag), [str(v).strip(" \x00") for v in values]


def _get(ds: Dataset, where: tuple):
    """The element at ``where`` = (tag, item, tag, item, ..., tag), or None."""
    node = ds
    for tag, item in zip(where[:-1:2], where[1:-1:2]):
        if tag not in node or node[tag].VR != "SQ" or item >= len(node[tag].value):
            return None
        node = node[tag].value[item]
    return node.get(where[-1])


def test_remapped_uids_keep_studies_series_and_references_together(tmp_path, hospital):
    """Multi-file studies (synthetic patients, derived images, the corpus' DICOMDIR test set): the
    same original UID gets the same new UID in every file, different UIDs stay different,
    and references point at the new UIDs of the images they referenced."""
    incoming = tmp_path / "incoming"
    shutil.copytree(hospital / "dicom", incoming / "dicom" / "synthetic")
    derived = derive_images(hospital, incoming / "dicom" / "derived")
    dicomdir_set = [p for p in corpus_files() if "dicomdirtests" in p.parts]
    assert len(dicomdir_set) >= 50, "the corpus' DICOMDIR test set (multi-file studies) is missing"
    for index, path in enumerate(dicomdir_set):
        target = incoming / "dicom" / "dicomdir" / f"{index:03d}" / path.name
        target.parent.mkdir(parents=True)
        shutil.copy(path, target)
    originals = files_under(incoming / "dicom")
    write_labels(originals, incoming / "labels.csv")
    site_dir, export = tmp_path / "site", tmp_path / "export"
    site = Site(site_dir)
    site.run("keys", "init", "--site-dir", site_dir)
    site.run("ingest", "--site-dir", site_dir, "--dicom", incoming / "dicom", "--labels", incoming / "labels.csv",
             "--tensor-size", 32)
    site.run("store", "export", "--site-dir", site_dir, "--out", export)
    deid = Deidentifier(site_secret=load_keys(site_dir).site_secret)
    exported, pairs = _export_by_original(export, originals, deid)
    synthetic = files_under(incoming / "dicom" / "synthetic") + derived
    assert len(pairs) == len(files_under(export)) >= len(synthetic) + 20
    assert {path for path, _, _ in pairs} >= set(synthetic)

    forward: dict[str, set[str]] = defaultdict(set)
    backward: dict[str, set[str]] = defaultdict(set)
    for path, original, out in pairs:
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        for where, tag, new_values in _uids(out):
            old = _get(original, where)
            assert old is not None, f"{path.name}: a UID at {where} has no original counterpart"
            old_values = list(old.value) if isinstance(old.value, (list, MultiValue)) else [old.value]
            old_values = [str(v).strip(" \x00") for v in old_values]
            for a, b in zip(old_values, new_values, strict=True):
                if tag in CLASS_UID_TAGS or a.startswith(WELL_KNOWN_ROOT):
                    assert a == b, f"{path.name}: a class or registered UID changed at {where}"
                    continue
                assert b.startswith("2.25.") and len(b) <= 64 and a not in b
                forward[a].add(b)
                backward[b].add(a)
    assert all(len(v) == 1 for v in forward.values()), "one original UID became several new UIDs"
    assert all(len(v) == 1 for v in backward.values()), "two original UIDs became one new UID"

    by_study: dict[str, set[str]] = defaultdict(set)
    by_series: dict[str, set[str]] = defaultdict(set)
    files_per_study: dict[str, int] = defaultdict(int)
    for _, original, out in pairs:
        by_study[str(original.StudyInstanceUID)].add(str(out.StudyInstanceUID))
        by_series[str(original.SeriesInstanceUID)].add(str(out.SeriesInstanceUID))
        files_per_study[str(original.StudyInstanceUID)] += 1
    assert max(files_per_study.values()) >= 10 and sum(n == 3 for n in files_per_study.values()) >= 4
    assert all(len(v) == 1 for v in by_study.values()) and all(len(v) == 1 for v in by_series.values())
    assert len({next(iter(v)) for v in by_study.values()}) == len(by_study)

    new_sop = {str(o.SOPInstanceUID): str(out.SOPInstanceUID) for _, o, out in pairs}
    checked = 0
    for path, original, out in pairs:
        if path not in derived:
            continue
        for keyword in ("ReferencedImageSequence", "SourceImageSequence"):
            old_ref = str(original[keyword][0].ReferencedSOPInstanceUID)
            assert str(out[keyword][0].ReferencedSOPInstanceUID) == new_sop[old_ref]
            assert str(out[keyword][0].ReferencedSOPClassUID) == str(original[keyword][0].ReferencedSOPClassUID)
            checked += 1
        assert out.StudyInstanceUID == next(iter(by_study[str(original.StudyInstanceUID)]))
    assert checked == 2 * len(derived)


def test_dates_shift_by_one_constant_per_patient_with_intervals_kept(tmp_path, hospital):
    site_dir, export = tmp_path / "site", tmp_path / "export"
    site_dir.mkdir()
    (site_dir / "policy.toml").write_text("[deid]\nretain-longitudinal-modified-dates = true\n")
    site = Site(site_dir)
    site.run("keys", "init", "--site-dir", site_dir)
    result = site.run("ingest", "--site-dir", site_dir, "--dicom", hospital / "dicom",
                      "--labels", hospital / "labels.csv", "--tensor-size", 32)
    assert "retain-longitudinal-modified-dates" in result.output
    site.run("store", "export", "--site-dir", site_dir, "--out", export)
    originals = files_under(hospital / "dicom")
    deid = Deidentifier(site_secret=load_keys(site_dir).site_secret)
    _, pairs = _export_by_original(export, originals, deid)
    assert len(pairs) == len(originals)

    def day(value) -> dt.date:
        return dt.datetime.strptime(str(value), "%Y%m%d").date()

    shifts: dict[str, set[int]] = defaultdict(set)
    studies: dict[str, list[tuple[dt.date, dt.date]]] = defaultdict(list)
    for _, original, out in pairs:
        patient = str(original.PatientID)
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate"):
            shifts[patient].add((day(out[keyword].value) - day(original[keyword].value)).days)
        for keyword in ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime"):
            assert out[keyword].value == original[keyword].value  # a whole-day shift keeps the time
        assert not out.get("PatientBirthDate")
        assert out.LongitudinalTemporalInformationModified == "MODIFIED"
        assert "113107" in {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
        studies[patient].append((day(original.StudyDate), day(out.StudyDate)))
    assert all(len(s) == 1 for s in shifts.values()), "a patient's files were shifted by different offsets"
    offsets = [next(iter(s)) for s in shifts.values()]
    assert all(-3650 <= o <= -1 for o in offsets) and len(set(offsets)) > 1
    followed = [dates for dates in studies.values() if len({d for d, _ in dates}) > 1]
    assert followed, "the synthetic hospital must have patients with several studies"
    for dates in followed:
        (first_old, first_new), *rest = sorted(dates)
        for old, new in rest:
            assert (new - first_new) == (old - first_old) and old != first_old
    # no original date or time of a patient survives in that patient's files (times are
    # kept by design under this option, so only dates are searched)
    collected = collect_values(originals)
    patient_of = {path: str(original.PatientID) for path, original, _ in pairs}
    dates_by_patient: dict[str, set[bytes]] = defaultdict(set)
    for path, found in collected.dates.items():
        dates_by_patient[patient_of[path]] |= {d for d in found if len(d) == 8 and d.isdigit()}
    for path, original, out in pairs:
        search = ValueSearch(dates_by_patient[patient_of[path]])
        assert search.find(path.read_bytes()), "the search must find the dates in the original"
        assert not search.find(Path(out.filename).read_bytes())


def test_a_wrong_key_is_one_clear_error_and_changes_nothing(tmp_path, hospital):
    site_dir = tmp_path / "site"
    site = Site(site_dir, env={"SITE_PASS": PASSPHRASE, "WRONG_PASS": PASSPHRASE + "!"})
    site.run("keys", "init", "--site-dir", site_dir, "--passphrase-env", "SITE_PASS")
    args = ("--dicom", hospital / "dicom", "--labels", hospital / "labels.csv", "--tensor-size", 32)
    site.run("ingest", "--site-dir", site_dir, "--passphrase-env", "SITE_PASS", *args)
    before = digests(site_dir)
    for command in (("ingest", "--site-dir", site_dir, "--passphrase-env", "WRONG_PASS", *args),
                    ("store", "export", "--site-dir", site_dir, "--passphrase-env", "WRONG_PASS",
                     "--out", tmp_path / "export"),
                    ("store", "verify", "--site-dir", site_dir, "--passphrase-env", "WRONG_PASS")):
        result = site.run(*command, ok=False)
        assert result.exit_code == 2, result.output
        assert result.output.count("error:") == 1 and "Traceback" not in result.output
        assert "fix" in result.output or "passphrase" in result.output
        assert digests(site_dir) == before
    assert not (tmp_path / "export").exists()
    # another site's keys: the store refuses them before reading or writing anything
    other = init_keys(tmp_path / "other-site")
    with pytest.raises(StoreError, match="does not open this store") as caught:
        ingest(site_dir, hospital / "dicom", hospital / "labels.csv", keys=other, tensor_size=32)
    assert "fix" in str(caught.value)
    assert digests(site_dir) == before


def test_an_invalid_deid_policy_is_one_error_naming_each_setting(tmp_path, hospital):
    site_dir = tmp_path / "site"
    site = Site(site_dir)
    site.run("keys", "init", "--site-dir", site_dir)
    (site_dir / "policy.toml").write_text("\n".join([
        "[deid]",
        'retain-longitudinal-modified-dates = "yes"',
        "clean-descriptor = true",
        'retain-safe-private = [["ACME MEDICAL 1.0", 0x1010]]',
        "[[deid.pixel-clean]]",
        'manufacturer = "ACME"',
        "rows = 512",
        "columns = 512",
        "regions = [[0, 0, 600, 10]]",
    ]) + "\n")
    result = site.run("ingest", "--site-dir", site_dir, "--dicom", hospital / "dicom",
                      "--labels", hospital / "labels.csv", ok=False)
    output = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code == 2 and output.count("error:") == 1
    for setting in ("[deid] retain-longitudinal-modified-dates: got a string",
                    "[deid] clean-descriptor: unknown setting",
                    "[deid] retain-safe-private entry 1: the element offset is the number 4112",
                    "[[deid.pixel-clean]] 1: model is missing",
                    "[[deid.pixel-clean]] 1 regions 1: the rectangle is empty or outside the 512 x 512 image"):
        assert setting in output
    assert "5 problem(s)" in output and "regions = [[row0, col0, row1, col1], ...]" in output
    assert "ACME" not in output  # kinds of values, never the values
    assert not (site_dir / "store").exists() and not (site_dir / "reports").exists()


def _running_in_group(group: int) -> list[int]:
    """Processes of a process group that are not zombies (from /proc: state and pgrp)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_killed_ingest_resumes_without_duplicates_and_collects_orphans(tmp_path):
    export = tmp_path / "hospital"
    write_hospital(export, site_index=3, seed=7, patients=45)
    images = len(files_under(export / "dicom"))
    assert images > COMMIT_EVERY + 8
    site_dir = tmp_path / "site"
    keys = init_keys(site_dir)
    objects, manifest = site_dir / "store" / "objects", site_dir / "store" / "manifest"
    command = [sys.executable, "-c", "from client.cli import main; main()", "ingest", "--site-dir", str(site_dir),
               "--dicom", str(export / "dicom"), "--labels", str(export / "labels.csv"), "--tensor-size", "32",
               "--workers", "2"]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, created = time.monotonic() + 240, None
        while time.monotonic() < deadline and process.poll() is None:  # kill past the first commit,
            with contextlib.suppress(FileNotFoundError):                 # with objects sealed after it
                created = created or manifest.stat().st_ino
                if (manifest.stat().st_ino != created
                        and sum(not p.name.startswith(TEMP_PREFIX) for p in objects.iterdir()) > 2 * COMMIT_EVERY):
                    break
            time.sleep(0.005)
        assert process.poll() is None, "ingest ended before it could be killed"
        assert len(_running_in_group(process.pid)) == 3  # the ingest and its two workers
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while _running_in_group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running_in_group(process.pid) == []  # the workers died with the ingest

    store = SiteStore.open(site_dir, keys)
    assert len(store.records()) == COMMIT_EVERY  # the committed batch survives
    problems = store.verify()
    assert any(p.startswith("orphan:") for p in problems), problems

    summary = ingest(site_dir, export / "dicom", export / "labels.csv", keys=keys, tensor_size=32)
    assert summary.already_in_store == COMMIT_EVERY and summary.ingested == images - COMMIT_EVERY
    assert not summary.quarantined and not summary.rejected
    store = SiteStore.open(site_dir, keys)
    records = store.records()
    assert len(records) == images  # every admissible file once
    assert store.verify() == []  # no orphan, no temp file, every object authenticates
    assert len([p for p in objects.iterdir()]) == 2 * images
    manifest = envelope.unseal((site_dir / "store" / "manifest").read_bytes(), kek=keys.kek, key_id=keys.key_id,
                               site_id=keys.site_id, object_id="manifest")
    sources = [image["source_key"] for image in json.loads(manifest)["images"]]
    assert len(set(sources)) == len(sources) == images
    sops = {pydicom.dcmread(io.BytesIO(store.read_dicom(r.image_id))).SOPInstanceUID for r in records}
    assert len(sops) == images
