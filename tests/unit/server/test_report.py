"""report.html from a run directory: every round's values, the sites and their epsilon, the
NON-PRIVATE marking, escaping of hostile names, and clear errors for what is not a run.

The run directories are written the way the ServerApp writes them: lines with the keys of
`server.federation` (metric names from `common.messages`), `RunConfig.to_dict()` as
run_config.json, and the model card from `render_model_card`.
"""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common import messages as wire
from common.config import RunConfig
from server.cli import app
from server.model_card import render_model_card
from server.report import render_report, write_report
from server.run_record import RunRecordError, load_run

HOSTILE = '<script>alert("x")</script>'


def _privacy(epsilon: float | None, mode: str = "dp") -> dict:
    report = {"accountant": "prv", "delta": 0.0083, "epsilon": epsilon, "mode": mode,
              "noise-multiplier": 0.64 if mode == "dp" else 0.0, "sample-rate": 0.33, "steps": 3, "unit": "patient"}
    return dict(report, unbounded=True) if epsilon is None else report


def _line(server_round: int, sites: dict[str, float], *, failures=(), mode="dp", heldout_auc=0.5) -> dict:
    """One round as `run_federation` records it; `sites` maps a site to its validation AUC."""
    per_site = {name: {"train": {wire.NUM_EXAMPLES: 21.0, wire.TRAIN_LOSS: 0.8 - auc / 10, wire.TRAIN_SECONDS: 1.5,
                                 wire.TRAIN_STEPS: 3.0},
                       "evaluate": {wire.NUM_EXAMPLES: 6.0, wire.EVAL_LOSS: 0.7 - auc / 10, wire.EVAL_AUC: auc,
                                    wire.EVAL_SENSITIVITY: 1.0, wire.EVAL_SPECIFICITY: 0.25, wire.EVAL_SECONDS: 0.01}}
                for name, auc in sites.items()}
    mean_auc = sum(sites.values()) / len(sites)
    return {
        "round": server_round, "sites": per_site, "failures": list(failures), "aggregation": "secagg+",
        "train": {wire.NUM_EXAMPLES: 21.0 * len(sites), wire.TRAIN_LOSS: 0.8 - mean_auc / 10},
        "evaluate": {wire.NUM_EXAMPLES: 6.0 * len(sites), wire.EVAL_LOSS: 0.7 - mean_auc / 10, wire.EVAL_AUC: mean_auc,
                     wire.EVAL_SENSITIVITY: 1.0, wire.EVAL_SPECIFICITY: 0.25},
        "heldout": {"loss": 0.69, "auc": heldout_auc, "sensitivity": 0.9, "specificity": 0.4, "num-examples": 40},
        "privacy": {"mode": mode, "sites": {name: _privacy(1.25 * server_round + index if mode == "dp" else None, mode)
                                            for index, name in enumerate(sites)}},
        "wall_seconds": {"train": 10.0 * server_round, "evaluate": 2.0, "heldout": 0.5, "round": 12.5 * server_round},
    }


def _write_run(run_dir: Path, config: RunConfig, history: list[dict], *, finished: bool = True) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in history))
    if finished:
        (run_dir / "run_config.json").write_text(json.dumps(config.to_dict()))
        (run_dir / "model_card.md").write_text(render_model_card(config, history))
    return run_dir


@pytest.fixture()
def dp_run(tmp_path):
    config = RunConfig(run_name="ward-study", sites=2, rounds=3, image_size=16)
    declined = {"site": "site-b", "kind": "declined:privacy-budget", "declined": "privacy-budget",
                "reason": "the round would exceed max-epsilon", "phase": "train"}
    crashed = {"site": "site-b", "kind": "SiteKeyError", "reason": "chmod 600 the kek", "phase": "train"}
    history = [_line(1, {"site-a": 0.61, "site-b": 0.55}, heldout_auc=0.58),
               _line(2, {"site-a": 0.72}, failures=[declined], heldout_auc=0.664),
               _line(3, {"site-a": 0.81}, failures=[crashed], heldout_auc=0.777)]
    return _write_run(tmp_path / "ward-study", config, history)


