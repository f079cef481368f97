"""Site ingest throughput: fedrad vs dicognito vs plain pydicom, side by side on the same files.

Data sets:
- corpus: the files of pydicom's test corpus (pydicom-data included) that all three
  tools handle: pydicom reads and writes them, dicognito anonymizes them, fedrad ingests
  them (admissible and a usable greyscale image), one copy per distinct content;
- synthetic: the first 2,000 images of a synthetic hospital
  (`common.synth.write_hospital`, chest CR/DX of 320-640 pixels a side).

Tools, each over every file of a data set into a fresh output, in one process, in
rotating order per repeat (the figure is the median of the repeats):
- `pydicom`: `dcmread` + `save_as` (what any tool pays at least);
- `dicognito`: `dcmread`, `Anonymizer.anonymize`, `save_as` (its command line's steps);
- `fedrad`: `client.ingest.ingest` into a fresh site: labels join, PS3.15 de-identification,
  the pixel pipeline (128 x 128 tensors), AES-256-GCM encryption, durable writes (fsync'd
  before each manifest commit), manifest, report;
- `fedrad-deid-encrypt`: the same ingest with the pixel pipeline replaced by an empty
  tensor: de-identification + encryption + store alone;
- `fedrad-workers`, `fedrad-deid-encrypt-workers`: the same two with `--workers` processes
  reading and de-identifying (default: one per CPU, what `fedrad-site ingest` does); the rows
  above run in one process, like pydicom and dicognito.
pydicom and dicognito write plain files without fsync; fedrad's durability is included.

Leaks: the identifying values of every input file (the collector of
tests/integration/test_ingest_leak.py: names, IDs, dates, times, UIDs, private values,
>= 6 bytes, found in the original bytes) are searched in each tool's output: for fedrad
every file under the site directory, the decrypted store and `store export`'s DICOM.

Memory: fedrad ingests 250, 500, 1,000 and 2,000 synthetic files, each in a fresh
subprocess, in one process and with `--workers` processes; peak RSS is the child's `VmHWM`
(also: its peak minus its RSS after imports) and, with workers, the largest worker's
(`getrusage(RUSAGE_CHILDREN)`).

Outputs: every tool's output of every repeat is kept until the run ends (about 8 GB with the
defaults), then removed (`--keep-outputs`: moved to WORK/out-<time> instead). Removing them
between repeats made the later repeats slow to create files: ext4 passes over inodes freed
in the last minutes when it allocates one (~500 us a file after 3,000 files were removed in
the folder's block group, against 15-30 us), and fedrad creates two objects an image where
pydicom writes one file, so the ratios to pydicom fell with it. The cost of creating a file
in the output folder is measured first and recorded (`file_create_us`): a run started within
minutes of another's clean-up shows it there.

`--parts` picks what runs (default all: corpus, synthetic, memory).

    .venv/bin/python benchmarks/ingest_throughput.py [--images 2000] [--repeats 3] [--corpus-repeats 9] [--workers N] [--parts corpus synthetic memory] [--work DIR [--keep-outputs]]

dicognito is a benchmark-only peer (`pip install dicognito`), not a fedrad dependency.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path

from _common import REPO, write_result

sys.path.insert(0, str(REPO))  # the leak test's collector lives in tests/

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import torch  # noqa: E402
from pydicom.data import get_testdata_files  # noqa: E402

import client.ingest  # noqa: E402
from client.deid import Deidentifier  # noqa: E402
from client.ingest_pool import available_cpus  # noqa: E402
from client.keys import init_keys, load_keys  # noqa: E402
from client.store import SiteStore  # noqa: E402
from common.pixels import PixelPipeline, load_dataset  # noqa: E402
from common.synth import write_hospital  # noqa: E402
from tests.integration.test_ingest_leak import (  # noqa: E402
    ValueSearch, collect_values, decrypted_blobs, tree_blobs)

TOOLS = ("pydicom", "dicognito", "fedrad", "fedrad-deid-encrypt", "fedrad-workers", "fedrad-deid-encrypt-workers")
FEDRAD_TOOLS = tuple(tool for tool in TOOLS if tool.startswith("fedrad"))
TARGETS = {"dicognito": 1.2, "pydicom": 0.7}  # fedrad's throughput / the peer's
MEMORY_SIZES = (250, 500, 1000, 2000)
PARTS = ("corpus", "synthetic", "memory")
_MEMORY_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) / 1024
import torch; torch.set_num_threads(1)
from client.ingest import ingest
from client.keys import init_keys
from client.privacy import load_policy  # imported by ingest on first use; counted in the baseline
site, folder, labels = map(Path, sys.argv[1:4])
keys = init_keys(site)
baseline = rss()
start = time.perf_counter()
summary = ingest(site, folder, labels, keys=keys, workers=int(sys.argv[4]))
seconds = time.perf_counter() - start
import multiprocessing
while multiprocessing.active_children():  # reap the workers (they exit after the ingest) so that
    time.sleep(0.01)                      # RUSAGE_CHILDREN counts them
print(json.dumps({"seconds": seconds, "ingested": summary.ingested,
                  "peak_rss_mb": hwm(), "rss_after_imports_mb": baseline,
                  "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


# --- data ---------------------------------------------------------------------------------


def _write_labels(uids: list[str], out: Path) -> None:
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["SOPInstanceUID", "finding"])
        writer.writerows((uid, i % 2) for i, uid in enumerate(dict.fromkeys(uids)))


def corpus_set(work: Path) -> tuple[Path, Path, int]:
    """Copy the corpus files all three tools handle into work/corpus; returns (folder,
    labels, files excluded)."""
    folder, labels = work / "corpus", work / "corpus-labels.csv"
    candidates = sorted(Path(p) for p in get_testdata_files() if Path(p).is_file())
    if folder.is_dir():
        return folder, labels, len(candidates) - sum(1 for _ in folder.rglob("*.dcm"))
    deid, pixels = Deidentifier(site_secret=b"benchmark eligibility check!"), PixelPipeline(size=128)
    from dicognito.anonymizer import Anonymizer

    anonymizer, seen, uids = Anonymizer(), set(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in candidates:
            data = path.read_bytes()
            digest = hashlib.sha256(data).digest()
            if digest in seen:
                continue
            try:
                pydicom.dcmread(io.BytesIO(data)).save_as(io.BytesIO())
                ds = pydicom.dcmread(io.BytesIO(data))
                anonymizer.anonymize(ds)
                ds.save_as(io.BytesIO())
                ds = load_dataset(data)
                uid = str(ds.SOPInstanceUID)
                result = deid(ds)
                if not result.admissible:
                    continue
                pixels(result.dataset)
            except Exception:  # noqa: BLE001 - one of the tools cannot handle it: not comparable
                continue
            seen.add(digest)
            uids.append(uid)
            target = folder / f"{len(seen):03d}" / (path.stem + ".dcm")
            target.parent.mkdir(parents=True)
            target.write_bytes(data)
    _write_labels(uids, labels)
    return folder, labels, len(candidates) - len(seen)


def synthetic_set(work: Path, images: int) -> tuple[Path, Path, list[Path]]:
    """A synthetic hospital with at least `images` images; returns (folder of the first
    `images`, labels, those files)."""
    hospital = work / f"hospital-{images}"
    if not hospital.is_dir():
        write_hospital(hospital, site_index=0, seed=2025, patients=int(images * 0.6) + 20)
    files = sorted((hospital / "dicom").rglob("*.dcm"))
    if len(files) < images:
        raise SystemExit(f"the synthetic hospital has {len(files)} images, fewer than {images}")
    return _subset(work, hospital, files, images), hospital / "labels.csv", files[:images]


def _subset(work: Path, hospital: Path, files: list[Path], n: int) -> Path:
    """A folder with the first n files, hard-linked (no copy)."""
    folder = work / f"subset-{n}"
    if not folder.is_dir():
        for path in files[:n]:
            target = folder / path.relative_to(hospital / "dicom")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    return folder


# --- the tools ------------------------------------------------------------------------------


def run_pydicom(files: list[Path], out: Path) -> None:
    out.mkdir(parents=True)
    for index, path in enumerate(files):
        pydicom.dcmread(path, force=False).save_as(out / f"{index:05d}.dcm")


def run_dicognito(files: list[Path], out: Path) -> None:
    from dicognito.anonymizer import Anonymizer

    out.mkdir(parents=True)
    anonymizer = Anonymizer()
    for index, path in enumerate(files):
        with pydicom.dcmread(path, force=False) as ds:
            anonymizer.anonymize(ds)
            ds.save_as(out / f"{index:05d}.dcm")


class _EmptyTensor:
    """Stands in for the pixel pipeline: de-identification + encryption + store alone."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, dataset) -> np.ndarray:
        return np.zeros((0,), dtype=np.float32)


