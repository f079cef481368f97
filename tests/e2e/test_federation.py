"""A real federation on 127.0.0.1: TLS SuperLink, authenticated SuperNodes, SecAgg+ and DP-SGD.

One federation (deploy/local_federation.py) serves the module: three synthetic hospitals,
each ingested into its own encrypted store, each with a policy that allows this app.
"""
import http.client
import json
import os
import signal
import ssl
import socket
import subprocess
import time

import pytest

from client.node_keys import create_node_key
from deploy.local_federation import CONNECTION, LocalFederation
from server.flower_processes import free_port

RUN = {"sites": 3, "image-size": 16, "local-epochs": 1, "batch-size": 4, "heldout-eval": False, "seed": 3,
       "wait-for-sites": 60.0, "round-timeout": 60.0}


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    work = tmp_path_factory.mktemp("federation")
    with LocalFederation(work, patients=16) as fed:
        fed.prepare(say=lambda *_: None)
        fed.start()
        yield fed


def _run(fed, name, *, timeout=270, on_line=None, **settings):
    config = dict(RUN, **{k.replace("_", "-"): v for k, v in settings.items()}, **{"run-name": name},
                  **{"runs-dir": str(fed.work_dir / "runs")})
    outcome = fed.run(config, timeout=timeout, capture=True, on_line=on_line)
    run_dir = fed.work_dir / "runs" / name
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] \
        if (run_dir / "metrics.jsonl").exists() else []
    return outcome, run_dir, lines


def _trained(line):
    return sorted(name for name, metrics in line["sites"].items() if metrics["train"])


def _nodes(fed):
    listing = fed.flwr("supernode", "ls", CONNECTION, "--format", "json")
    return json.loads(listing.stdout)["nodes"]


def _supernode_alone(fed, *, extra=(), **options):
    """Run one more SuperNode (hospital-a's site, its own free port) until it gives up."""
    command = fed.supernode_command("hospital-a", extra=(*extra, "--max-retries", "1", "--max-wait-time", "10"),
                                    **options)
    command[command.index("--port") + 1] = str(free_port())
    home = fed.sites["hospital-a"].site_dir.parent / "flwr-home"
    process = subprocess.Popen(command, env=fed.env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        process.wait(timeout=60)  # the SuperNode gives up; its SuperExec child would retry on
    finally:
        os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, process.returncode, process.stdout.read(), "")


@pytest.mark.timeout(300)  # ~85 s on an idle 2-core machine; Flower starts a process per message
def test_tls_federation_with_secagg_and_dp_completes(federation):
    outcome, run_dir, lines = _run(federation, "tls", rounds=1)
    assert outcome.status == "finished:completed", outcome.stdout[-3000:]
    assert "Secure aggregation completed" in outcome.stdout
    (line,) = lines
    assert _trained(line) == ["hospital-a", "hospital-b", "hospital-c"] and line["failures"] == []
    assert line["aggregation"] == "secagg+"
    assert sorted(name for name, site in line["sites"].items() if site["evaluate"]) == \
        ["hospital-a", "hospital-b", "hospital-c"]
    for report in line["privacy"]["sites"].values():
        assert report["mode"] == "dp" and report["unit"] == "patient" and report["epsilon"] > 0
    assert (run_dir / "model.safetensors").stat().st_size > 0 and (run_dir / "model_card.md").exists()


@pytest.mark.timeout(120)
def test_a_supernode_with_an_unregistered_key_is_refused(federation, tmp_path):
    stranger = create_node_key(tmp_path / "stranger")
    before = {n["node-id"] for n in _nodes(federation)}
    finished = _supernode_alone(federation, private_key=stranger.private_key)
    assert finished.returncode != 0
    assert "Failed to activate SuperNode" in finished.stdout
    assert {n["node-id"] for n in _nodes(federation)} == before


@pytest.mark.timeout(120)
def test_without_the_ca_certificate_or_in_plaintext_nothing_connects(federation):
    client = ssl.create_default_context()  # the system's CAs, not the federation's
    with socket.create_connection(("127.0.0.1", federation.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.wrap_socket(raw, server_hostname="localhost")
    plain = http.client.HTTPConnection("127.0.0.1", federation.port, timeout=10)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)):
        plain.request("GET", "/")
        plain.getresponse()
    plaintext = _supernode_alone(federation, root_certificates="", private_key="", extra=("--insecure",))
    unknown_ca = _supernode_alone(federation, root_certificates="")  # the system's CAs only
    assert "CERTIFICATE_VERIFY_FAILED" in unknown_ca.stdout
    for finished in (plaintext, unknown_ca):
        assert finished.returncode != 0
        assert "Failed to initialize the connection to the SuperLink" in finished.stdout


@pytest.mark.timeout(180)
def test_killing_a_supernode_mid_run_still_completes_the_run_with_the_other_two(federation):
    killed = []

    def act(line):
        if "Secure aggregation commencing" in line and not killed:
            killed.append(True)
            federation.stop_supernode("hospital-b", kill=True)

    outcome, _, lines = _run(federation, "kill", rounds=1, round_timeout=30.0, fraction_evaluate=0.0, on_line=act)
    assert killed and outcome.status == "finished:completed", outcome.stdout[-3000:]
    (line,) = lines
    assert _trained(line) == ["hospital-a", "hospital-c"]
    assert any(f["kind"] == "no-reply" and f["phase"] == "train" for f in line["failures"])


@pytest.mark.timeout(180)
def test_restarts_keep_the_federation_and_a_site_that_does_not_allow_the_app_declines(federation):
    """After the kill above: hospital-b's SuperNode restarts, the SuperLink restarts on its
    database, and a new run resumes from the last checkpoint; hospital-c's policy no
    longer allows this app, so it declines and the round goes on with a and b."""
    registered = {n["node-id"] for n in _nodes(federation)}
    federation.restart_supernode("hospital-b")
    federation.stop_superlink()
    federation.start_superlink()  # the same database
    assert {n["node-id"] for n in _nodes(federation)} == registered
    deadline = time.monotonic() + 120
    while sum(n["status"] == "online" for n in _nodes(federation)) < 3 and time.monotonic() < deadline:
        time.sleep(2)
    policy = federation.sites["hospital-c"].site_dir / "policy.toml"
    approved = policy.read_text()
    federation.allow_app("hospital-c", "0" * 64)
    try:
        checkpoint = federation.work_dir / "runs" / "kill" / "checkpoints" / "round-0001.json"
        outcome, _, lines = _run(federation, "kill", rounds=2, resume_from=str(checkpoint), fraction_evaluate=0.0)
    finally:
        policy.write_text(approved)
    assert outcome.status == "finished:completed", outcome.stdout[-3000:]
    assert "resuming from round 1" in outcome.stdout
    assert [line["round"] for line in lines] == [1, 2]
    assert _trained(lines[1]) == ["hospital-a", "hospital-b"]
    declined = [f for f in lines[1]["failures"] if f["site"] == "hospital-c" and f["phase"] == "train"]
    assert declined and declined[0]["declined"] == "app-not-allowed"
    assert "site hospital-c declined: app not allowed" in outcome.stdout
