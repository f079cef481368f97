"""Run the app with Flower's simulation runtime on this machine, start to finish.

`LocalSimulation` starts a `flower-superlink --simulation` on 127.0.0.1 (a free port,
runtime dependency installation off: sites and coordinator use the installed, approved
environment, and time to the first round stays short), writes a private Flower config
(FLWR_HOME) that names it, submits the app with `flwr run . --stream`, and stops the
SuperLink and everything it spawned on exit. It is what `make demo`, the end-to-end
tests and the benchmarks use; a user can equally type `flwr run .` (see README).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from common.app_files import stage_app
from server.flower_processes import RunOutcome, free_port, quote, run_status, stop_tree, submit_run, wait_for_port

CONNECTION = "fedrad-local"


class LocalSimulation:
    """A throwaway SuperLink in simulation mode; use as a context manager."""

    def __init__(self, app_dir: Path, *, work_dir: Path | None = None, startup_timeout: float = 60.0) -> None:
        self.app_dir = Path(app_dir).resolve()
        self._tmp = None if work_dir else tempfile.TemporaryDirectory(prefix="fedrad-sim-")
        self.work_dir = Path(work_dir or self._tmp.name).resolve()
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.bin_dir = Path(sys.executable).parent

    @property
    def env(self) -> dict[str, str]:
        path = os.pathsep.join([str(self.bin_dir), os.environ.get("PATH", "")])
        return dict(os.environ, PATH=path, FLWR_HOME=str(self.work_dir / "flwr-home"),
                    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_DISABLE_UPDATE_CHECK="1")

    def __enter__(self) -> "LocalSimulation":
        home = self.work_dir / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n', encoding="utf-8")
        self.log_path = self.work_dir / "superlink.log"
        self.process = subprocess.Popen(
            [str(self.bin_dir / "flower-superlink"), "--insecure", "--simulation",
             "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(self.port),
             "--database", ":flwr-in-memory:", "--log-file", str(self.log_path)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_port(self.port, self.process, self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        if threading.current_thread() is threading.main_thread():
            # A SIGTERM (e.g. `kill` or a CI timeout) must also stop the SuperLink's tree.
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigterm(self, signum, frame) -> None:
        raise SystemExit(128 + signum)

    def run(self, *, sites: int, run_config: dict, concurrency: int | None = None,
            timeout: float | None = None, capture: bool = False) -> RunOutcome:
        """`flwr run <app> --stream` with `sites` simulated SuperNodes; returns when the run ends.

        `concurrency` sites train at once (default: all of them, at most 8), each in a Ray
        actor with one CPU slot and one torch thread: like real hospitals, sites work in
        parallel, and memory is bounded by `concurrency`, not by the number of sites.
        """
        concurrency = concurrency or min(sites, 8)
        overrides = " ".join(f"{key}={quote(value)}" for key, value in run_config.items())
        federation = (f"num-supernodes={sites} client-resources-num-cpus=1 "
                      f"init-args-num-cpus={concurrency}")
        app = stage_app(self.app_dir, self.work_dir / "app")  # what `flwr run` packages, without .venv
        command = [str(self.bin_dir / "flwr"), "run", str(app), CONNECTION, "--stream",
                   "--federation-config", federation]
        if overrides:
            command += ["--run-config", overrides]
        output, run_id = submit_run(command, env=self.env, cwd=self.app_dir, timeout=timeout, capture=capture)
        status = run_status(self.bin_dir / "flwr", CONNECTION, run_id, env=self.env, cwd=self.app_dir) \
            if run_id else "not-started"
        return RunOutcome(status, output, run_id)

    def stop(self) -> None:
        """Stop the SuperLink and every process it spawned (SuperExec, simulation, Ray)."""
        stop_tree(self.process)

    def __exit__(self, *exc) -> None:
        if getattr(self, "_previous_sigterm", None) is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        self.stop()
        if self._tmp:
            self._tmp.cleanup()
