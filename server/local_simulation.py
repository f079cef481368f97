"""Run the app with Flower's simulation runtime on this machine, start to finish.

`LocalSimulation` starts a `flower-superlink --simulation` on 127.0.0.1 (a free port,
runtime dependency installation off: sites and coordinator use the installed, approved
environment, and time to the first round stays short), writes a private Flower config
(FLWR_HOME) that names it, submits the app with `flwr run . --stream`, and stops the
SuperLink and everything it spawned on exit. It is what `make demo`, the end-to-end
tests and the benchmarks use; a user can equally type `flwr run .` (see README).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CONNECTION = "fedrad-local"


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: Flower's status (e.g. `finished:completed`) and its streamed log.

    `flwr run --stream` exits 0 even when the run fails, so the status comes from the
    SuperLink (`flwr ls --run-id`), not from the command's exit code.
    """

    status: str
    stdout: str
    run_id: int | None

    @property
    def returncode(self) -> int:
        return 0 if self.status == "finished:completed" else 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {process.returncode} before it was ready")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"flower-superlink did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def _descendants(root: int) -> list[int]:
    """Every process below `root` (children first listed last), from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _quote(value) -> str:
    return f"'{value}'" if isinstance(value, (str, Path)) else str(value).lower() if isinstance(value, bool) else str(value)


class LocalSimulation:
    """A throwaway SuperLink in simulation mode; use as a context manager."""

    def __init__(self, app_dir: Path, *, work_dir: Path | None = None, startup_timeout: float = 60.0) -> None:
        self.app_dir = Path(app_dir).resolve()
        self._tmp = None if work_dir else tempfile.TemporaryDirectory(prefix="fedrad-sim-")
        self.work_dir = Path(work_dir or self._tmp.name).resolve()
        self.startup_timeout = startup_timeout
        self.port = _free_port()
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
            _wait_for_port(self.port, self.process, self.startup_timeout)
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
        overrides = " ".join(f"{key}={_quote(value)}" for key, value in run_config.items())
        federation = (f"num-supernodes={sites} client-resources-num-cpus=1 "
                      f"init-args-num-cpus={concurrency}")
        command = [str(self.bin_dir / "flwr"), "run", str(self.app_dir), CONNECTION, "--stream",
                   "--federation-config", federation]
        if overrides:
            command += ["--run-config", overrides]
        process = subprocess.Popen(command, env=self.env, cwd=self.app_dir, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines: list[str] = []

        def pump() -> None:
            for line in process.stdout:
                lines.append(line)
                if not capture:
                    sys.stdout.write(line)
                    sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            lines.append(f"\n[fedrad] the run did not finish within {timeout:.0f} s; stopped\n")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            reader.join(timeout=10)
        output = "".join(lines)
        found = re.search(r"Successfully started run (\d+)", output)
        run_id = int(found.group(1)) if found else None
        return RunOutcome(self._status(run_id) if run_id else "not-started", output, run_id)

    def _status(self, run_id: int) -> str:
        """The run's final status from the SuperLink, e.g. `finished:completed`."""
        listing = subprocess.run([str(self.bin_dir / "flwr"), "ls", CONNECTION, "--run-id", str(run_id),
                                  "--format", "json"], env=self.env, cwd=self.app_dir, text=True,
                                 capture_output=True, timeout=60)
        try:
            runs = json.loads(listing.stdout).get("runs", [])
        except ValueError:
            return "unknown"
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def stop(self) -> None:
        """Stop the SuperLink and every process it spawned (SuperExec, simulation, Ray)."""
        if not self.process or self.process.poll() is not None:
            return
        tree = _descendants(self.process.pid)
        _signal_all([self.process.pid, *tree], signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(pid) for pid in [self.process.pid, *tree]):
            self.process.poll()
            time.sleep(0.2)
        _signal_all([self.process.pid, *tree, *_descendants(self.process.pid)], signal.SIGKILL)
        self.process.wait(timeout=5)

    def __exit__(self, *exc) -> None:
        if getattr(self, "_previous_sigterm", None) is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        self.stop()
        if self._tmp:
            self._tmp.cleanup()
