"""The site's Flower ClientApp: train and evaluate on the site's own encrypted store.

The work itself is in `client.rounds`, imported on first use: SecAgg+'s key-exchange
messages are answered by the mods alone and need neither torch nor Opacus.
"""
from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

from client.secure_aggregation import secure_aggregation_mod
from common import messages as wire


def client_dp_mod(msg: Message, context: Context, call_next) -> Message:
    """Apply Flower's client-side clipping mod when the run asks for client-level DP."""
    config = msg.content.config_records.get(wire.CONFIG) if msg.has_content() else None
    mode = config.get("client-dp", "none") if config is not None else "none"
    if msg.metadata.message_type == "train" and mode == "fixed":
        return fixedclipping_mod(msg, context, call_next)
    if msg.metadata.message_type == "train" and mode == "adaptive":
        return adaptiveclipping_mod(msg, context, call_next)
    return call_next(msg, context)


# SecAgg+ wraps everything: under it, training (and any client-dp clipping) happens inside.
app = ClientApp(mods=[secure_aggregation_mod, client_dp_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local epochs on the site's training split, within the site's privacy policy."""
    from client.rounds import train as train_round

    return train_round(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss, ROC AUC, sensitivity and specificity on the site's validation split."""
    from client.rounds import evaluate as evaluate_round

    return evaluate_round(msg, context)
