"""`make demo`: the default simulated federation, end to end, with Flower's own `flwr run`.

Starts `flwr run . --stream` against Flower's managed local SuperLink (simulation
mode; FLWR_HOME is the repository's .flwr/), waits for the run to finish, prints a
short summary from the run's metrics.jsonl, and stops the local SuperLink it started.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _local_superlink_pids(flwr_home: Path) -> list[int]:
    marker = str(flwr_home / "local-superlink")
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "flower-superlink" in cmdline and marker in cmdline:
                pids.append(int(proc.name))
    return pids


def stop_local_superlink(flwr_home: Path) -> None:
    """Stop the managed local SuperLink (and its children) that `flwr run` left running."""
    for pid in _local_superlink_pids(flwr_home):
        try:
            os.killpg(os.getpgid(pid), signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def summary_lines(run_dir: Path) -> list[str]:
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = history[-1]
    lines = [f"{len(history)} round(s), {len(last['sites'])} site(s)"]
    for site, metrics in sorted(last["sites"].items()):
        evaluation = metrics.get("evaluate") or {}
        auc = evaluation.get("eval-auc")
        lines.append(f"  {site}: validation AUC {auc:.3f}" if auc is not None else f"  {site}: no evaluation")
    if last.get("heldout"):
        lines.append(f"  held-out hospital: AUC {last['heldout']['auc']:.3f}, "
                     f"sensitivity {last['heldout']['sensitivity']:.3f}, specificity {last['heldout']['specificity']:.3f}")
    for failure in last["failures"]:
        lines.append(f"  failed: {failure['site']} ({failure['phase']}): {failure['reason']}")
    seconds = sum(line["wall_seconds"]["round"] for line in history)
    lines.append(f"  round wall time, total: {seconds:.1f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--run-name", default="demo")
    args = parser.parse_args(argv)
    flwr_home = Path(os.environ.get("FLWR_HOME", REPO / ".flwr")).resolve()
    env = dict(os.environ, FLWR_HOME=str(flwr_home))
    runs_dir = REPO / "runs"
    run_dir = runs_dir / args.run_name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_config = (f"sites={args.sites} rounds={args.rounds} image-size={args.image_size} "
                  f"run-name='{args.run_name}' runs-dir='{runs_dir}' sim-cache-dir='{REPO / '.fedrad-cache'}'")
    command = [str(Path(sys.executable).with_name("flwr")), "run", str(REPO), "--stream",
               "--federation-config", f"num-supernodes={args.sites}", "--run-config", run_config]
    started = time.perf_counter()
    try:
        code = subprocess.call(command, env=env, cwd=REPO)
    finally:
        stop_local_superlink(flwr_home)
    elapsed = time.perf_counter() - started
    if code != 0 or not (run_dir / "metrics.jsonl").exists():
        print(f"the demo run failed (exit code {code}); Flower's log: {flwr_home / 'local-superlink'}", file=sys.stderr)
        return code or 1
    print("\nfedrad demo finished in %.0f s:" % elapsed)
    print("\n".join(summary_lines(run_dir)))
    print(f"results: {run_dir} (metrics.jsonl, checkpoints/, model.safetensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
