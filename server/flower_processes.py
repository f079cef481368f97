"""Flower's own processes and CLI, started and stopped from Python.

Shared by the local simulation (`server/local_simulation.py`) and the local TLS
federation (`deploy/local_federation.py`): free ports, waiting for a listener, submitting
a run with `flwr run --stream` and reading its final status, and stopping a process with
everything it spawned.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float, name: str = "flower-superlink") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode} before it was ready")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


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


def quote(value) -> str:
    return f"'{value}'" if isinstance(value, (str, Path)) else str(value).lower() if isinstance(value, bool) else str(value)



def submit_run(command: list[str], *, env: dict[str, str], cwd: Path, timeout: float | None,
               capture: bool, on_line=None) -> tuple[str, int | None]:
    """Run `flwr run ... --stream` to its end; the streamed output and the run id.

    `on_line(line)`, if given, sees every line as it arrives (e.g. to act mid-run).
    """
    process = subprocess.Popen(command, env=env, cwd=cwd, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []

    def pump() -> None:
        for line in process.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)
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
    return output, run_id


def run_status(flwr: Path, connection: str, run_id: int, *, env: dict[str, str], cwd: Path) -> str:
    """The run's final status from the SuperLink (`flwr ls`), e.g. `finished:completed`."""
    listing = subprocess.run([str(flwr), "ls", connection, "--run-id", str(run_id), "--format", "json"],
                             env=env, cwd=cwd, text=True, capture_output=True, timeout=60)
    try:
        runs = json.loads(listing.stdout).get("runs", [])
    except ValueError:
        return "unknown"
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def stop_tree(process: subprocess.Popen | None, grace: float = 15.0) -> None:
    """Stop `process` and every process it spawned: SIGTERM, then SIGKILL after `grace` s."""
    if not process or process.poll() is not None:
        return
    tree = _descendants(process.pid)
    _signal_all([process.pid, *tree], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in [process.pid, *tree]):
        process.poll()
        time.sleep(0.2)
    _signal_all([process.pid, *tree, *_descendants(process.pid)], signal.SIGKILL)
    _kill_group(process.pid)
    process.wait(timeout=5)


def _kill_group(pid: int) -> None:
    """Kill what is left of a process group that `pid` leads (start_new_session=True).

    Catches children that outlived their parent and were re-parented away from its tree.
    """
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
