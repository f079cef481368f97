"""`make demo`: the default simulated federation, end to end, with Flower's `flwr run`.

Starts a simulation SuperLink on 127.0.0.1 (see `server.local_simulation`), runs the app
with N simulated SuperNodes (each a synthetic hospital that goes through ingest,
de-identification and the encrypted store), prints a short summary from the run's
metrics.jsonl and where the results are, and stops everything it started.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from server.local_simulation import LocalSimulation

REPO = Path(__file__).resolve().parent.parent


def summary_lines(run_dir: Path) -> list[str]:
    """A few lines on the last round: each site's validation AUC, the held-out AUC, failures."""
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = history[-1]
    lines = [f"{len(history)} round(s) with {len(last['sites'])} site(s); after the last round:"]
    privacy = (last.get("privacy") or {}).get("sites", {})
    for site, metrics in sorted(last["sites"].items()):
        auc = (metrics.get("evaluate") or {}).get("eval-auc")
        line = f"  {site}: validation AUC {auc:.3f}" if auc is not None else f"  {site}: no evaluation"
        report = privacy.get(site) or {}
        if report.get("mode") == "dp":
            line += (f"; epsilon {report['epsilon']:.2f} at delta {report['delta']:.1e} "
                     f"(cumulative, per patient, {report['accountant']})")
        elif report:
            line += "; NON-PRIVATE"
        lines.append(line)
    if last.get("heldout"):
        held = last["heldout"]
        lines.append(f"  held-out hospital: AUC {held['auc']:.3f}, sensitivity {held['sensitivity']:.3f}, "
                     f"specificity {held['specificity']:.3f}")
    for failure in last["failures"]:
        lines.append(f"  failed: {failure['site']} ({failure['phase']}): {failure['kind']}: {failure['reason']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the default simulated fedrad federation.")
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--run-name", default="demo")
    args = parser.parse_args(argv)
    run_dir = REPO / "runs" / args.run_name
    config = {"sites": args.sites, "rounds": args.rounds, "image-size": args.image_size,
              "run-name": args.run_name, "runs-dir": REPO / "runs", "sim-cache-dir": REPO / ".fedrad-cache"}
    started = time.perf_counter()
    with LocalSimulation(REPO) as simulation:
        completed = simulation.run(sites=args.sites, run_config=config)
        log = simulation.log_path.read_text(errors="replace") if completed.returncode else ""
    if completed.returncode != 0 or not (run_dir / "metrics.jsonl").exists():
        print(f"the demo run failed (exit code {completed.returncode}); SuperLink log tail:\n{log[-3000:]}",
              file=sys.stderr)
        return completed.returncode or 1
    print(f"\nfedrad demo finished in {time.perf_counter() - started:.0f} s")
    print("\n".join(summary_lines(run_dir)))
    print(f"results: {run_dir}  (report.html, metrics.jsonl, model_card.md, checkpoints/, model.safetensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
