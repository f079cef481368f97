"""A real federation on this machine: a TLS SuperLink and three authenticated SuperNodes.

    .venv/bin/python deploy/local_federation.py [--work-dir DIR] [--rounds 3] [--image-size 32]

Everything is Flower's own: `flower-superlink` (TLS, SuperNode authentication, a
database, no runtime dependency installation), `flwr supernode register` for each
site's public key, one `flower-supernode` per hospital (TLS with the CA certificate, its
private key, node config pointing at its site directory) and `flwr run`. Each hospital
is a synthetic one, de-identified and ingested into its own encrypted store, with a
`policy.toml` that allows exactly this app's digest. The run uses DP-SGD at every site
and SecAgg+ at the coordinator. Everything started is stopped at the end, also on
Ctrl-C. All processes listen on 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from client.app_digest import checkout_digest  # noqa: E402
from client.ingest import ingest  # noqa: E402
from client.keys import init_keys  # noqa: E402
from client.node_keys import create_node_key  # noqa: E402
from common.app_files import stage_app  # noqa: E402
from common.synth import write_hospital  # noqa: E402
from server.certs import make_certs  # noqa: E402
from server.flower_processes import (RunOutcome, free_port, quote, run_status, stop_tree,  # noqa: E402
                                     submit_run, wait_for_port)

CONNECTION = "fedrad-tls"
SITE_NAMES = ("hospital-a", "hospital-b", "hospital-c")
SITE_POLICY = """# {name}: the site's own rules (see deploy/README.md)
[privacy]
max-epsilon = 50.0           # lifetime budget of this site's dataset
min-noise-multiplier = 0.3
max-rounds-per-run = 20
[apps]
allowed-hashes = ["{digest}"]  # `fedrad-site app digest` of the reviewed app
"""


@dataclass
class SiteDaemon:
    name: str
    site_dir: Path
    port: int  # the SuperNode's own runtime API, for its ClientApp processes
    process: subprocess.Popen | None = None


class LocalFederation:
    """Certificates, sites, a SuperLink and SuperNodes under `work_dir`; a context manager."""

    def __init__(self, work_dir: Path, *, sites: int = 3, patients: int = 24, seed: int = 0,
                 app_dir: Path = REPO, startup_timeout: float = 60.0) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.app_dir = Path(app_dir).resolve()
        self.patients, self.seed, self.startup_timeout = patients, seed, startup_timeout
        self.bin_dir = Path(sys.executable).parent
        self.certs = self.work_dir / "certs"
        self.port = free_port()
        self.superlink: subprocess.Popen | None = None
        self._stopping = False
        self.sites = {name: SiteDaemon(name, self.work_dir / "sites" / name / "site", free_port())
                      for name in SITE_NAMES[:sites]}

    # -- set-up -----------------------------------------------------------------------------
    def env(self, home: Path) -> dict[str, str]:
        path = os.pathsep.join([str(self.bin_dir), os.environ.get("PATH", "")])
        # SuperExec asks its SuperNode or SuperLink for work every second by default; every
        # message to a site waits for that poll before its ClientApp process starts.
        return dict(os.environ, PATH=path, FLWR_HOME=str(home), FLWR_DISABLE_UPDATE_CHECK="1",
                    FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.2")

    @property
    def coordinator_env(self) -> dict[str, str]:
        return self.env(self.work_dir / "coordinator" / "flwr-home")

    def prepare(self, say=print) -> None:
        """Certificates and the sites (synthesised, ingested, keyed); kept if already there."""
        if not (self.certs / "ca.crt").exists():
            make_certs(self.certs, ["localhost"])
            say(f"certificates: {self.certs}")
        digest = checkout_digest(self.app_dir)
        for index, site in enumerate(self.sites.values()):
            if not (site.site_dir / "keys" / "node_key").exists():
                export = site.site_dir.parent / "export"
                if not export.exists():
                    write_hospital(export, site_index=index, seed=self.seed, patients=self.patients)
                keys = init_keys(site.site_dir)
                summary = ingest(site.site_dir, export / "dicom", export / "labels.csv", keys=keys)
                create_node_key(site.site_dir)
                say(f"{site.name}: {summary.ingested} image(s) ingested into its encrypted store")
            self.allow_app(site.name, digest)
        home = self.work_dir / "coordinator" / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certs / "ca.crt"}"\n', encoding="utf-8")

    def allow_app(self, name: str, digest: str) -> None:
        """Write the site's policy.toml allowing exactly the app with `digest`."""
        (self.sites[name].site_dir / "policy.toml").write_text(SITE_POLICY.format(name=name, digest=digest))

    # -- processes --------------------------------------------------------------------------
    def start_superlink(self) -> None:
        state = self.work_dir / "coordinator" / "superlink.db"
        state.parent.mkdir(parents=True, exist_ok=True)
        self.superlink = subprocess.Popen(
            [str(self.bin_dir / "flower-superlink"),
             "--ssl-ca-certfile", str(self.certs / "ca.crt"), "--ssl-certfile", str(self.certs / "server.pem"),
             "--ssl-keyfile", str(self.certs / "server.key"), "--enable-supernode-auth",
             "--database", str(state), "--disable-runtime-dependency-installation",
             "--host", "127.0.0.1", "--port", str(self.port),
             "--log-file", str(self.work_dir / "coordinator" / "superlink.log")],
            env=self.coordinator_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_port(self.port, self.superlink, self.startup_timeout)

    def stop_superlink(self) -> None:
        stop_tree(self.superlink)

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin_dir / "flwr"), *args], env=self.coordinator_env, cwd=self.app_dir,
                              text=True, capture_output=True, timeout=timeout)

    def register(self, name: str, public_key: Path | None = None) -> subprocess.CompletedProcess:
        """`flwr supernode register`: the coordinator admits the site's public key."""
        key = public_key or self.sites[name].site_dir / "keys" / "node_key.pub"
        return self.flwr("supernode", "register", str(key), CONNECTION, "--name", name)

    def supernode_command(self, name: str, *, private_key: Path | None = None,
                          root_certificates: Path | None = None, extra: tuple[str, ...] = ()) -> list[str]:
        site = self.sites[name]
        ca = root_certificates if root_certificates is not None else self.certs / "ca.crt"
        return [str(self.bin_dir / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
                *(["--root-certificates", str(ca)] if ca else []),
                *(["--auth-supernode-private-key", str(private_key or site.site_dir / "keys" / "node_key")]
                  if private_key != "" else []),
                "--node-config", f"site-dir={quote(site.site_dir)} site-name={quote(name)}",
                "--host", "127.0.0.1", "--port", str(site.port), *extra]

    def start_supernode(self, name: str, **options) -> subprocess.Popen:
        site = self.sites[name]
        home = site.site_dir.parent / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        log = open(site.site_dir.parent / "supernode.log", "ab")
        try:
            site.process = subprocess.Popen(self.supernode_command(name, **options), env=self.env(home),
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        return site.process

    def restart_supernode(self, name: str, *, within: float = 180.0) -> threading.Thread:
        """Restart a site's SuperNode in the background, retrying as systemd's Restart= would.

        The SuperLink refuses to activate a node whose previous session has not yet
        missed its heartbeats (about a minute), so the first attempts may exit at once.
        """
        def supervise() -> None:
            deadline = time.monotonic() + within
            while time.monotonic() < deadline and not self._stopping:
                process = self.start_supernode(name)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    return  # activated and running
                stop_tree(process, grace=0.0)
                time.sleep(3)

        thread = threading.Thread(target=supervise, daemon=True)
        thread.start()
        return thread

    def stop_supernode(self, name: str, *, kill: bool = False) -> None:
        """Stop a site's SuperNode and its ClientApps (`kill`: at once, as a crash would)."""
        stop_tree(self.sites[name].process, grace=0.0 if kill else 15.0)

    def start(self) -> None:
        """SuperLink, every site registered, every SuperNode started."""
        self.start_superlink()
        for name in self.sites:
            registered = self.register(name)
            if registered.returncode != 0 and "already" not in (registered.stdout + registered.stderr).lower():
                raise RuntimeError(f"registering {name} failed: {registered.stdout[-500:]}{registered.stderr[-500:]}")
            self.start_supernode(name)

    # -- runs -------------------------------------------------------------------------------
    def run(self, run_config: dict, *, timeout: float | None = None, capture: bool = False,
            on_line=None) -> RunOutcome:
        """`flwr run <app> fedrad-tls --stream`; `on_line(line)` sees the log as it streams."""
        overrides = " ".join(f"{key}={quote(value)}" for key, value in run_config.items())
        app = stage_app(self.app_dir, self.work_dir / "coordinator" / "app")  # what `flwr run` packages
        command = [str(self.bin_dir / "flwr"), "run", str(app), CONNECTION, "--stream",
                   "--run-config", overrides]
        output, run_id = submit_run(command, env=self.coordinator_env, cwd=self.app_dir, timeout=timeout,
                                    capture=capture, on_line=on_line)
        status = run_status(self.bin_dir / "flwr", CONNECTION, run_id, env=self.coordinator_env,
                            cwd=self.app_dir) if run_id else "not-started"
        return RunOutcome(status, output, run_id)

    def stop(self) -> None:
        self._stopping = True
        for site in self.sites.values():
            stop_tree(site.process, grace=5.0)
        stop_tree(self.superlink)

    def __enter__(self) -> "LocalFederation":
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        if getattr(self, "_previous_sigterm", None) is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / ".fedrad-federation",
                        help="certificates, sites, SuperLink state and runs (default: .fedrad-federation/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patients", type=int, default=40, help="synthetic patients per hospital")
    parser.add_argument("--batch-size", type=int, default=8, help="expected patients per DP-SGD step")
    args = parser.parse_args(argv)
    runs = args.work_dir.resolve() / "runs"
    with LocalFederation(args.work_dir, patients=args.patients) as federation:
        federation.prepare()
        federation.start()
        print(f"SuperLink (TLS, SuperNode authentication) on 127.0.0.1:{federation.port}; "
              f"SuperNodes: {', '.join(federation.sites)}")
        outcome = federation.run({"sites": len(federation.sites), "rounds": args.rounds,
                                  "image-size": args.image_size, "local-epochs": 1,
                                  "batch-size": args.batch_size, "run-name": "local-federation",
                                  "runs-dir": str(runs), "sim-cache-dir": str(args.work_dir.resolve() / "heldout"),
                                  "wait-for-sites": 60.0, "round-timeout": 600.0})
    print(f"\nrun status: {outcome.status}; results in {runs / 'local-federation'} "
          "(metrics.jsonl, model.safetensors, model_card.md)")
    return outcome.returncode


if __name__ == "__main__":
    sys.exit(main())
