"""One training round under SecAgg+, driven by Flower's own `SecAggPlusWorkflow`.

The workflow speaks the legacy FitIns/FitRes protocol, so this module gives it a
one-round legacy strategy that hands out our round's instructions and keeps the
unmasked aggregate. Sites send the change of their weights, weighted by their number of
examples (see client/secure_aggregation.py); what comes out is the weighted average
change. The coordinator sees masked vectors and that average, never one site's update.
A grid wrapper watches every stage's replies to report which site failed where and to
keep each site's metrics and privacy report (which travel in clear beside the mask).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key as StageKey
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key as WorkflowKey
from flwr.serverapp import Grid

from common import messages as wire
from common.config import RunConfig
from server.messaging import send_and_receive

# Masked sums live modulo 2**32; each site's quantised vector below 2**24 keeps the sum of
# up to 255 sites from wrapping, with 2**24 levels across +/- secagg-clipping-range.
QUANTIZATION_RANGE = 2 ** 24
MODULUS_RANGE = 2 ** 32


@dataclass
class SecureRound:
    """What one SecAgg+ round produced: the average change, and per-site outcomes."""

    mean_delta: dict[str, np.ndarray] | None
    total_examples: int = 0
    replies: list[Message] = field(default_factory=list)  # stage-2 replies: metrics, site, privacy
    failures: list[dict] = field(default_factory=list)


class _ObservedGrid:
    """The run's Grid, with fast polling, recording every stage's replies."""

    def __init__(self, grid: Grid, timeout: float) -> None:
        self._grid, self._timeout = grid, timeout
        self.exchanges: list[tuple[str, list[Message], list[Message]]] = []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS][StageKey.STAGE]) if messages else ""
        replies = send_and_receive(self._grid, messages, timeout or self._timeout)
        self.exchanges.append((stage, messages, replies))
        return replies


class _SecAggPlus(SecAggPlusWorkflow):
    """Flower's workflow, forgetting at once a site that drops out before sending its keys.

    Flower 1.41 keeps such a site among the sampled nodes, so the unmask stage asks the
    others for key shares they never received and the whole round fails (KeyError at
    every site). A site that never sent keys holds no mask in anyone's vector: dropping
    it from the protocol's graph is exact.
    """

    def setup_stage(self, grid, context, state) -> bool:
        if not super().setup_stage(grid, context, state):
            return False
        answered = set(state.active_node_ids)
        state.sampled_node_ids = answered
        state.nid_to_neighbours = {nid: neighbours & answered
                                   for nid, neighbours in state.nid_to_neighbours.items() if nid in answered}
        return self._check_threshold(state)


class _OneRound(LegacyStrategy):
    """Hands the workflow this round's FitIns and keeps the unmasked average it computes."""

    def __init__(self, grid: Grid, fitins: dict[int, FitIns]) -> None:
        self._proxies = [(GridClientProxy(node, grid, 0), ins) for node, ins in fitins.items()]
        self.average: list[np.ndarray] | None = None
        self.total_examples = 0

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return self._proxies

    def aggregate_fit(self, server_round, results, failures):
        if not results:
            return None, {}
        # The workflow gives every result the same, already averaged, parameters.
        self.average = parameters_to_ndarrays(results[0][1].parameters)
        self.total_examples = sum(res.num_examples for _, res in results)
        return results[0][1].parameters, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


def secure_train_round(grid: Grid, instructions: list[Message], reference: dict[str, np.ndarray],
                       config: RunConfig) -> SecureRound:
    """Run SecAgg+ over `instructions` (the strategy's train messages, one per site)."""
    names = list(reference)
    fitins = {}
    for message in instructions:
        settings = dict(message.content[wire.CONFIG])
        settings[wire.ARRAY_KEYS] = json.dumps(names)
        arrays = message.content[wire.ARRAYS]
        fitins[message.metadata.dst_node_id] = FitIns(
            ndarrays_to_parameters([arrays[k].numpy() for k in names]), settings)
    observed = _ObservedGrid(grid, config.round_timeout)
    strategy = _OneRound(grid, fitins)
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            strategy=strategy)
    server_round = int(instructions[0].content[wire.CONFIG]["server-round"])
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    workflow = _SecAggPlus(
        num_shares=1.0, reconstruction_threshold=config.secagg_threshold, max_weight=float(config.secagg_max_weight),
        clipping_range=config.secagg_clipping_range, quantization_range=QUANTIZATION_RANGE,
        modulus_range=MODULUS_RANGE, timeout=config.round_timeout)
    workflow(observed, context)
    outcome = _outcome(observed, set(fitins))
    if strategy.average is not None:
        outcome.mean_delta = {k: v.astype(reference[k].dtype) for k, v in zip(names, strategy.average, strict=True)}
        outcome.total_examples = strategy.total_examples
    return outcome


def _outcome(observed: _ObservedGrid, nodes: set[int]) -> SecureRound:
    """Sort the stages' replies into failures (with their node id) and the training replies.

    A site whose masked vector arrived is in the sum even if it fails later: the
    others' shares unmask it.
    """
    outcome = SecureRound(mean_delta=None)
    failed: set[int] = set()
    for stage, messages, replies in observed.exchanges:
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                failed.add(node)
                outcome.failures.append(_failure(reply, stage))
            elif stage == "collect_masked_vectors":
                _assert_masked(reply)
                outcome.replies.append(reply)
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in answered and node not in failed:
                failed.add(node)
                outcome.failures.append({"site": f"node-{node}", "node": node, "kind": "no-reply",
                                         "reason": f"no reply in the SecAgg+ '{stage}' stage"})
    return outcome


def _failure(reply: Message, stage: str) -> dict:
    reported = wire.parse_site_error(reply.error.reason or "")
    node = reply.metadata.src_node_id
    if not reported:
        return {"site": f"node-{node}", "node": node, "kind": "error",
                "reason": f"SecAgg+ '{stage}' stage: {reply.error.reason}"}
    failure = {"site": reported["site"], "node": node, "kind": reported["kind"], "reason": reported["message"]}
    if reported["kind"].startswith("declined:"):
        failure["declined"] = reported["kind"].split(":", 1)[1]
    return failure


def _assert_masked(reply: Message) -> None:
    """A training reply under SecAgg+ must carry no arrays: only the masked vector."""
    for name, record in reply.content.array_records.items():
        if len(record):
            raise RuntimeError(f"a site's SecAgg+ reply carried clear arrays in '{name}'; refusing to look at "
                               "them: the site does not run fedrad's ClientApp with secure aggregation")
