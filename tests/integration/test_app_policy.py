"""A real site runs only apps it approved: train and evaluate decline any other, with a typed reason."""
from __future__ import annotations

from uuid import uuid4

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from client.app_digest import running_app_digest
from client.ingest import ingest
from client.keys import init_keys
from client.privacy import PrivacyLedger
from client.round_privacy import SiteDeclined, charge_round, dataset_key, settle_round
from client.site import resolve_site
from client.sitedata import load_site_data
from common import messages as wire
from common.config import TrainSettings
from common.model import build_model
from common.weights import to_record

SETTINGS = TrainSettings(image_size=16, batch_size=4, noise_multiplier=1.0, rounds=1)


@pytest.fixture(autouse=True)
def coordinator_identity(monkeypatch):
    """Messages are made in a coordinator's process: Flower needs its task identity."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture()
def site_dir(tmp_path, small_export):
    """A real site as its operator sets it up: keys, ingest, and no policy.toml yet."""
    site_dir = tmp_path / "hospital"
    keys = init_keys(site_dir)
    assert ingest(site_dir, small_export / "dicom", small_export / "labels.csv", keys=keys).ingested > 0
    assert not (site_dir / "policy.toml").exists()
    return site_dir


def _node_config(site_dir):
    return {"site-dir": str(site_dir), "site-name": "hospital-a"}


def _charge(site_dir):
    site = resolve_site(_node_config(site_dir), {})
    data = load_site_data(site.store, SETTINGS.image_size)
    return site, charge_round(site.site_dir, site.keys.site_secret, data, SETTINGS, run_id=1,
                              node_config=_node_config(site_dir), non_private_steps=1)


def _ask(site_dir, message_type: str) -> Message:
    """Send one message to our ClientApp as the SuperNode would (through Flower's wire format)."""
    content = RecordDict({wire.CONFIG: ConfigRecord(SETTINGS.to_record()), wire.ARRAYS: to_record(build_model(16))})
    message = message_from_proto(message_to_proto(Message(content, 1001, message_type)))
    message.metadata.__dict__["_message_id"] = str(uuid4())
    message.metadata.__dict__["_run_id"] = 1
    context = Context(run_id=1, node_id=1001, node_config=_node_config(site_dir), state=RecordDict(), run_config={})
    return message_from_proto(message_to_proto(client_app(message=message, context=context)))


def _declined(reply: Message) -> dict:
    assert reply.has_error()
    reported = wire.parse_site_error(reply.error.reason)
    assert reported is not None and reported["site"] == "hospital-a"
    return reported


def test_a_site_without_a_policy_declines_train_and_evaluate_of_any_app(site_dir):
    digest = running_app_digest()
    with pytest.raises(SiteDeclined) as declined:
        _charge(site_dir)
    assert declined.value.kind == "app-not-allowed" and digest in str(declined.value)
    for message_type in ("train", "evaluate"):
        reported = _declined(_ask(site_dir, message_type))
        assert reported["kind"] == "declined:app-not-allowed"
        message = reported["message"]
        assert digest in message and "allowed-hashes" in message and "fedrad-site app digest" in message
        assert str(site_dir) not in message and "hospital" not in message
    keys = resolve_site(_node_config(site_dir), {}).keys
    assert PrivacyLedger.open(site_dir, keys.site_secret).entries(dataset_key(keys.site_secret)) == []


def test_the_site_runs_the_app_once_its_digest_is_listed(site_dir):
    other = "f" * 64
    (site_dir / "policy.toml").write_text(f'[apps]\nallowed-hashes = ["{other}"]\n')
    assert _declined(_ask(site_dir, "evaluate"))["kind"] == "declined:app-not-allowed"

    (site_dir / "policy.toml").write_text(f'[apps]\nallowed-hashes = ["{other}", "{running_app_digest()}"]\n')
    site, charge = _charge(site_dir)
    assert settle_round(charge, charge.plan.steps).entries == 1
    reply = _ask(site_dir, "evaluate")
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert reply.content[wire.METRICS][wire.NUM_EXAMPLES] > 0


def test_allow_any_app_runs_any_app(site_dir):
    (site_dir / "policy.toml").write_text("[apps]\nallow-any-app = true\n")
    _charge(site_dir)
    assert not _ask(site_dir, "evaluate").has_error()
    (site_dir / "policy.toml").write_text("[apps]\nallow-any-app = false\n")
    assert _declined(_ask(site_dir, "evaluate"))["kind"] == "declined:app-not-allowed"
