"""One round's work at a site: train and evaluate on the site's own encrypted store.

Imported by the ClientApp's handlers on first use, so that the SecAgg+ key-exchange
stages, which need none of this, start a ClientApp process in about a second; Opacus
(about 3 s to import) is imported by `train` alone, not by `evaluate`.
"""
from __future__ import annotations

import functools
import math
import time
import zlib

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from client.keys import SiteKeyError
from client.privacy import AccountingError, LedgerError, PolicyError
from client.round_privacy import SiteDeclined, charge_round, check_app_allowed, privacy_record, settle_round
from client.site import SiteConfigError, resolve_site, site_label, torch_threads
from client.sitedata import NoSiteData, cached_site_data
from client.store import StoreError
from common import messages as wire
from common.config import TrainSettings
from common.evaluation import evaluate as evaluate_model
from common.model import build_model
from common.weights import load_record, to_record

# Failures a site reports to the coordinator as a typed error reply (kind + message).
SITE_FAILURES = (SiteKeyError, StoreError, NoSiteData, SiteConfigError, LedgerError, PolicyError,
                 AccountingError, ValueError)


def reports_failures(handler):
    """Turn a known site failure into an error reply that names the site and the kind."""

    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except SiteDeclined as declined:
            reason = wire.site_error_reason(site_label(context.node_config), f"declined:{declined.kind}", str(declined))
            return Message(Error(code=wire.SITE_ERROR_CODE, reason=reason), reply_to=msg)
        except SITE_FAILURES as failure:
            reason = wire.site_error_reason(site_label(context.node_config), type(failure).__name__, str(failure))
            return Message(Error(code=wire.SITE_ERROR_CODE, reason=reason), reply_to=msg)

    return wrapper


def _prepare(msg: Message, context: Context):
    torch.set_num_threads(torch_threads(context.node_config))
    settings = TrainSettings.from_record(msg.content[wire.CONFIG])
    site = resolve_site(context.node_config, context.run_config)
    check_app_allowed(site.site_dir, context.node_config)  # before any work for the app
    data = cached_site_data(site.site_dir, site.store, settings.image_size)
    model = build_model(settings.image_size, width=settings.model_width)
    load_record(model, msg.content[wire.ARRAYS])
    return settings, site, data, model


@reports_failures
def train(msg: Message, context: Context) -> Message:
    """Local epochs on the site's training split, within the site's privacy policy."""
    from client.private_training import DPConfig, train_private  # Opacus: training only
    from client.training import train as train_locally

    settings, site, data, model = _prepare(msg, context)
    seed = zlib.crc32(f"{settings.seed}:{settings.server_round}:{site.name}".encode())
    non_private_steps = settings.local_epochs * math.ceil(len(data.train_images) / settings.batch_size)
    charge = charge_round(site.site_dir, site.keys.site_secret, data, settings, run_id=msg.metadata.run_id,
                          node_config=context.node_config, non_private_steps=non_private_steps)
    if settings.privacy == "dp":
        dp = DPConfig(noise_multiplier=charge.noise_multiplier, max_grad_norm=settings.max_grad_norm)
        # The secret keeps the coordinator from replaying the sampling and the noise.
        result, _ = train_private(model, data.train_images, data.train_labels, data.train_patients,
                                  settings, dp, seed=seed, secret=site.keys.site_secret)
    else:
        result = train_locally(model, data.train_images, data.train_labels, settings, seed=seed)
    spent = settle_round(charge, result.steps)
    metrics = MetricRecord({
        wire.NUM_EXAMPLES: result.examples,
        wire.TRAIN_LOSS: result.loss,
        wire.TRAIN_SECONDS: result.seconds,
        wire.TRAIN_STEPS: result.steps,
    })
    content = RecordDict({
        wire.ARRAYS: to_record(model),
        wire.METRICS: metrics,
        wire.SITE: ConfigRecord({wire.SITE_NAME: site.name}),
        wire.PRIVACY: ConfigRecord(privacy_record(charge, spent)),
    })
    return Message(content=content, reply_to=msg)


@reports_failures
def evaluate(msg: Message, context: Context) -> Message:
    """Loss, ROC AUC, sensitivity and specificity on the site's validation split."""
    _, site, data, model = _prepare(msg, context)
    started = time.perf_counter()
    result = evaluate_model(model, data.val_images, data.val_labels)
    metrics = MetricRecord({
        wire.NUM_EXAMPLES: result.examples,
        wire.EVAL_SECONDS: time.perf_counter() - started,
        wire.EVAL_LOSS: result.loss,
        wire.EVAL_AUC: result.auc,
        wire.EVAL_SENSITIVITY: result.sensitivity,
        wire.EVAL_SPECIFICITY: result.specificity,
    })
    content = RecordDict({wire.METRICS: metrics, wire.SITE: ConfigRecord({wire.SITE_NAME: site.name})})
    return Message(content=content, reply_to=msg)
