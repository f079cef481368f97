"""Privacy-utility curve: federated held-out AUC for a per-run epsilon in {1, 2, 4, 8}
and without DP, same rounds, sites and seed. Target: AUC(epsilon 8) >= 0.95 x AUC(no DP).

The virtual sites are built once per (seed, patients) under `.fedrad-cache/bench-sites/`
and each setting runs on its own hard-linked copy of them, so each ledger starts empty and
the reported epsilon is that run's. Writes a table and an SVG plot.

    .venv/bin/python benchmarks/privacy_utility.py [--rounds 10] [--local-epochs 2] [--epsilons 1 2 4 8] \
        [--patients 0] [--batch-size 32] [--learning-rate 0.002] [--dp-learning-rate 0] [--model-width 16]

`--patients N` gives every site N patients (0: each synthetic hospital's own 60-120);
`--batch-size` is the expected patients per DP-SGD step (and the non-private batch).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import REPO, RESULTS, built_sites, fresh_copy, history, write_result
from server.local_simulation import LocalSimulation


def run(epsilon: float | None, args, work: Path) -> dict:
    name = "none" if epsilon is None else f"eps{epsilon:g}"
    config = {"sites": 4, "rounds": args.rounds, "local-epochs": args.local_epochs, "seed": args.seed,
              "run-name": name, "runs-dir": work / "runs",
              "sim-cache-dir": fresh_copy(built_sites(args.seed, args.patients), work / f"cache-{name}"),
              "privacy": "none" if epsilon is None else "dp", "target-epsilon": epsilon or 8.0,
              "sim-patients": args.patients, "batch-size": args.batch_size, "model-width": args.model_width,
              "learning-rate": args.learning_rate if epsilon is None else args.dp_learning_rate or args.learning_rate}
    with LocalSimulation(REPO, work_dir=work / f"sim-{name}") as simulation:
        outcome = simulation.run(sites=4, run_config=config, capture=True)
    if outcome.returncode != 0:
        raise SystemExit(outcome.stdout[-3000:])
    last = history(work / "runs" / name)[-1]
    reported = [p["epsilon"] for p in last["privacy"]["sites"].values() if p and p.get("epsilon") is not None]
    return {"target_epsilon": epsilon, "heldout_auc": round(last["heldout"]["auc"], 4),
            "max_site_epsilon": round(max(reported), 3) if reported else None}


def svg_plot(rows: list[dict], baseline: float) -> str:
    """A small line plot of held-out AUC against epsilon, with the no-DP level dashed."""
    width, height, pad = 420, 280, 50
    points = [r for r in rows if r["target_epsilon"] is not None]
    xs = [r["target_epsilon"] for r in points]
    lo, hi = min([r["heldout_auc"] for r in rows] + [0.5]), 1.0

    def x(value: float) -> float:
        return pad + (value - min(xs)) / (max(xs) - min(xs) or 1) * (width - 2 * pad)

    def y(value: float) -> float:
        return height - pad - (value - lo) / (hi - lo) * (height - 2 * pad)

    path = " ".join(f"{'M' if i == 0 else 'L'}{x(r['target_epsilon']):.1f},{y(r['heldout_auc']):.1f}"
                    for i, r in enumerate(points))
    marks = "".join(f'<circle cx="{x(r["target_epsilon"]):.1f}" cy="{y(r["heldout_auc"]):.1f}" r="3"/>'
                    f'<text x="{x(r["target_epsilon"]):.1f}" y="{height - pad + 16}" text-anchor="middle">'
                    f'{r["target_epsilon"]:g}</text>' for r in points)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>'
            f'<line x1="{pad}" y1="{y(baseline):.1f}" x2="{width - pad}" y2="{y(baseline):.1f}" stroke="grey" '
            f'stroke-dasharray="4"/><text x="{width - pad}" y="{y(baseline) - 4:.1f}" text-anchor="end">no DP '
            f'{baseline:.3f}</text><path d="{path}" fill="none" stroke="steelblue"/>{marks}'
            f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">epsilon per site (per run)</text>'
            f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">'
            f'held-out ROC AUC</text><text x="{pad}" y="{y(lo) + 12:.1f}">{lo:.2f}</text>'
            f'<text x="{pad - 4}" y="{y(hi):.1f}" text-anchor="end">1.00</text></svg>\n')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--patients", type=int, default=0, help="patients per site (0: each hospital's own)")
    parser.add_argument("--batch-size", type=int, default=32, help="expected patients per step")
    parser.add_argument("--learning-rate", type=float, default=0.002, help="the sites' Adam learning rate")
    parser.add_argument("--dp-learning-rate", type=float, default=0.0,
                        help="learning rate of the DP runs (0: --learning-rate); DP's noisy gradients "
                             "often want a larger step")
    parser.add_argument("--model-width", type=int, default=16, help="the run's model-width (16: the app's default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(None, args, Path(tmp))] + [run(e, args, Path(tmp)) for e in args.epsilons]
    baseline = rows[0]["heldout_auc"]
    print(f"{'epsilon':>8}  {'held-out AUC':>12}  {'/ no-DP':>8}  {'reported eps':>12}")
    for row in rows:
        row["ratio_to_no_dp"] = round(row["heldout_auc"] / baseline, 4)
        label = "no DP" if row["target_epsilon"] is None else f"{row['target_epsilon']:g}"
        print(f"{label:>8}  {row['heldout_auc']:>12.3f}  {row['ratio_to_no_dp']:>8.3f}  {row['max_site_epsilon']!s:>12}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "privacy_utility.svg").write_text(svg_plot(rows, baseline))
    write_result("privacy_utility", {"rounds": args.rounds, "local_epochs": args.local_epochs, "rows": rows,
                                     "patients_per_site": args.patients or "own", "batch_size": args.batch_size,
                                     "model_width": args.model_width,
                                     "learning_rate": args.learning_rate,
                                     "dp_learning_rate": args.dp_learning_rate or args.learning_rate,
                                     "target": "AUC(eps 8) >= 0.95 x AUC(no DP)"})


if __name__ == "__main__":
    main()