@contextlib.contextmanager
def _pixel_pipeline(enabled: bool):
    original = client.ingest.PixelPipeline
    if not enabled:
        client.ingest.PixelPipeline = _EmptyTensor
    try:
        yield
    finally:
        client.ingest.PixelPipeline = original


def run_fedrad(folder: Path, labels: Path, out: Path, keys, *, pixels: bool, workers: int) -> int:
    with _pixel_pipeline(pixels):  # the workers are forked: they run the patched pipeline too
        summary = client.ingest.ingest(out, folder, labels, keys=keys, workers=workers)
    return summary.ingested


def measure(name: str, files: list[Path], folder: Path, labels: Path, work: Path, repeats: int,
            workers: int) -> dict:
    """Every tool over `files`, `repeats` times in rotating order; leaks of the last run."""
    seconds: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    outputs: dict[str, Path] = {}
    for repeat in range(repeats):
        order = TOOLS[repeat % len(TOOLS):] + TOOLS[:repeat % len(TOOLS)]
        for tool in order:
            out = work / "out" / f"{name}-{tool}-{repeat}"
            keys = init_keys(out) if tool.startswith("fedrad") else None  # site setup, not ingest
            start = time.perf_counter()
            if tool == "pydicom":
                run_pydicom(files, out)
            elif tool == "dicognito":
                run_dicognito(files, out)
            else:
                ingested = run_fedrad(folder, labels, out, keys, pixels=not tool.startswith("fedrad-deid"),
                                      workers=workers if tool.endswith("-workers") else 1)
                assert ingested == len(files), f"fedrad ingested {ingested} of {len(files)} files"
            seconds[tool].append(time.perf_counter() - start)
            outputs[tool] = out  # kept until the run ends (see the module docstring)
            print(f"  {name} {tool} run {repeat + 1}: {len(files) / seconds[tool][-1]:.1f} files/s", flush=True)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    rows = {}
    for tool, times in seconds.items():
        median = statistics.median(times)
        rows[tool] = {"seconds": [round(t, 3) for t in times], "median_seconds": round(median, 3),
                      "files_per_s": round(len(files) / median, 1), "mb_per_s": round(megabytes / median, 1),
                      "ms_per_file": round(1000 * median / len(files), 2)}
    ratios = {f"{ours}/{peer}": _ratio(seconds[peer], seconds[ours])
              for ours in FEDRAD_TOOLS for peer in ("dicognito", "pydicom")}
    return {"files": len(files), "megabytes": round(megabytes, 1), "tools": rows, "ratios": ratios,
            "leaks": leaks(files, outputs)}


