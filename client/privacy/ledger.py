"""The site's privacy ledger: every DP-SGD step the site ever ran on its data.

Files
-----
``<site-dir>/ledger/ledger.json`` (0600, directory 0700) — one JSON document, written in
canonical form (keys sorted, no whitespace, ASCII, one trailing newline)::

    {"entries": [...], "format": "fedrad-privacy-ledger", "generation": 7,
     "mac": "<hex>", "prev_sha256": "<hex of the previous ledger file>", "version": 1}

Each entry::

    {"seq": 1, "dataset": "<fingerprint>", "noise_multiplier": 1.1, "sample_rate": 0.01,
     "steps": 400, "steps_charged": 400, "steps_done": 400 | null,
     "run_id": 12345 | "name", "server_round": 3, "app": "<fab hash or ''>",
     "status": "charged" | "completed", "created": "2025-...Z", "settled": "...Z" | null}

``steps`` is what counts (the accountant history of a dataset is ``[(noise_multiplier,
sample_rate, steps) for its entries in seq order]``). ``seq`` runs 1, 2, 3, ...;
``generation`` counts writes; ``prev_sha256`` chains each version to the one before.

``<site-dir>/keys/ledger-anchor`` (0600) — ``{"format": "fedrad-privacy-ledger-anchor",
"generation": 7, "ledger_sha256": "<hex of ledger.json>", "mac": "<hex>", "version": 1}``.
It lives next to the site keys (in a different directory from the ledger, and in what
a site backs up with its keys) so that deleting ``ledger/`` or putting back an older
copy of it is detected.

Both MACs are HMAC-SHA256 over the canonical document without ``mac``, under keys
derived from the site secret: ``HMAC-SHA256(site_secret, "fedrad/ledger")`` and
``HMAC-SHA256(site_secret, "fedrad/ledger-anchor")``. The file must be byte-for-byte
canonical, so any change of any byte is refused.

Rules
-----
- Write-ahead: :meth:`PrivacyLedger.charge` makes the entry durable (ledger, then
  anchor; temp file in the same directory, fsync, ``os.replace``, fsync of the
  directory) *before* it returns, so training starts only after its spend is recorded.
  A process killed after ``charge`` leaves the entry, status ``"charged"``, counted.
- Conservative settle: :meth:`PrivacyLedger.settle` marks an entry ``"completed"`` and
  records ``steps_done``, but never lowers ``steps`` below what was charged (a step
  that was charged may have run; early stopping saves nothing). If training ran *more*
  steps than charged, ``steps`` is raised to ``steps_done``: the ledger never
  under-counts.
- Loading fails with :class:`LedgerError` (and the site must not train) when the ledger
  fails authentication, is not canonical, has another format version, is older than
  the anchor says (rolled back), is missing while the anchor records writes (deleted),
  or has entries while the anchor is missing. The one accepted gap is a crash between
  the ledger write and the anchor write: a ledger exactly one generation ahead whose
  ``prev_sha256`` is the anchored file is authentic and complete; the anchor is rolled
  forward.
- A fresh ledger is created only when neither ``ledger/ledger.json`` nor the anchor
  exists (or the anchor records only the empty ledger of generation 0).
- Every read re-reads and re-verifies the files under a lock (``ledger/.lock``,
  flock: shared to read, exclusive to write), so two runs, processes or ledger objects
  on one site never lose each other's entries and no number is stale.

Residual risk: someone who can write the site directory and who deletes both the
ledger and the anchor (or puts back an older ledger *and* its matching older anchor,
e.g. from a backup) resets the site's recorded spend; the MAC cannot tell. Keep
backups of ``ledger/`` and ``keys/`` access-controlled and restore only the latest.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from client.durable import write_atomic
from client.privacy.accounting import PrivacySpent, check_history, epsilon

FORMAT, ANCHOR_FORMAT, VERSION = "fedrad-privacy-ledger", "fedrad-privacy-ledger-anchor", 1
LEDGER_DIR, LEDGER_FILE, LOCK_FILE = "ledger", "ledger.json", ".lock"
KEYS_DIR, ANCHOR_FILE = "keys", "ledger-anchor"
TMP_MARK = ".tmp-"
STATUSES = ("charged", "completed")
LOCK_TIMEOUT_S = 30.0
DATASET_RE = re.compile(r"[A-Za-z0-9._:+/=-]{1,200}")
ENTRY_KEYS = frozenset({"seq", "dataset", "noise_multiplier", "sample_rate", "steps", "steps_charged",
                        "steps_done", "run_id", "server_round", "app", "status", "created", "settled"})


class LedgerError(RuntimeError):
    """The ledger cannot be trusted or used; the site must not train until it is fixed.

    ``kind``: "modified", "rolled-back", "deleted", "anchor-missing", "unsupported",
    "busy", "unknown-entry" or "settled".
    """

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _mac_key(site_secret: bytes, label: bytes) -> bytes:
    return hmac.new(site_secret, label, hashlib.sha256).digest()


def _canonical(doc: dict) -> bytes:
    return (json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                       allow_nan=False) + "\n").encode("ascii")


def _mac(key: bytes, doc: dict) -> str:
    return hmac.new(key, _canonical({k: v for k, v in doc.items() if k != "mac"}), hashlib.sha256).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class PrivacyLedger:
    """The privacy ledger of one site. Obtain it with :meth:`open`.

    The object holds no entries: every method reads and verifies the files again.
    """

    def __init__(self, site_dir: Path, site_secret: bytes) -> None:
        if not isinstance(site_secret, (bytes, bytearray)) or len(site_secret) < 16:
            raise ValueError("site_secret must be the site's secret bytes (client.keys.load_keys(...).site_secret)")
        self.site_dir = Path(site_dir)
        self.dir = self.site_dir / LEDGER_DIR
        self.path = self.dir / LEDGER_FILE
        self.anchor_path = self.site_dir / KEYS_DIR / ANCHOR_FILE
        self._key = _mac_key(bytes(site_secret), b"fedrad/ledger")
        self._anchor_key = _mac_key(bytes(site_secret), b"fedrad/ledger-anchor")

    @classmethod
    def open(cls, site_dir: Path, site_secret: bytes, *, create: bool = True) -> "PrivacyLedger":
        """Open (and verify) the site's ledger, creating it on first use.

        With ``create=False`` nothing is written (for read-only views such as ``ledger
        show``): a site without a ledger reads as empty.
        """
        ledger = cls(site_dir, site_secret)
        if not (ledger.site_dir / KEYS_DIR).is_dir():
            raise LedgerError(
                f"{ledger.site_dir / KEYS_DIR} does not exist; rule: the ledger's anchor lives with the "
                f"site keys; fix: run `fedrad-site keys init --site-dir {ledger.site_dir}` (or restore "
                "keys/ from backup)", kind="deleted")
        if create:
            with ledger._locked(exclusive=True):
                ledger._load(write=True)
        else:
            ledger._read()
        return ledger

    # --- reading -------------------------------------------------------------------

    def entries(self, dataset: str | None = None) -> list[dict]:
        """Copies of the entries (of one dataset, or all), in seq order."""
        doc = self._read()
        return [copy.deepcopy(e) for e in doc["entries"] if dataset is None or e["dataset"] == dataset]

    def datasets(self) -> list[str]:
        """Dataset fingerprints with entries, in order of first entry."""
        return list(dict.fromkeys(e["dataset"] for e in self._read()["entries"]))

    def history(self, dataset: str) -> list[tuple[float, float, int]]:
        """The accountant history of ``dataset``: (noise_multiplier, sample_rate, steps) per entry."""
        _check_dataset(dataset)
        return [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in self.entries(dataset)]

    def spent(self, dataset: str, delta: float) -> PrivacySpent:
        """Epsilon at ``delta`` of the dataset's whole history (every entry counts)."""
        return epsilon(self.history(dataset), delta)

    def projected(self, dataset: str, delta: float, noise_multiplier: float, sample_rate: float,
                  steps: int) -> PrivacySpent:
        """Epsilon at ``delta`` after the history plus ``steps`` more steps at these settings."""
        extra = check_history([(noise_multiplier, sample_rate, steps)])
        return epsilon(self.history(dataset) + extra, delta)

    def generation(self) -> int:
        """How many times the ledger was written (0 = empty, never charged)."""
        return self._read()["generation"]

    # --- writing -------------------------------------------------------------------

    def charge(self, *, dataset: str, noise_multiplier: float, sample_rate: float, steps: int,
               run_id: int | str, server_round: int, app: str = "") -> int:
        """Record ``steps`` steps of training durably, BEFORE training; return the entry's seq."""
        _check_dataset(dataset)
        ((sigma, q, steps),) = check_history([(noise_multiplier, sample_rate, steps)])
        if steps < 1:
            raise ValueError("steps must be >= 1: charge the steps training is about to run")
        if isinstance(run_id, bool) or not (isinstance(run_id, int) and run_id >= 0
                                            or isinstance(run_id, str) and 0 < len(run_id) <= 200):
            raise ValueError("run_id must be an integer >= 0 (Flower's run id) or a non-empty string")
        if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
            raise ValueError("server_round must be an integer >= 0")
        if not isinstance(app, str) or len(app) > 200:
            raise ValueError("app must be a string (the FAB hash, or '')")
        with self._locked(exclusive=True):
            doc, sha = self._load(write=True)
            seq = len(doc["entries"]) + 1
            doc["entries"].append({
                "seq": seq, "dataset": dataset, "noise_multiplier": sigma, "sample_rate": q,
                "steps": steps, "steps_charged": steps, "steps_done": None, "run_id": run_id,
                "server_round": server_round, "app": app, "status": "charged",
                "created": _now(), "settled": None,
            })
            self._commit(doc, sha)
        return seq

    def settle(self, seq: int, steps_done: int | None = None) -> None:
        """Mark entry ``seq`` completed; ``steps_done`` is recorded, never lowers the charge.

        Settling a completed entry again with the same ``steps_done`` (or None) is a
        no-op (a retried call); with a different one it is a :class:`LedgerError`.
        """
        if steps_done is not None and (isinstance(steps_done, bool) or not isinstance(steps_done, int)
                                       or steps_done < 0):
            raise ValueError("steps_done must be an integer >= 0 or None")
        with self._locked(exclusive=True):
            doc, sha = self._load(write=True)
            if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= len(doc["entries"]):
                raise LedgerError(f"the ledger has no entry with seq {seq!r}; fix: settle the seq "
                                  "that charge() returned", kind="unknown-entry")
            entry = doc["entries"][seq - 1]
            if entry["status"] == "completed":
                if steps_done is None or steps_done == entry["steps_done"]:
                    return
                raise LedgerError(f"ledger entry {seq} is already settled with other steps_done; rule: an "
                                  "entry is settled once; fix: charge a new entry for new training",
                                  kind="settled")
            entry["status"], entry["settled"] = "completed", _now()
            if steps_done is not None:
                entry["steps_done"] = steps_done
                entry["steps"] = max(entry["steps_charged"], steps_done)
            self._commit(doc, sha)

    # --- files ---------------------------------------------------------------------

    def _read(self) -> dict:
        if not self.dir.is_dir():  # nothing to lock; _load decides whether that is allowed
            return self._load(write=False)[0]
        with self._locked(exclusive=False):
            return self._load(write=False)[0]

    def _load(self, *, write: bool) -> tuple[dict, str | None]:
        """The verified ledger document and the sha256 of its file (None if not on disk).

        With ``write`` (exclusive lock held): creates a fresh ledger, rolls the anchor
        forward after an interrupted write, and removes stray temp files.
        """
        if write:
            self._remove_stray_temp_files()
        anchor = self._read_anchor()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raw = None
        if raw is None:
            if anchor is not None and anchor["generation"] > 0:
                raise LedgerError(
                    f"the privacy ledger {self.path} is missing but its anchor {self.anchor_path} "
                    f"records {anchor['generation']} writes: the ledger was deleted; rule: the site "
                    "never starts its privacy spend from zero; fix: restore "
                    f"{self.dir} from backup", kind="deleted")
            doc = self._empty()
            if not write:
                return doc, None
            return doc, self._commit(doc, None, generation=0)
        doc = self._parse(raw)
        sha = hashlib.sha256(raw).hexdigest()
        if anchor is None:
            if doc["generation"] != 0:
                raise LedgerError(
                    f"the ledger anchor {self.anchor_path} is missing while the privacy ledger "
                    f"{self.path} has {doc['generation']} writes; rule: the anchor detects a "
                    "deleted or rolled-back ledger, so the site refuses to train without it; fix: "
                    "restore keys/ledger-anchor from the backup taken with the ledger",
                    kind="anchor-missing")
            if write:
                self._write_anchor(0, sha)
        elif doc["generation"] == anchor["generation"] and hmac.compare_digest(sha, anchor["ledger_sha256"]):
            pass
        elif doc["generation"] == anchor["generation"] + 1 and doc["prev_sha256"] == anchor["ledger_sha256"]:
            if write:  # a crash between the ledger write and the anchor write
                self._write_anchor(doc["generation"], sha)
        elif doc["generation"] < anchor["generation"]:
            raise LedgerError(
                f"the privacy ledger {self.path} is an older copy (generation {doc['generation']}) "
                f"than its anchor {self.anchor_path} records (generation {anchor['generation']}): it "
                "was rolled back, which would forget privacy spend; rule: the site trains only on "
                f"its latest ledger; fix: restore the latest {self.dir} from backup", kind="rolled-back")
        else:
            raise LedgerError(
                f"the privacy ledger {self.path} does not match its anchor {self.anchor_path} "
                f"(generation {doc['generation']} vs {anchor['generation']}): it was modified or "
                "replaced; rule: the site trains only on an intact ledger; fix: restore "
                f"{self.dir} and keys/ledger-anchor together from the latest backup", kind="modified")
        return doc, sha

    def _parse(self, raw: bytes) -> dict:
        def modified(what: str, kind: str = "modified") -> LedgerError:
            return LedgerError(
                f"the privacy ledger {self.path} was modified or corrupted ({what}); rule: the site "
                "trains only on an intact, authenticated ledger, so no privacy spend is ever "
                f"forgotten; fix: restore {self.dir} from the latest backup (never delete it to start "
                "from zero)", kind=kind)

        try:
            doc = json.loads(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise modified("not readable JSON; truncated?") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("mac"), str):
            raise modified("no authentication code")
        if not hmac.compare_digest(doc["mac"], _mac(self._key, doc)):
            raise modified("authentication failed: its content was changed, or it was not written "
                           "with this site's secret")
        if _canonical(doc) != raw:
            raise modified("not in canonical form")
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise LedgerError(
                f"the privacy ledger {self.path} has format {doc.get('format')!r} version "
                f"{doc.get('version')!r}; rule: this fedrad reads {FORMAT} version {VERSION}; fix: "
                "use the fedrad version that wrote it", kind="unsupported")
        problem = _check_doc(doc)
        if problem:
            raise modified(f"authentic but malformed: {problem}")
        return doc

    def _read_anchor(self) -> dict | None:
        try:
            raw = self.anchor_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw.decode("ascii"))
            ok = (isinstance(doc, dict) and isinstance(doc.get("mac"), str)
                  and hmac.compare_digest(doc["mac"], _mac(self._anchor_key, doc)) and _canonical(doc) == raw
                  and doc.get("format") == ANCHOR_FORMAT and doc.get("version") == VERSION
                  and _is_int(doc.get("generation")) and doc["generation"] >= 0
                  and isinstance(doc.get("ledger_sha256"), str))
        except (UnicodeDecodeError, ValueError):
            ok = False
        if not ok:
            raise LedgerError(
                f"the ledger anchor {self.anchor_path} was modified or corrupted (authentication "
                "failed, or it was not written with this site's secret); rule: the site trains only "
                "on an intact, authenticated ledger; fix: restore keys/ledger-anchor and "
                f"{self.dir} together from the latest backup", kind="modified")
        return doc

    def _empty(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "generation": 0, "prev_sha256": None, "entries": []}

    def _commit(self, doc: dict, prev_sha: str | None, *, generation: int | None = None) -> str:
        """Write ``doc`` as the next generation (ledger first, then anchor); return its sha256."""
        doc = dict(doc)
        doc["generation"] = doc["generation"] + 1 if generation is None else generation
        doc["prev_sha256"] = prev_sha
        doc.pop("mac", None)
        doc["mac"] = _mac(self._key, doc)
        raw = _canonical(doc)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        write_atomic(self.path, [raw])
        sha = hashlib.sha256(raw).hexdigest()
        self._write_anchor(doc["generation"], sha)
        return sha

    def _write_anchor(self, generation: int, sha: str) -> None:
        anchor = {"format": ANCHOR_FORMAT, "version": VERSION, "generation": generation, "ledger_sha256": sha}
        anchor["mac"] = _mac(self._anchor_key, anchor)
        write_atomic(self.anchor_path, [_canonical(anchor)])

    def _remove_stray_temp_files(self) -> None:
        """Temp files of writes that crashed (only ever present under the exclusive lock)."""
        for folder, name in ((self.dir, LEDGER_FILE), (self.anchor_path.parent, ANCHOR_FILE)):
            for stray in folder.glob(f".{name}{TMP_MARK}*"):
                stray.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LedgerError(
                            f"the privacy ledger {self.path} stayed locked for {LOCK_TIMEOUT_S:g} s; "
                            "rule: one writer at a time; fix: wait for the other fedrad process on "
                            "this site to finish, or stop it", kind="busy") from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # releases the lock


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_dataset(dataset: str) -> None:
    if not isinstance(dataset, str) or not DATASET_RE.fullmatch(dataset):
        raise ValueError("dataset must be a fingerprint string (1-200 characters of [A-Za-z0-9._:+/=-], "
                         "e.g. 'sha256:<hex>' of the store's image ids and patient keys); never a "
                         "patient-derived value in clear")


