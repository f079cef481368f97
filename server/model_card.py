"""`model_card.md` in the run directory: data and sites, training settings, results, and
each site's cumulative privacy guarantee with its unit (the patient)."""
from __future__ import annotations

from pathlib import Path

from common.config import RunConfig
from common.model import build_model


def _latest_privacy(history: list[dict]) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    for line in history:
        for site, report in (line.get("privacy") or {}).get("sites", {}).items():
            if report:
                latest[site] = report
    return latest


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_model_card(config: RunConfig, history: list[dict]) -> str:
    last = history[-1] if history else {}
    parameters = sum(p.numel() for p in build_model(config.image_size, width=config.model_width).parameters())
    private = config.privacy == "dp"
    lines = [
        f"# Model card: {config.run_name}",
        "",
        "**NON-PRIVATE RUN: the sites trained without differential privacy; this model carries no "
        "privacy guarantee.**" if not private else
        "Trained with DP-SGD at every site; the privacy unit is the **patient** (all images of one "
        "patient together).",
        "",
        "## Model",
        f"- RadiographNet (small ResNet, GroupNorm), width {config.model_width}, {parameters:,} parameters, input {config.image_size}x"
        f"{config.image_size} single-channel, output the probability of a finding (nodule or opacity).",
        "",
        "## Data and sites",
        f"- {config.sites} site(s) requested, at least {config.min_sites} per round; data never left a site.",
    ]
    for site, metrics in sorted((last.get("sites") or {}).items()):
        train = metrics.get("train") or {}
        lines.append(f"- {site}: {int(train.get('num-examples', 0))} training images")
    if config.heldout_eval:
        lines.append("- Held-out evaluation: a synthetic hospital that no site trained on (simulation).")
    lines += [
        "",
        "## Training",
        f"- {config.strategy} for {len(history)} of {config.rounds} round(s); {config.local_epochs} local epoch(s) "
        f"per round, batch size {config.batch_size}{' patients (expected, Poisson-sampled)' if private else ''}, "
        f"learning rate {config.learning_rate}, seed {config.seed}.",
    ]
    if private:
        noise = (f"noise multiplier {config.noise_multiplier}" if config.noise_multiplier
                 else f"noise derived by each site for a per-run target epsilon of {config.target_epsilon}")
        lines.append(f"- DP-SGD: per-patient clipping at norm {config.max_grad_norm}, {noise}.")
    lines += ["", "## Privacy (each site's own ledger, cumulative over every run on its data)", ""]
    privacy = _latest_privacy(history)
    if privacy:
        lines += ["| site | epsilon | delta | accountant | noise multiplier | sample rate | unit |",
                  "|---|---|---|---|---|---|---|"]
        for site, report in sorted(privacy.items()):
            epsilon = "unbounded (non-private)" if report.get("unbounded") else _num(report.get("epsilon"), 2)
            lines.append(f"| {site} | {epsilon} | {report.get('delta', 0):.2e} | {report.get('accountant')} | "
                         f"{_num(report.get('noise-multiplier'))} | {_num(report.get('sample-rate'))} | "
                         f"{report.get('unit', 'patient')} |")
    else:
        lines.append("No site reported a privacy record.")
    lines += ["", "## Results (last round)"]
    held = last.get("heldout")
    if held:
        lines.append(f"- Held-out hospital: ROC AUC {_num(held.get('auc'))}, sensitivity {_num(held.get('sensitivity'))}, "
                     f"specificity {_num(held.get('specificity'))} at 0.5 ({held.get('num-examples')} images).")
    evaluate = last.get("evaluate") or {}
    if evaluate:
        lines.append(f"- Sites' validation patients (example-weighted): ROC AUC {_num(evaluate.get('eval-auc'))}.")
    declined = [f for line in history for f in line.get("failures", []) if "declined" in f]
    if declined:
        lines.append(f"- {len(declined)} round request(s) declined by sites' policies "
                     f"({', '.join(sorted({d['declined'] for d in declined}))}).")
    lines += ["", "## Limitations",
              "- Validation metrics are computed on each site's held-back patients and released without DP "
              "noise (aggregate numbers only).",
              "- Synthetic data in simulation: figures say nothing about clinical performance.", ""]
    return "\n".join(lines)


def write_model_card(run_dir: Path, config: RunConfig, history: list[dict]) -> Path:
    path = run_dir / "model_card.md"
    path.write_text(render_model_card(config, history), encoding="utf-8")
    return path
