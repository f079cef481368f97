"""The coordinator's round loop: train, aggregate, evaluate, record, checkpoint.

Flower's `Strategy.start` runs rounds too, but a hospital federation needs more per
round: which site replied and which failed (and why), per-site metrics, wall times, a
checkpoint after every round and an exact resume. This loop drives the same Flower
strategy methods (`configure_train`, `aggregate_train`, ...) and adds those.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from common import messages as wire
from common.config import RunConfig
from common.model import build_model
from common.update_guard import update_problems
from common.weights import plain_state_dict, save_weights, write_json_atomic
from server.checkpoints import load_checkpoint, save_checkpoint
from server.heldout import HeldOutSite
from server.messaging import send_and_receive
from server.model_card import write_model_card
from server.report import write_report
from server.secure_round import secure_train_round
from server.strategies import build_strategy, restore_strategy_state, strategy_state


class FederationError(RuntimeError):
    """The run cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    history: list[dict]


def wait_for_sites(grid: Grid, sites: int, timeout: float) -> list[int]:
    """Node ids once `sites` SuperNodes are connected; a clear error after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= sites:
            return nodes
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(nodes)} of {sites} sites connected within {timeout:.0f} s: start more "
                "SuperNodes, lower 'sites' in the run config, or in simulation give the federation "
                f"enough SuperNodes (flwr run . --federation-config \"num-supernodes={sites}\")"
            )
        time.sleep(0.5)


def _site_name(reply: Message) -> str:
    record = reply.content.config_records.get(wire.SITE) if reply.has_content() else None
    return str(record[wire.SITE_NAME]) if record and wire.SITE_NAME in record else f"node-{reply.metadata.src_node_id}"


def _exchange(grid: Grid, messages: Iterable[Message], timeout: float, names: dict[int, str]):
    """Send, wait, and sort replies into successes and failures (errors and silences)."""
    messages = list(messages)
    replies = send_and_receive(grid, messages, timeout)
    ok, failures = [], []
    answered = set()
    for reply in replies:
        node = reply.metadata.src_node_id
        answered.add(node)
        if reply.has_error():
            reported = wire.parse_site_error(reply.error.reason or "")
            if reported:
                names[node] = reported["site"]
                failures.append({"site": reported["site"], "kind": reported["kind"], "reason": reported["message"]})
                if reported["kind"].startswith("declined:"):
                    failures[-1]["declined"] = reported["kind"].split(":", 1)[1]
            else:
                failures.append({"site": names.get(node, f"node-{node}"), "kind": "error", "reason": reply.error.reason})
        else:
            names[node] = _site_name(reply)
            ok.append(reply)
    for message in messages:
        if message.metadata.dst_node_id not in answered:
            node = message.metadata.dst_node_id
            failures.append({"site": names.get(node, f"node-{node}"), "node": node, "kind": "no-reply",
                             "reason": f"no reply within {timeout:.0f} s"})
    return ok, failures


def _numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in arrays.items()}


def _train_plain(grid, instructions, arrays, config, names):
    """Each site's update in clear; guards refuse bad ones, per site, before aggregation.

    Returns the replies (for metrics), the failures, and what the strategy aggregates.
    """
    ok, failures = _exchange(grid, instructions, config.round_timeout, names)
    reference, accepted = _numpy(arrays), []
    for reply in ok:
        problems = update_problems(_numpy(reply.content[wire.ARRAYS]), reference, max_norm=config.max_update_norm)
        if problems:
            failures.append({"site": _site_name(reply), "kind": "update-refused",
                             "reason": "update refused: " + "; ".join(problems)})
        else:
            accepted.append(reply)
    return accepted, failures, accepted


def _train_secure(grid, instructions, arrays, config, names):
    """SecAgg+: one averaged change comes back; it is turned into a single reply to aggregate.

    Each site checked its own update before masking; the coordinator checks the average.
    """
    reference = _numpy(arrays)
    outcome = secure_train_round(grid, instructions, reference, config)
    for reply in outcome.replies:
        names[reply.metadata.src_node_id] = _site_name(reply)
    failures = []
    for failure in outcome.failures:
        failures.append(dict(failure, site=names.get(failure["node"], failure["site"])))
    if outcome.mean_delta is None:
        if len(outcome.replies) >= config.min_sites:
            failures.append({"site": "(all)", "kind": "secagg-failed",
                             "reason": "secure aggregation could not unmask the sum (too few sites stayed)"})
        return [], failures, []
    averaged = {name: reference[name] + outcome.mean_delta[name] for name in reference}
    problems = update_problems(averaged, reference, max_norm=config.max_update_norm)
    if problems:
        failures.append({"site": "(sum)", "kind": "update-refused",
                         "reason": "the aggregate was refused; the model stays as it was: " + "; ".join(problems)})
        averaged = reference
    total = MetricRecord({wire.NUM_EXAMPLES: outcome.total_examples})
    merged = Message(RecordDict({wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in averaged.items()}),
                                 wire.METRICS: total}), reply_to=instructions[0])
    return outcome.replies, failures, [merged]


def _weighted(per_site: dict[str, dict[str, float]]) -> dict[str, float]:
    """Average each metric over sites, weighted by examples, ignoring undefined values."""
    names = {k for metrics in per_site.values() for k in metrics} - {wire.NUM_EXAMPLES}
    result: dict[str, float] = {wire.NUM_EXAMPLES: sum(m.get(wire.NUM_EXAMPLES, 0) for m in per_site.values())}
    for name in sorted(names):
        pairs = [(m[name], m.get(wire.NUM_EXAMPLES, 0)) for m in per_site.values()
                 if name in m and not math.isnan(m[name])]
        weight = sum(w for _, w in pairs)
        result[name] = sum(v * w for v, w in pairs) / weight if weight else math.nan
    return result


def _metrics(reply: Message) -> dict[str, float]:
    record = reply.content.metric_records[wire.METRICS]
    return {k: float(v) for k, v in record.items()}


def _privacy(reply: Message) -> dict | None:
    record = reply.content.config_records.get(wire.PRIVACY)
    if record is None:
        return None
    report = dict(record)
    if not math.isfinite(report.get("epsilon", 0.0)):
        report["epsilon"], report["unbounded"] = None, True
    return report


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _in_dtypes(arrays: ArrayRecord, dtypes: dict[str, np.dtype]) -> ArrayRecord:
    """The global model in the model's own dtypes: server optimisers (FedAdam) compute in
    float64, and sites refuse weights whose dtype differs from their model's."""
    if all(arrays[name].numpy().dtype == dtype for name, dtype in dtypes.items()):
        return arrays
    return ArrayRecord({name: Array(arrays[name].numpy().astype(dtype)) for name, dtype in dtypes.items()})