def _check_doc(doc: dict) -> str:
    """The first structural problem of an authentic document, or ''."""
    if set(doc) != {"format", "version", "generation", "prev_sha256", "entries", "mac"}:
        return "unexpected top-level keys"
    if not _is_int(doc["generation"]) or doc["generation"] < 0:
        return "bad generation"
    if doc["generation"] == 0 and (doc["prev_sha256"] is not None or doc["entries"]):
        return "generation 0 must be the empty ledger"
    if doc["generation"] > 0 and not isinstance(doc["prev_sha256"], str):
        return "missing prev_sha256"
    if not isinstance(doc["entries"], list):
        return "entries is not a list"
    for i, e in enumerate(doc["entries"], start=1):
        if not isinstance(e, dict) or set(e) != ENTRY_KEYS:
            return f"entry {i} has unexpected keys"
        if e["seq"] != i:
            return f"entry {i} has seq {e['seq']!r}"
        try:
            _check_dataset(e["dataset"])
            check_history([(e["noise_multiplier"], e["sample_rate"], e["steps"])])
        except ValueError as exc:
            return f"entry {i}: {exc}"
        if not (isinstance(e["noise_multiplier"], float) and isinstance(e["sample_rate"], float)
                and _is_int(e["steps"]) and _is_int(e["steps_charged"]) and e["steps"] >= e["steps_charged"] >= 1
                and (e["steps_done"] is None or _is_int(e["steps_done"]))
                and _is_int(e["server_round"]) and isinstance(e["app"], str)
                and e["status"] in STATUSES and isinstance(e["created"], str)
                and (e["settled"] is None) == (e["status"] == "charged")
                and (_is_int(e["run_id"]) or isinstance(e["run_id"], str))):
            return f"entry {i} has a field of the wrong type"
        if not math.isfinite(e["noise_multiplier"]):
            return f"entry {i} has a non-finite noise_multiplier"
    return ""


