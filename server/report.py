"""`report.html` in the run directory: one self-contained, offline page about a run.

Plots (inline SVG) of the held-out and the sites' validation metrics, each site's AUC and
cumulative epsilon, and wall times per round; a table of every round and every site; the
failures and declines; the run settings; the model card. No script, no network: a
Content-Security-Policy forbids both, and every inserted text is escaped.
"""
from __future__ import annotations

import json
from collections import Counter
from html import escape
from pathlib import Path

from server.markdown_html import markdown_to_html
from server.run_record import RunRecord, load_run
from server.svg_chart import line_chart

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em} th,td{border:1px solid #ccc;padding:.25em .5em}
th{background:#f3f3f3;text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
.banner{padding:.8em 1em;margin:1em 0;border-radius:4px;font-size:1.1em}
.non-private{background:#b00020;color:#fff;font-weight:bold} .private{background:#e8f4ea;border:1px solid #7bb586}
.warning{background:#fff4d6;border:1px solid #d9a400}
.chart{max-width:100%;height:auto;font-size:11px} .card{border:1px solid #ccc;padding:0 1em;background:#fcfcfc}
"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return str(value)  # escaped where it is inserted


def _table(head: list[str], rows: list[list], numeric_from: int = 1) -> str:
    """An HTML table; cells are escaped here, columns from `numeric_from` align right."""
    html = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        html.append("<tr>" + "".join(f'<td class="n">{escape(str(c))}</td>' if i >= numeric_from
                                     else f"<td>{escape(str(c))}</td>" for i, c in enumerate(row)) + "</tr>")
    return "".join(html + ["</tbody></table>"])


def _sites(history: list[dict]) -> list[str]:
    names = {name for line in history for name in line.get("sites", {})}
    names |= {name for line in history for name in ((line.get("privacy") or {}).get("sites") or {})}
    return sorted(names)


def _site_privacy(line: dict, site: str) -> dict:
    return ((line.get("privacy") or {}).get("sites") or {}).get(site) or {}


def _site_metrics(line: dict, site: str, part: str) -> dict:
    return (line.get("sites", {}).get(site) or {}).get(part) or {}


def _privacy_modes(run: RunRecord) -> set:
    """Every privacy mode the run's settings, rounds and sites' reports name."""
    modes = {run.config.get("privacy")} | {(line.get("privacy") or {}).get("mode") for line in run.history}
    return modes | {_site_privacy(line, s).get("mode") for line in run.history for s in _sites([line])}


def _privacy_banner(run: RunRecord) -> str:
    """The run's privacy status, first thing on the page: NON-PRIVATE in red if any round was."""
    modes = _privacy_modes(run)
    unbounded = sorted({s for line in run.history for s in _sites([line]) if _site_privacy(line, s).get("unbounded")})
    html = []
    if "none" in modes:
        html.append('<div class="banner non-private">NON-PRIVATE RUN: the sites trained without differential '
                    'privacy; this model carries no privacy guarantee.</div>')
    elif modes & {"dp"}:
        html.append('<div class="banner private">Trained with DP-SGD at every site; the privacy unit is the '
                    '<strong>patient</strong>. Epsilons below are each site\'s cumulative spend.</div>')
    if unbounded:
        html.append('<div class="banner warning">No bounded privacy guarantee for '
                    f'{escape(", ".join(unbounded))}: the site\'s ledger holds non-private training '
                    '(epsilon unbounded).</div>')
    return "".join(html)


def _summary(run: RunRecord) -> str:
    last, config = run.history[-1], run.config
    held, evaluate = last.get("heldout") or {}, last.get("evaluate") or {}
    total = sum((line.get("wall_seconds") or {}).get("round") or 0 for line in run.history)
    rows = [["rounds", f"{len(run.history)} of {config.get('rounds', 'n/a')}"],
            ["sites", f"{len(_sites(run.history))} seen, {config.get('sites', 'n/a')} requested"],
            ["strategy", config.get("strategy", "n/a")], ["aggregation", config.get("aggregation", "n/a")],
            ["privacy", config.get("privacy", (last.get("privacy") or {}).get("mode", "n/a"))],
            ["held-out ROC AUC (last round)", _num(held.get("auc"))],
            ["validation ROC AUC (last round, example-weighted)", _num(evaluate.get("eval-auc"))],
            ["wall time of all rounds", f"{total:.1f} s"]]
    return _table(["", ""], rows, numeric_from=2)


def _series(history: list[dict], value) -> list[tuple[int, float | None]]:
    points = []
    for line in history:
        found = value(line)
        points.append((line["round"], found if isinstance(found, (int, float)) and not isinstance(found, bool)
                       else None))
    return points


def _plots(history: list[dict]) -> str:
    sites = _sites(history)
    part = lambda name, key: lambda line: (line.get(name) or {}).get(key)  # noqa: E731
    auc = {"held-out hospital": _series(history, part("heldout", "auc")),
           "sites' validation (weighted)": _series(history, part("evaluate", "eval-auc"))}
    loss = {"sites' validation (weighted)": _series(history, part("evaluate", "eval-loss")),
            "sites' training (weighted)": _series(history, part("train", "train-loss")),
            "held-out hospital": _series(history, part("heldout", "loss"))}
    site_auc = {s: _series(history, lambda line, s=s: _site_metrics(line, s, "evaluate").get("eval-auc"))
                for s in sites}
    epsilon = {s: _series(history, lambda line, s=s: _site_privacy(line, s).get("epsilon")) for s in sites}
    wall = {phase: _series(history, part("wall_seconds", key))
            for phase, key in (("round", "round"), ("training", "train"), ("evaluation", "evaluate"),
                               ("held-out", "heldout"))}
    return "".join([
        line_chart("ROC AUC per round", auc, y_label="ROC AUC", y_range=(0.0, 1.0)),
        line_chart("Loss per round", loss, y_label="loss"),
        line_chart("Validation ROC AUC per site", site_auc, y_label="ROC AUC", y_range=(0.0, 1.0)),
        line_chart("Cumulative epsilon per site", epsilon, y_label="epsilon", y_range=(0.0, None)),
        line_chart("Wall time per round", wall, y_label="seconds", y_range=(0.0, None))])


def _round_rows(history: list[dict]) -> list[list]:
    rows = []
    for line in history:
        train, evaluate, held = line.get("train") or {}, line.get("evaluate") or {}, line.get("heldout") or {}
        epsilons = [r.get("epsilon") for r in ((line.get("privacy") or {}).get("sites") or {}).values()
                    if r and isinstance(r.get("epsilon"), (int, float))]
        rows.append([line["round"], sum(1 for m in line.get("sites", {}).values() if (m or {}).get("train")),
                     len(line.get("failures", [])), _num(train.get("train-loss")), _num(evaluate.get("eval-loss")),
                     _num(evaluate.get("eval-auc")), _num(evaluate.get("eval-sensitivity")),
                     _num(evaluate.get("eval-specificity")), _num(held.get("auc")), _num(held.get("sensitivity")),
                     _num(held.get("specificity")), _num(max(epsilons) if epsilons else None, 2),
                     _num((line.get("wall_seconds") or {}).get("round"), 1)])
    return rows


def _site_rows(history: list[dict]) -> list[list]:
    rows = []
    for line in history:
        for site in _sites([line]):
            train, evaluate = _site_metrics(line, site, "train"), _site_metrics(line, site, "evaluate")
            privacy = _site_privacy(line, site)
            epsilon = "unbounded" if privacy.get("unbounded") else _num(privacy.get("epsilon"), 2)
            delta = privacy.get("delta")
            rows.append([line["round"], site, _num(train.get("num-examples"), 0), _num(train.get("train-loss")),
                         _num(evaluate.get("num-examples"), 0), _num(evaluate.get("eval-loss")),
                         _num(evaluate.get("eval-auc")), epsilon,
                         f"{delta:.2e}" if isinstance(delta, float) else _num(delta),
                         privacy.get("accountant", "n/a"), privacy.get("mode", "n/a")])
    return rows


def _failures(history: list[dict]) -> str:
    failures = [(line["round"], f) for line in history for f in line.get("failures", [])]
    if not failures:
        return "<p>No site failed or declined in any round.</p>"
    kind = lambda f: f"declined: {f['declined']}" if "declined" in f else str(f.get("kind", "unknown"))  # noqa: E731
    counts = Counter((str(f.get("site", "unknown")), kind(f)) for _, f in failures)
    summary = _table(["site", "kind", "rounds"], [[s, k, n] for (s, k), n in sorted(counts.items())], numeric_from=2)
    detail = _table(["round", "phase", "site", "kind", "reason"],
                    [[r, f.get("phase", ""), f.get("site", "unknown"), kind(f), f.get("reason", "")] for r, f in failures],
                    numeric_from=5)
    return summary + "<h3>Every failure and decline</h3>" + detail


def render_report(run: RunRecord) -> str:
    """The whole page for `run`, as a string."""
    name = str(run.config.get("run-name") or run.run_dir.name)
    title = ("NON-PRIVATE - " if "none" in _privacy_modes(run) else "") + f"fedrad run report: {name}"
    settings = _table(["setting", "value"], [[k, json.dumps(v) if not isinstance(v, str) else v]
                                             for k, v in sorted(run.config.items())], numeric_from=2) \
        if run.config else "<p>No settings recorded (no run_config.json and no checkpoint).</p>"
    card = (f'<div class="card">{markdown_to_html(run.model_card)}</div>' if run.model_card is not None
            else "<p>No model_card.md: the run has not finished (it is written after the last round).</p>")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>", _privacy_banner(run), _summary(run),
        "<h2>Per round</h2>", _plots(run.history),
        _table(["round", "sites trained", "failures", "train loss", "val loss", "val AUC", "val sens", "val spec",
                "held-out AUC", "held-out sens", "held-out spec", "max site epsilon", "wall s"], _round_rows(run.history)),
        "<h2>Per site and round</h2>",
        _table(["round", "site", "train images", "train loss", "val images", "val loss", "val AUC", "epsilon",
                "delta", "accountant", "mode"], _site_rows(run.history), numeric_from=2),
        "<h2>Failures and declines</h2>", _failures(run.history),
        "<h2>Run settings</h2>", settings,
        "<h2>Model card</h2>", card,
        "<p><small>Written by fedrad-server report from metrics.jsonl, run_config.json and model_card.md; "
        "validation numbers are aggregates over each site's held-back patients.</small></p>",
        "</body></html>", ""])


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Read `run_dir`, write its report (default `<run_dir>/report.html`) atomically; return the path."""
    html = render_report(load_run(Path(run_dir)))
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path
