"""SecAgg+ at the site: Flower's `secaggplus_mod` around our own train handler.

Flower's SecAgg+ workflow speaks the legacy FitIns/FitRes records. This mod translates
the round's FitIns into our message format, lets the site train as usual (privacy
policy, ledger, DP-SGD), checks the site's own update, and hands Flower's mod the
*change* of the weights (smaller than the weights, so quantised more finely), weighted
by the number of examples. Flower's mod masks it; the coordinator only ever sees the
masked vector, and after unmasking, the sum over sites. The site's metrics and privacy
report travel beside the masked vector; the weights themselves never leave in clear.
"""
from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as legacy

from common import messages as wire
from common.config import TrainSettings
from common.update_guard import update_problems

FITINS_ARRAYS, FITINS_CONFIG = "fitins.parameters", "fitins.config"


class _Refused(Exception):
    """The site's handler answered with an error; carry it past Flower's mod."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.reason)
        self.error = error


def is_secure_aggregation(msg: Message) -> bool:
    return (msg.metadata.message_type == MessageType.TRAIN and msg.has_content()
            and RECORD_KEY_CONFIGS in msg.content.config_records)


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    """Run SecAgg+ stages with Flower's mod; plain messages pass straight through."""
    if not is_secure_aggregation(msg):
        return call_next(msg, context)

    def train_then_mask(stage_msg: Message, ctxt: Context) -> Message:
        return _train_for_masking(stage_msg, ctxt, call_next)

    try:
        return secaggplus_mod(msg, context, train_then_mask)
    except _Refused as refused:
        return Message(refused.error, reply_to=msg)


def _train_for_masking(msg: Message, context: Context, call_next) -> Message:
    config = dict(msg.content.config_records[FITINS_CONFIG])
    names = json.loads(str(config.pop(wire.ARRAY_KEYS)))
    legacy_arrays = legacy.arrayrecord_to_parameters(msg.content.array_records[FITINS_ARRAYS], keep_input=True)
    start = dict(zip(names, parameters_to_ndarrays(legacy_arrays), strict=True))
    msg.content = RecordDict({
        wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in start.items()}),
        wire.CONFIG: ConfigRecord(config),
    })
    reply = call_next(msg, context)
    if reply.has_error():
        raise _Refused(reply.error)
    settings = TrainSettings.from_record(config)
    trained = {k: v.numpy() for k, v in reply.content[wire.ARRAYS].items()}
    from client.site import site_label  # heavy imports only once there is training to check

    delta = _checked_delta(trained, start, settings, site_label(context.node_config))
    metrics = reply.content.metric_records[wire.METRICS]
    weight = min(int(metrics[wire.NUM_EXAMPLES]), settings.secagg_max_weight)
    fitres = FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters(delta),
                    num_examples=weight, metrics={})
    content = legacy.fitres_to_recorddict(fitres, keep_input=False)
    for name in (wire.METRICS, wire.SITE, wire.PRIVACY):
        if name in reply.content:
            content[name] = reply.content[name]
    return Message(content, reply_to=msg)


def _checked_delta(trained: dict[str, np.ndarray], start: dict[str, np.ndarray], settings: TrainSettings,
                   site: str) -> list[np.ndarray]:
    """The change of every array, in order, if it passes the guards the coordinator cannot run."""
    problems = update_problems(trained, start, max_norm=settings.max_update_norm)
    delta = [] if problems else [trained[k] - start[k] for k in start]
    largest = max((float(np.max(np.abs(d))) for d in delta if d.size), default=0.0)
    if not problems and largest > settings.secagg_clipping_range:
        problems.append(f"a weight changed by {largest:.3g}, beyond secagg-clipping-range="
                        f"{settings.secagg_clipping_range:g}, so masking would clip it: raise the range")
    if problems:
        reason = wire.site_error_reason(site, "update-refused", "update refused: " + "; ".join(problems))
        raise _Refused(Error(code=wire.SITE_ERROR_CODE, reason=reason))
    return delta