def _ratio(peer: list[float], ours: list[float]) -> float:
    """Throughput ratio ours / peer: the median of the per-repeat ratios (each repeat
    measured both back to back)."""
    return round(statistics.median(p / o for p, o in zip(peer, ours)), 3)


def leaks(files: list[Path], outputs: dict[str, Path]) -> dict:
    """Distinct identifying values of `files` found in each tool's output."""
    collected = collect_values(files)
    search = ValueSearch(collected.searchable())
    result = {"values_searched": len(search.values), "exempt": len(collected.exempt())}
    for tool, out in outputs.items():
        if tool.startswith("fedrad"):
            keys = load_keys(out)
            export = out.parent / f"{out.name}-export"
            SiteStore.open(out, keys).export_dicom(export)
            blobs = [*tree_blobs(out, "site"), *tree_blobs(export, "export"), *decrypted_blobs(out, keys)]
        else:
            blobs = list(tree_blobs(out, tool))
        found: set[bytes] = set()
        leaking_files = 0
        for _, data in blobs:
            hits = search.find(data)
            found |= hits
            leaking_files += bool(hits)
        result[tool] = {"leaked_values": len(found), "blobs_with_leaks": leaking_files, "blobs": len(blobs)}
    return result


def file_create_us(directory: Path, files: int = 200) -> float:
    """Microseconds to create one empty file in a fresh folder under ``directory`` (median
    of three rounds): fedrad writes two objects an image where pydicom writes one file, so
    a file system where creating a file is slow costs fedrad twice what it costs pydicom."""
    rounds = []
    for attempt in range(3):
        folder = directory / f"create-probe-{attempt}"  # left for the run's final clean-up
        folder.mkdir(parents=True)
        start = time.perf_counter()
        for index in range(files):
            os.close(os.open(folder / f"{index}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        rounds.append((time.perf_counter() - start) / files * 1e6)
    return round(statistics.median(rounds), 1)


def memory(work: Path, hospital_files: list[Path], labels: Path, hospital: Path, workers: int) -> list[dict]:
    rows = []
    for n in MEMORY_SIZES:
        if n > len(hospital_files):
            continue
        folder = _subset(work, hospital, hospital_files, n)
        site = work / "out" / f"memory-{n}"
        done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(site), str(folder), str(labels),
                               str(workers)],
                              cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        child = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"files": n, "workers": workers, "ingested": child["ingested"],
                     "seconds": round(child["seconds"], 2),
                     "peak_rss_mb": round(child["peak_rss_mb"], 1),
                     "peak_above_imports_mb": round(child["peak_rss_mb"] - child["rss_after_imports_mb"], 1),
                     "worker_peak_rss_mb": round(child["worker_peak_rss_mb"], 1) if workers > 1 else None})
        print(f"  memory {n} files, {workers} worker(s): peak RSS {rows[-1]['peak_rss_mb']} MB, "
              f"largest worker's {rows[-1]['worker_peak_rss_mb']} MB", flush=True)
        shutil.rmtree(site)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic images (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the synthetic set (minus one)")
    parser.add_argument("--corpus-repeats", type=int, default=9,
                        help="repeats of the corpus set: 65 files take about a second per tool, so its "
                             "ratios need more repeats to settle")
    parser.add_argument("--workers", type=int, default=available_cpus(),
                        help="processes of the *-workers rows (default: one per CPU, as fedrad-site ingest)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to run (default: all three)")
    parser.add_argument("--work", type=Path, default=None, help="keep the data here between runs")
    parser.add_argument("--keep-outputs", action="store_true",
                        help="leave every tool's outputs under WORK/out-<time> (to inspect them, or so that "
                             "runs in a row do not follow one another's clean-up)")
    args = parser.parse_args()
    if args.keep_outputs and args.work is None:
        parser.error("--keep-outputs needs --work")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # pydicom's warnings on the corpus' odd files, from every tool
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    work = args.work or Path(tempfile.mkdtemp(prefix="fedrad-ingest-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "out", ignore_errors=True)  # a run that was stopped before its clean-up
    load_before = os.getloadavg()
    create_us = file_create_us(work / "out")
    print(f"creating a file under {work / 'out'} takes {create_us} us", flush=True)
    started = time.perf_counter()
    try:
        print("preparing data ...", flush=True)
        if {"synthetic", "memory"} & set(args.parts):
            synth_folder, synth_labels, synth_files = synthetic_set(work, args.images)
        results = {}
        if "corpus" in args.parts:
            corpus_folder, corpus_labels, excluded = corpus_set(work)
            corpus_files = sorted(corpus_folder.rglob("*.dcm"))
            # warm-up: imports, first-call initialisation of torch and pydicom's handlers
            measure("warmup", corpus_files[:5], _subset_of(work, corpus_files[:5]), corpus_labels, work, 1,
                    args.workers)
            results["corpus"] = {**measure("corpus", corpus_files, corpus_folder, corpus_labels, work,
                                           args.corpus_repeats, args.workers),
                                 "corpus_files_excluded": excluded}
        if "synthetic" in args.parts:
            results["synthetic"] = measure("synthetic", synth_files, synth_folder, synth_labels, work,
                                           max(1, args.repeats - 1), args.workers)
        if "memory" in args.parts:
            hospital = work / f"hospital-{args.images}"
            results["memory"] = [row for workers in sorted({1, args.workers})
                                 for row in memory(work, synth_files, synth_labels, hospital, workers)]
    finally:
        if args.keep_outputs and (work / "out").is_dir():
            kept = work / time.strftime("out-%Y%m%d-%H%M%S")
            (work / "out").rename(kept)
            print(f"outputs kept in {kept}", flush=True)
        else:
            shutil.rmtree(work / "out", ignore_errors=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    targets = {}
    for data_set in (name for name in ("corpus", "synthetic") if name in results):
        for peer, target in TARGETS.items():
            for ours in FEDRAD_TOOLS:
                measured = results[data_set]["ratios"][f"{ours}/{peer}"]
                targets[f"{data_set}: {ours}/{peer} >= {target}"] = {"measured": measured, "met": measured >= target}
        for ours in FEDRAD_TOOLS:
            leaked = results[data_set]["leaks"][ours]["leaked_values"]
            targets[f"{data_set}: {ours} leaked values == 0"] = {"measured": leaked, "met": leaked == 0}
    for workers, key in sorted({(1, "peak_rss_mb"), (args.workers, "peak_rss_mb"),
                                (args.workers, "worker_peak_rss_mb")}):
        peaks = [row[key] for row in results.get("memory", []) if row["workers"] == workers and row[key] is not None]
        if peaks:
            growth = peaks[-1] / peaks[0]
            targets[f"memory, {workers} worker(s): {key} at 2000 files / at 250 files <= 1.1"] = {
                "measured": round(growth, 3), "met": growth <= 1.1}
    payload = {
        "command": "benchmarks/ingest_throughput.py " + " ".join(sys.argv[1:]),
        "versions": {name: version(name) for name in ("dicognito", "cryptography", "numpy")},
        "load_average_1min": {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)},
        "file_create_us": create_us,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "notes": [
            "ratios are throughput ratios (files/s ours / files/s peer), median over repeats, each repeat "
            "running every tool back to back on the same files in rotating order",
            "fedrad fsyncs its objects before each manifest commit; pydicom and dicognito do not fsync",
            "fedrad-deid-encrypt = the real ingest with the pixel pipeline replaced by an empty tensor",
            "file_create_us: creating an empty file in the output folder before the run (fedrad creates "
            "two objects an image, pydicom one file); outputs are removed only after the run",
        ],
        "targets": targets,
        **results,
    }
    write_result("ingest_throughput" if set(args.parts) == set(PARTS) else "ingest_" + "_".join(args.parts), payload)
    _print_table(payload)


def _subset_of(work: Path, files: list[Path]) -> Path:
    folder = work / "warmup"
    if not folder.is_dir():
        for index, path in enumerate(files):
            (folder / f"{index}").mkdir(parents=True)
            os.link(path, folder / f"{index}" / path.name)
    return folder


def _print_table(payload: dict) -> None:
    if "corpus" in payload or "synthetic" in payload:
        print(f"\n{'data set':10s} {'tool':28s} {'files/s':>8s} {'MB/s':>7s} {'ms/file':>8s} {'leaked':>7s}")
    for data_set in (name for name in ("corpus", "synthetic") if name in payload):
        block = payload[data_set]
        for tool, row in block["tools"].items():
            leaked = block["leaks"].get(tool, {}).get("leaked_values", "")
            print(f"{data_set:10s} {tool:28s} {row['files_per_s']:8.1f} {row['mb_per_s']:7.1f} "
                  f"{row['ms_per_file']:8.2f} {leaked!s:>7s}")
        print(f"{'':10s} ratios: " + ", ".join(f"{k} {v}" for k, v in block["ratios"].items()))
        print(f"{'':10s} values searched: {block['leaks']['values_searched']}")
    for row in payload.get("memory", []):
        print(f"memory: {row['files']:5d} files, {row['workers']} worker(s): peak RSS {row['peak_rss_mb']} MB, "
              f"largest worker's {row['worker_peak_rss_mb']} MB "
              f"({row['peak_above_imports_mb']} MB above imports), {row['seconds']} s")
    for name, target in payload["targets"].items():
        print(f"{'met ' if target['met'] else 'MISSED'} {name}: {target['measured']}")


if __name__ == "__main__":
    main()