def run_federation(config: RunConfig, grid: Grid, *, say: Callable[[str], None] = print) -> RunResult:
    """Run `config.rounds` rounds (continuing a checkpoint if `resume-from` is set)."""
    run_dir = Path(config.runs_dir).expanduser().resolve() / config.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    strategy = build_strategy(config)
    weights = plain_state_dict(build_model(config.image_size, width=config.model_width, seed=config.seed))
    history: list[dict] = []
    if config.resume_from:
        checkpoint = load_checkpoint(Path(config.resume_from).expanduser())
        if checkpoint.server_round >= config.rounds:
            raise FederationError(f"the checkpoint is already at round {checkpoint.server_round}: set "
                                  f"'rounds' above it to train further")
        if set(checkpoint.weights) != set(weights) or any(
                checkpoint.weights[k].shape != weights[k].shape for k in weights):
            raise FederationError("the checkpoint holds a different model (another model-width or version): "
                                  "resume with the run config it was made with (see its round-NNNN.json)")
        # In the model's own order: Flower's clipping mods compare array names in order.
        weights, history = {k: checkpoint.weights[k] for k in weights}, checkpoint.history
        restore_strategy_state(strategy, checkpoint.strategy_state)
        say(f"resuming from round {checkpoint.server_round}")
    arrays = ArrayRecord(weights)
    wait_for_sites(grid, config.sites, config.wait_for_sites)
    heldout = None
    if config.heldout_eval:
        heldout = HeldOutSite(Path(config.sim_cache_dir).expanduser(), seed=config.seed,
                              patients=config.sim_patients, image_size=config.image_size,
                              model_width=config.model_width)
    names: dict[int, str] = {}
    first_round = len(history) + 1
    for server_round in range(first_round, config.rounds + 1):
        started = time.perf_counter()
        train_config = ConfigRecord(config.train_settings(server_round).to_record())
        instructions = list(strategy.configure_train(server_round, arrays, train_config, grid))
        train_round = _train_secure if config.aggregation == "secagg+" else _train_plain
        ok, train_failures, to_aggregate = train_round(grid, instructions, arrays, config, names)
        train_seconds = time.perf_counter() - started
        for failure in train_failures:
            if "declined" in failure:
                say(f"round {server_round}: site {failure['site']} declined: {failure['declined'].replace('-', ' ')} "
                    f"({failure['reason']})")
            else:
                say(f"round {server_round}: site {failure['site']} failed in training ({failure['kind']}): "
                    f"{failure['reason']}")
        if len(ok) < config.min_sites:
            raise FederationError(
                f"round {server_round}: only {len(ok)} site(s) returned an update but min-sites is "
                f"{config.min_sites}; see the failures above, fix those sites, and resume from the last "
                f"checkpoint in {run_dir / 'checkpoints'}")
        dtypes = {name: arrays[name].numpy().dtype for name in arrays}
        arrays, _ = strategy.aggregate_train(server_round, to_aggregate)
        if arrays is None:
            raise FederationError(f"round {server_round}: the strategy could not aggregate the updates")
        arrays = _in_dtypes(arrays, dtypes)
        per_site_train = {_site_name(r): _metrics(r) for r in ok}
        per_site_privacy = {_site_name(r): _privacy(r) for r in ok}

        eval_started = time.perf_counter()
        eval_config = ConfigRecord(config.train_settings(server_round).to_record())
        # A site silent in training is most likely down: don't wait for it a second time.
        silent = {f.pop("node") for f in train_failures if "node" in f and f["kind"] == "no-reply"}
        for failure in train_failures:
            failure.pop("node", None)
        asked = [m for m in strategy.configure_evaluate(server_round, arrays, eval_config, grid)
                 if m.metadata.dst_node_id not in silent]
        ok_eval, eval_failures = _exchange(grid, asked, config.round_timeout, names)
        for failure in eval_failures:
            failure.pop("node", None)
        per_site_eval = {_site_name(r): _metrics(r) for r in ok_eval}
        eval_seconds = time.perf_counter() - eval_started

        weights = arrays.to_torch_state_dict()
        heldout_metrics, heldout_seconds = None, 0.0
        if heldout is not None:
            held_started = time.perf_counter()
            result = heldout.evaluate(weights)
            heldout_seconds = time.perf_counter() - held_started
            heldout_metrics = {"loss": result.loss, "auc": result.auc, "sensitivity": result.sensitivity,
                               "specificity": result.specificity, "num-examples": result.examples}
        line = _json_safe({
            "round": server_round,
            "sites": {name: {"train": per_site_train.get(name), "evaluate": per_site_eval.get(name)}
                      for name in sorted(set(per_site_train) | set(per_site_eval))},
            "failures": [dict(f, phase="train") for f in train_failures]
                        + [dict(f, phase="evaluate") for f in eval_failures],
            "train": _weighted(per_site_train),
            "evaluate": _weighted(per_site_eval) if per_site_eval else None,
            "heldout": heldout_metrics,
            "privacy": {"mode": config.privacy, "sites": per_site_privacy},
            "aggregation": config.aggregation,
            "wall_seconds": {"train": train_seconds, "evaluate": eval_seconds, "heldout": heldout_seconds,
                             "round": time.perf_counter() - started},
        })
        history.append(line)
        _write_metrics(run_dir, history)
        save_checkpoint(run_dir / "checkpoints", server_round, weights, strategy_state(strategy), history,
                        config.to_dict())
        say(_round_summary(line))
    save_weights(run_dir / "model.safetensors", weights, metadata={"rounds": str(config.rounds)})
    write_json_atomic(run_dir / "run_config.json", config.to_dict())
    write_model_card(run_dir, config, history)
    write_report(run_dir)  # last: it reads the files above
    return RunResult(run_dir=run_dir, history=history)


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    tmp = run_dir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in history), encoding="utf-8")
    tmp.replace(run_dir / "metrics.jsonl")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _round_summary(line: dict) -> str:
    evaluate = line["evaluate"] or {}
    heldout = line["heldout"] or {}
    epsilons = [p["epsilon"] for p in line["privacy"]["sites"].values() if p and p.get("epsilon") is not None]
    privacy = f"max site epsilon {max(epsilons):.2f}" if epsilons else f"privacy {line['privacy']['mode']}"
    return (f"round {line['round']}: {len(line['sites'])} site(s), {len(line['failures'])} failure(s); "
            f"train loss {_fmt(line['train'].get(wire.TRAIN_LOSS))}, site AUC {_fmt(evaluate.get(wire.EVAL_AUC))}, "
            f"held-out AUC {_fmt(heldout.get('auc'))}; {privacy}; {line['wall_seconds']['round']:.1f} s")
