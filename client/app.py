"""The site's Flower ClientApp: train and evaluate on the site's own encrypted store."""
from __future__ import annotations

import functools
import time
import zlib

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.keys import SiteKeyError
from client.site import SiteConfigError, resolve_site, site_label
from client.sitedata import NoSiteData
from client.store import StoreError
from client.sitedata import cached_site_data
from client.training import train as train_locally
from common import messages as keys
from common.config import TrainSettings
from common.evaluation import evaluate as evaluate_model
from common.model import build_model
from common.weights import load_record, to_record

app = ClientApp()

# Failures a site reports to the coordinator as a typed error reply (kind + message).
SITE_FAILURES = (SiteKeyError, StoreError, NoSiteData, SiteConfigError, ValueError)


def reports_failures(handler):
    """Turn a known site failure into an error reply that names the site and the kind."""

    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except SITE_FAILURES as failure:
            reason = keys.site_error_reason(site_label(context.node_config), type(failure).__name__, str(failure))
            return Message(Error(code=keys.SITE_ERROR_CODE, reason=reason), reply_to=msg)

    return wrapper


def _prepare(msg: Message, context: Context):
    torch.set_num_threads(int(context.node_config.get("torch-threads", 1)))
    settings = TrainSettings.from_record(msg.content[keys.CONFIG])
    site = resolve_site(context.node_config, context.run_config)
    data = cached_site_data(site.site_dir, site.store, settings.image_size)
    model = build_model(settings.image_size)
    load_record(model, msg.content[keys.ARRAYS])
    return settings, site, data, model


@app.train()
@reports_failures
def train(msg: Message, context: Context) -> Message:
    """Local epochs on the site's training split; reply with weights and metrics."""
    settings, site, data, model = _prepare(msg, context)
    seed = zlib.crc32(f"{settings.seed}:{settings.server_round}:{site.name}".encode())
    result = train_locally(model, data.train_images, data.train_labels, settings, seed=seed)
    metrics = MetricRecord({
        keys.NUM_EXAMPLES: result.examples,
        keys.TRAIN_LOSS: result.loss,
        keys.TRAIN_SECONDS: result.seconds,
        keys.TRAIN_STEPS: result.steps,
    })
    content = RecordDict({
        keys.ARRAYS: to_record(model),
        keys.METRICS: metrics,
        keys.SITE: ConfigRecord({keys.SITE_NAME: site.name}),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
@reports_failures
def evaluate(msg: Message, context: Context) -> Message:
    """Loss, ROC AUC, sensitivity and specificity on the site's validation split."""
    _, site, data, model = _prepare(msg, context)
    started = time.perf_counter()
    result = evaluate_model(model, data.val_images, data.val_labels)
    metrics = MetricRecord({
        keys.NUM_EXAMPLES: result.examples,
        keys.EVAL_SECONDS: time.perf_counter() - started,
        keys.EVAL_LOSS: result.loss,
        keys.EVAL_AUC: result.auc,
        keys.EVAL_SENSITIVITY: result.sensitivity,
        keys.EVAL_SPECIFICITY: result.specificity,
    })
    content = RecordDict({keys.METRICS: metrics, keys.SITE: ConfigRecord({keys.SITE_NAME: site.name})})
    return Message(content=content, reply_to=msg)
