"""A finished (or interrupted) run read back from its directory, checked before use.

`metrics.jsonl` is required; the settings come from `run_config.json`, or from the newest
checkpoint while the run has not finished; `model_card.md` is optional. Problems raise one
`RunRecordError` that names the file, the line and the fix, never a line's content.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RESTORE = ("metrics.jsonl is written by the run itself: restore it from the 'history' of the newest "
           "checkpoints/round-NNNN.json, or run the federation again")
# Each line's parts and the JSON types they may have (None: null allowed).
_SHAPE = {"sites": (dict,), "failures": (list,), "train": (dict, type(None)), "evaluate": (dict, type(None)),
          "heldout": (dict, type(None)), "privacy": (dict, type(None)), "wall_seconds": (dict, type(None))}
_MAX_LISTED = 5


class RunRecordError(ValueError):
    """The folder is not a readable run directory; the message says why and what to do."""


@dataclass(frozen=True)
class RunRecord:
    run_dir: Path
    config: dict
    history: list[dict]
    model_card: str | None


def load_run(run_dir: Path) -> RunRecord:
    """Read and check a run directory (`runs/<run-name>/`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunRecordError(f"{run_dir} is not a folder: give a run directory, runs/<run-name>/")
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise RunRecordError(f"{run_dir} is not a run directory (it has no metrics.jsonl): give runs/<run-name>/ "
                             "of a run that finished at least one round")
    history = read_history(metrics)
    card = run_dir / "model_card.md"
    return RunRecord(run_dir, _read_config(run_dir), history,
                     card.read_text(encoding="utf-8", errors="replace") if card.is_file() else None)


def read_history(path: Path) -> list[dict]:
    """The rounds of a metrics.jsonl, in file order; every malformed line is named by number."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RunRecordError(f"{path} is not UTF-8 text: {RESTORE}") from None
    history, problems = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as error:
            problems.append(f"line {number} is not valid JSON ({error.msg}, column {error.colno})")
            continue
        problem = _line_problem(line)
        if problem:
            problems.append(f"line {number} {problem}")
        else:
            history.append(line)
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED]) + (f"; and {len(problems) - _MAX_LISTED} more"
                                                      if len(problems) > _MAX_LISTED else "")
        raise RunRecordError(f"{path}: {listed}. {RESTORE}")
    if not history:
        raise RunRecordError(f"{path} has no rounds: report on a run that finished at least one round")
    return history


def _line_problem(line) -> str | None:
    if not isinstance(line, dict):
        return "is not a JSON object"
    if not isinstance(line.get("round"), int) or isinstance(line.get("round"), bool):
        return "has no round number"
    for key, types in _SHAPE.items():
        if key in line and not isinstance(line[key], types):
            return f"has a '{key}' that is not {'an object' if dict in types else 'a list'}"
    for part in ("train", "evaluate"):
        if any(not isinstance(site, dict) or not isinstance(site.get(part), (dict, type(None)))
               for site in line.get("sites", {}).values()):
            return f"has a site whose '{part}' metrics are not an object"
    if any(not isinstance(failure, dict) for failure in line.get("failures", [])):
        return "has a failure that is not an object"
    privacy_sites = (line.get("privacy") or {}).get("sites", {})
    if not isinstance(privacy_sites, dict) or any(not isinstance(r, (dict, type(None))) for r in privacy_sites.values()):
        return "has a 'privacy' whose sites are not objects"
    return None


def _read_config(run_dir: Path) -> dict:
    """run_config.json, else the newest checkpoint's config (a run still going), else {}."""
    path = run_dir / "run_config.json"
    if not path.is_file():
        checkpoints = sorted((run_dir / "checkpoints").glob("round-[0-9][0-9][0-9][0-9].json"))
        if not checkpoints:
            return {}
        path = checkpoints[-1]
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RunRecordError(f"{path} is not valid JSON: it is written by the run; restore it from the 'config' "
                             "of a checkpoints/round-NNNN.json") from None
    config = payload.get("config", {}) if path.name != "run_config.json" and isinstance(payload, dict) else payload
    if not isinstance(config, dict):
        raise RunRecordError(f"{path} holds no settings object: restore it from the 'config' of a "
                             "checkpoints/round-NNNN.json")
    return config