class _Tables(HTMLParser):
    """Each table's rows as lists of cell texts, and every heading's text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables, self.headings, self._cell, self._heading = [], [], None, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag in ("h1", "h2", "h3"):
            self._heading = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None
        elif tag in ("h1", "h2", "h3"):
            self.headings.append(self._heading)
            self._heading = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._heading is not None:
            self._heading += data

    def table(self, first_header: str, second_header: str) -> list[list[str]]:
        return next(t for t in self.tables if t and t[0][:2] == [first_header, second_header])


def test_the_report_is_written_into_the_run_directory_with_every_round(dp_run):
    path = write_report(dp_run)
    assert path == dp_run / "report.html"
    page = _Tables(path.read_text(encoding="utf-8"))
    rounds = page.table("round", "sites trained")
    assert [row[0] for row in rounds[1:]] == ["1", "2", "3"]
    assert [row[1] for row in rounds[1:]] == ["2", "1", "1"]  # sites that trained
    assert [row[8] for row in rounds[1:]] == ["0.580", "0.664", "0.777"]  # held-out AUC
    assert [row[5] for row in rounds[1:]] == ["0.580", "0.720", "0.810"]  # weighted validation AUC
    assert [row[11] for row in rounds[1:]] == ["2.25", "2.50", "3.75"]  # largest site epsilon
    assert [row[12] for row in rounds[1:]] == ["12.5", "25.0", "37.5"]  # wall seconds


def test_each_site_appears_with_its_epsilon_delta_and_accountant(dp_run):
    page = _Tables(write_report(dp_run).read_text(encoding="utf-8"))
    sites = page.table("round", "site")[1:]
    assert [(row[0], row[1], row[6], row[7]) for row in sites] == [
        ("1", "site-a", "0.610", "1.25"), ("1", "site-b", "0.550", "2.25"),
        ("2", "site-a", "0.720", "2.50"), ("3", "site-a", "0.810", "3.75")]
    assert {(row[8], row[9], row[10]) for row in sites} == {("8.30e-03", "prv", "dp")}


def test_plots_are_inline_svg_with_a_line_per_site(dp_run):
    html = render_report(load_run(dp_run))
    charts = html.split("<svg")[1:]
    assert len(charts) == 5
    site_auc = next(c for c in charts if "Validation ROC AUC per site" in c)
    assert ">site-a<" in site_auc and ">site-b<" in site_auc
    assert site_auc.count("<polyline") == 1  # site-b has one round: a point, no line
    assert site_auc.count("<circle") == 4
    epsilon = next(c for c in charts if "Cumulative epsilon per site" in c)
    assert "site-a, round 3: 3.75" in epsilon
    assert "<script" not in html.lower() and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_failures_and_declines_are_counted_by_site_and_kind(dp_run):
    page = _Tables(write_report(dp_run).read_text(encoding="utf-8"))
    assert page.table("site", "kind")[1:] == [["site-b", "SiteKeyError", "1"],
                                              ["site-b", "declined: privacy-budget", "1"]]
    detail = page.table("round", "phase")[1:]
    assert detail == [["2", "train", "site-b", "declined: privacy-budget", "the round would exceed max-epsilon"],
                      ["3", "train", "site-b", "SiteKeyError", "chmod 600 the kek"]]


def test_settings_and_the_model_card_are_in_the_report(dp_run):
    page = _Tables(write_report(dp_run).read_text(encoding="utf-8"))
    settings = dict(row for row in page.table("setting", "value")[1:])
    assert settings["rounds"] == "3" and settings["aggregation"] == "secagg+" and settings["privacy"] == "dp"
    assert "Model card: ward-study" in page.headings and "Privacy (each site's own ledger, cumulative over every " \
                                                          "run on its data)" in page.headings
    card_privacy = page.table("site", "epsilon")
    assert card_privacy[1][:2] == ["site-a", "3.75"]
    assert not any("NON-PRIVATE" in heading for heading in page.headings)


def test_a_non_private_run_is_marked_in_the_title_and_a_banner(tmp_path):
    config = RunConfig(run_name="open", sites=1, rounds=1, privacy="none", image_size=16)
    run_dir = _write_run(tmp_path / "open", config, [_line(1, {"site-a": 0.6}, mode="none")])
    html = write_report(run_dir).read_text(encoding="utf-8")
    page = _Tables(html)
    assert page.headings[0].startswith("NON-PRIVATE")
    assert "<title>NON-PRIVATE" in html and 'class="banner non-private">NON-PRIVATE RUN' in html
    assert ["1", "site-a", "21", "0.740", "6", "0.640", "0.600", "unbounded", "8.30e-03", "prv", "none"] in \
        page.table("round", "site")


def test_a_site_with_an_unbounded_epsilon_in_a_private_run_is_flagged(tmp_path):
    line = _line(1, {"site-a": 0.6, "site-b": 0.7})
    line["privacy"]["sites"]["site-b"] = _privacy(None)  # its ledger holds earlier non-private rounds
    run_dir = _write_run(tmp_path / "mixed", RunConfig(run_name="mixed", image_size=16), [line])
    html = write_report(run_dir).read_text(encoding="utf-8")
    assert "No bounded privacy guarantee for site-b" in html and "NON-PRIVATE" not in html


def test_hostile_strings_are_escaped_everywhere(tmp_path):
    failure = {"site": HOSTILE, "kind": "<img src=x onerror=alert(1)>", "reason": "</td><script>", "phase": "train"}
    line = _line(1, {HOSTILE: 0.6, "site-a": 0.5}, failures=[failure])
    config = RunConfig(run_name='<b onmouseover="x">', sites=2, rounds=1, image_size=16)
    run_dir = _write_run(tmp_path / "hostile", config, [line])
    html = write_report(run_dir).read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "<img" not in html and "<b " not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    page = _Tables(html)
    assert [HOSTILE, "<img src=x onerror=alert(1)>", "1"] in page.table("site", "kind")
    assert any(row[:2] == ["1", HOSTILE] for row in page.table("round", "site"))
    assert page.headings[0] == 'fedrad run report: <b onmouseover="x">'


def test_a_run_still_going_takes_its_settings_from_the_newest_checkpoint(tmp_path):
    config = RunConfig(run_name="live", rounds=9, image_size=16)
    history = [_line(1, {"site-a": 0.6})]
    run_dir = _write_run(tmp_path / "live", config, history, finished=False)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "round-0001.json").write_text(json.dumps({"config": config.to_dict(), "history": history}))
    html = write_report(run_dir).read_text(encoding="utf-8")
    assert ["rounds", "1 of 9"] in _Tables(html).table("", "")
    assert "No model_card.md: the run has not finished" in html


def test_a_folder_that_is_not_a_run_directory_is_refused(tmp_path):
    with pytest.raises(RunRecordError, match="not a run directory .*no metrics.jsonl.*runs/<run-name>/"):
        write_report(tmp_path)
    with pytest.raises(RunRecordError, match="is not a folder"):
        write_report(tmp_path / "missing")
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("bad, problem", [
    ('{"round": 2, "patient": "SMITH^JOHN"', "line 2 is not valid JSON"),
    ('["SMITH^JOHN"]', "line 2 is not a JSON object"),
    ('{"patient": "SMITH^JOHN"}', "line 2 has no round number"),
    ('{"round": 2, "sites": "SMITH^JOHN"}', "line 2 has a 'sites' that is not an object"),
    ('{"round": 2, "sites": {"a": {"train": "SMITH^JOHN"}}}', "line 2 has a site whose 'train' metrics"),
])
def test_a_malformed_metrics_line_is_named_by_number_never_by_content(dp_run, bad, problem):
    lines = (dp_run / "metrics.jsonl").read_text().splitlines()
    (dp_run / "metrics.jsonl").write_text("\n".join([lines[0], bad, *lines[2:]]) + "\n")
    with pytest.raises(RunRecordError) as error:
        write_report(dp_run)
    assert problem in str(error.value) and "checkpoints/round-NNNN.json" in str(error.value)
    assert "SMITH" not in str(error.value)


def test_an_empty_metrics_file_and_broken_settings_are_refused(dp_run):
    (dp_run / "run_config.json").write_text("{not json")
    with pytest.raises(RunRecordError, match="run_config.json is not valid JSON"):
        load_run(dp_run)
    (dp_run / "metrics.jsonl").write_text("\n")
    with pytest.raises(RunRecordError, match="has no rounds"):
        load_run(dp_run)


def test_cli_report_writes_the_page_and_fails_with_exit_code_2(dp_run, tmp_path):
    runner = CliRunner()
    out = tmp_path / "elsewhere.html"
    result = runner.invoke(app, ["report", str(dp_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "ward-study" in out.read_text(encoding="utf-8")
    assert not (dp_run / "report.html").exists()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no metrics.jsonl" in result.output

